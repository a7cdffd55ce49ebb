"""Each parameter's gradient from this process's backward passes (multi-process DDP).

``DistributedDataParallel`` with several processes replaces ``.grad`` by the mean
over all processes at the end of the backward pass, while the per-sample
gradients the engine records are this process's samples'. The statistics that
combine both (gradient tests, GSNR, the sum check) need the gradient of the same
samples: a tensor hook on each parameter sees it before DDP's reducer does.
The hooks are attached only for the body of a tracked ``cockpit.step``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


def world_size() -> int:
    """Processes of the default ``torch.distributed`` group (1 without one)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


class LocalGrads:
    """Sums of the gradients each parameter receives while ``start``-ed."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self.params = list(params)
        self._grads: dict[int, Tensor] = {}
        self._handles: list[RemovableHandle] = []

    def start(self) -> None:
        """Forget the last step's sums and hook every parameter."""
        self.stop()
        self._grads = {}
        for p in self.params:
            hook = partial(self._add, id(p))
            self._handles.append(p.register_hook(hook))  # type: ignore[no-untyped-call]

    def _add(self, key: int, grad: Tensor) -> None:
        # A copy: autograd may keep this very tensor as ``.grad``, which DDP's
        # all-reduce then overwrites in place.
        g = grad.detach().to_dense() if grad.is_sparse else grad.detach().clone()
        self._grads[key] = self._grads[key] + g if key in self._grads else g

    def stop(self) -> None:
        """Detach the hooks; the sums stay readable."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def get(self, p: Tensor) -> Tensor | None:
        """``p``'s gradient of this process's backward passes, or None."""
        return self._grads.get(id(p))
