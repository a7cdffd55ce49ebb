"""The process group of data-parallel training, and one packed all-reduce.

Under ``torch.distributed`` every instrument describes the global batch: what a
reading sums over samples (``Σ‖g_n‖²``, histogram counts, the GGN diagonal,
sample counts) is added over processes. ``PackedSum`` does that for a whole
step with one collective: the tensors are flattened into one float64 buffer
(integer counts stay exact below 2⁵³), all-reduced once, and cut back into
tensors of their own dtype and shape. Every process must pack the same layout
in the same order, which it does when all run the same instruments on the
same model (the same schedules, as ``Cockpit`` gives them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from glasscockpit.agent.environment.backprop_grads import BackpropGrads


def group_size() -> int:
    """Processes of the default ``torch.distributed`` group (1 without one)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


@dataclass
class Traffic:
    """What the agent's collectives cost so far (for benchmarks and run metadata)."""

    #: Packed all-reduces of per-step sums (one per tracked step).
    packed: int = 0
    #: All-reduces of Hessian-vector products and of the GGN diagonal.
    curvature: int = 0
    #: Bytes each process contributed to those collectives.
    bytes: int = 0
    #: Bytes of the last packed all-reduce.
    last_bytes: int = 0
    #: Seconds spent in them (wall-clock, waiting for the slowest process included).
    seconds: float = 0.0
    sizes: list[int] = field(default_factory=list)


class Group:
    """The default process group as the agent uses it: rank, size, all-reduce."""

    def __init__(self) -> None:
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("torch.distributed is not initialised")
        self.rank = int(dist.get_rank())
        self.size = int(dist.get_world_size())
        self.backend = str(dist.get_backend())
        self.traffic = Traffic()

    def sum(self, tensors: Sequence[Tensor], curvature: bool = False) -> list[Tensor]:
        """``tensors`` added over processes, in one collective; new tensors.

        Tensors that are the same object are sent once. The buffer lives on the
        device of the first tensor (NCCL needs CUDA tensors; gloo takes both).
        """
        import time

        if not tensors:
            return []
        unique: dict[int, int] = {}
        order: list[Tensor] = []
        for t in tensors:
            if id(t) not in unique:
                unique[id(t)] = len(order)
                order.append(t)
        device = order[0].device
        flat = torch.cat(
            [
                t.detach().reshape(-1).to(device=device, dtype=torch.float64)
                for t in order
            ]
        )
        start = time.perf_counter()
        torch.distributed.all_reduce(flat)
        self.traffic.seconds += time.perf_counter() - start
        nbytes = flat.numel() * flat.element_size()
        self.traffic.bytes += nbytes
        if curvature:
            self.traffic.curvature += 1
        else:
            self.traffic.packed += 1
            self.traffic.last_bytes = nbytes
            self.traffic.sizes.append(nbytes)
            if len(self.traffic.sizes) > 1024:
                del self.traffic.sizes[:512]
        parts = torch.split(flat, [t.numel() for t in order])
        out = [
            p.view(t.shape).to(device=t.device, dtype=t.dtype)
            for p, t in zip(parts, order, strict=True)
        ]
        return [out[unique[id(t)]] for t in tensors]


class AllReducedGrads(BackpropGrads):
    """``BackpropGrads`` under DDP: ``.grad`` once DDP's all-reduce wrote it.

    DDP averages the gradients over processes in a callback at the end of the
    backward pass, after every parameter's post-accumulate-grad hook ran. The
    first hook of a backward pass queues a callback that queues another: the
    second runs after DDP's (the engine runs callbacks in order, including
    those queued while they run) and keeps every ``.grad`` then, so gradient
    clipping inside ``cockpit.step`` is seen as an edit, as with one process.
    """

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        super().__init__(params)
        self._queued = False

    def start(self) -> None:
        """Forget the last body (and a callback a failed backward never ran)."""
        self._queued = False
        super().start()

    def _keep(self, key: int, p: Tensor) -> None:
        del key, p
        if self._queued:
            return
        self._queued = True
        engine = torch.autograd.Variable._execution_engine
        engine.queue_callback(lambda: engine.queue_callback(self._keep_all))

    def _keep_all(self) -> None:
        self._queued = False
        for p in self.params:
            super()._keep(id(p), p)
