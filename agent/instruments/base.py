"""The instrument extension point: declarations as class attributes, one ``compute``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, ClassVar, Literal, TypeAlias

import torch
from torch import Tensor, nn

from glasscockpit.agent.lifecycle.schedules import Schedule, auto, every, log_spaced
from glasscockpit.protocol import Kind, PanelSpec

if TYPE_CHECKING:
    from glasscockpit.agent.lifecycle.needs import Need
    from glasscockpit.agent.lifecycle.step import StepView


@dataclass(frozen=True)
class Guarded:
    """A value that is "undefined" (None on the host) where ``valid`` is false.

    Lets an instrument decide definedness on the device (``‖g‖ = 0``, ``B = 1``)
    without a host synchronisation: value and flag travel in the step's one
    transfer.
    """

    value: Tensor
    valid: Tensor

    @staticmethod
    def of(value: Tensor, valid: Tensor | bool) -> Guarded:
        """Wrap ``value``; ``valid`` may be a bool known on the host."""
        flag = torch.as_tensor(valid, device=value.device)
        # Invalid entries are zeroed so that no NaN/inf from 0/0 crosses the wire.
        return Guarded(torch.where(flag, value, torch.zeros_like(value)), flag)


#: A reading before it leaves the device: a tensor (scalar or array), a float,
#: None (undefined at this step), a guarded tensor, or a mapping of names to those.
Leaf: TypeAlias = Tensor | float | None | Guarded
Reading: TypeAlias = Leaf | dict[str, Leaf]

#: Cockpit's configurations, least to most expensive; each includes the previous.
PresetName: TypeAlias = Literal["economy", "business", "full"]


class Cost(IntEnum):
    """Rough price of an instrument; drives default schedules."""

    CHEAP = 0
    MODERATE = 1
    EXPENSIVE = 2


class Phase(Enum):
    """The moment of a step at which Cockpit calls an instrument's ``compute``."""

    #: On entering ``cockpit.step``: the loss graph is intact (Hessian-vector
    #: products, per-sample projections), ``p.grad`` is not yet this step's.
    BEFORE_BACKWARD = "before_backward"
    #: On leaving ``cockpit.step``: ``p.grad`` holds this step's gradient and the
    #: parameters are still θ_t.
    AFTER_BACKWARD = "after_backward"
    #: After ``optimizer.step()`` (its post-hook, else the next ``cockpit.step`` or
    #: ``close()``): the parameters are θ_{t+1}; sent as a second frame for step t.
    AFTER_STEP = "after_step"


def cadence(cost: Cost) -> Schedule:
    """Every step for cheap instruments, every 10 for moderate, log-spaced otherwise."""
    if cost is Cost.CHEAP:
        return every(1)
    if cost is Cost.MODERATE:
        return every(10)
    return log_spaced()


def default_schedule(cost: Cost) -> Schedule:
    """``cadence(cost)``, which a Cockpit's overhead budget later thins out."""
    return auto(cadence(cost))


class Instrument(ABC):
    """One training diagnostic: what it needs, what it costs, how it is drawn."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[Need]]
    cost: ClassVar[Cost]
    kind: ClassVar[Kind]
    panel: ClassVar[PanelSpec]
    #: Smallest preset that includes this instrument (None: only by name).
    preset: ClassVar[PresetName | None] = None
    #: When ``compute`` runs; the default suits instruments of ``p.grad``.
    phase: ClassVar[Phase] = Phase.AFTER_BACKWARD
    #: True when a reading is finished at a later step: ``compute``'s return value
    #: is then ignored and readings arrive through ``drain``.
    two_step: ClassVar[bool] = False
    #: True when ``compute`` runs before the other instruments of its phase: its
    #: pass over the per-sample gradients also computes what they read
    #: (Alpha's directions and ``batch_dot`` in one pass).
    leads: ClassVar[bool] = False
    #: A note on the last reading, sent with it: which estimator, and its error
    #: (set by ``compute``; None for exact readings).
    note: str | None = None
    #: Reading fields that add over processes (histogram counts): under data
    #: parallelism each process computes the reading of its own samples and
    #: these fields are summed (``agent/lifecycle/data_parallel.py``).
    summed: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, schedule: Schedule | None = None, label: str | None = None
    ) -> None:
        self.schedule: Schedule = schedule or default_schedule(self.cost)
        #: Wire key of this instance; a label lets two instances of one class coexist.
        self.key = self.name if label is None else f"{self.name}:{label}"

    def on_model(self, model: nn.Module) -> None:
        """Shown the model once by the Cockpit, before it decides on an engine.

        Instruments whose best engine depends on the model's structure choose
        here (and may then set ``needs`` per instance).
        """
        del model

    def on_engine(self, complete: bool) -> None:
        """Told once by the Cockpit whether its hook engine serves every parameter.

        Instruments with a per-sample fast path and a graph-based fallback
        choose here (and may then set ``phase`` and ``needs`` per instance).
        """
        del complete

    def is_due(self, step: int) -> bool:
        """Whether ``step`` should be tracked; asked before the forward pass."""
        return bool(self.schedule(step))

    @abstractmethod
    def compute(self, step: StepView) -> Reading:
        """Return this step's reading, on the training device; runs at ``phase``."""

    # -- readings of sums over samples (exact under data parallelism) ------------
    def local(self, step: StepView) -> dict[str, Tensor] | None:
        """Sums over this process's samples that ``reading`` turns into the reading.

        Instruments that override it compute as ``reading(step, local(step))``;
        under data parallelism the sums are added over processes first (one
        collective for the whole step) and ``reading`` gets a view whose
        ``sample_count`` and ``loss`` are the global batch's. None: no reading.
        """
        del step
        return None

    def reading(self, step: StepView, sums: dict[str, Tensor]) -> Reading:
        """The reading from ``local``'s sums (over every process's samples)."""
        raise NotImplementedError(f"{type(self).__name__} has no local sums")

    def advance_local(self, step: StepView) -> dict[str, Tensor] | None:
        """``local`` for ``advance`` (two-step instruments); None: nothing to add."""
        del step
        return None

    def advance_reading(self, step: StepView, sums: dict[str, Tensor]) -> None:  # noqa: B027
        """``advance`` from ``advance_local``'s sums (over every process's)."""

    # -- optional hooks of instruments whose reading spans two steps -------------
    def is_pending(self) -> bool:
        """Whether an earlier step's reading waits for data of the coming step.

        Asked on entering every ``cockpit.step``; a pending instrument gets
        ``advance`` at its phase even on steps it is not due.
        """
        return False

    def advance(self, step: StepView) -> None:  # noqa: B027 - optional hook
        """Runs at this instrument's phase on a step it is pending but not due."""

    def drain(self) -> dict[int, Reading]:
        """Readings of earlier steps finished since the last call, by step."""
        return {}

    def finish(self) -> None:  # noqa: B027 - optional hook
        """Runs at ``close()``: settle pending readings (None when undefined)."""


def sums_locally(inst: Instrument) -> bool:
    """Whether ``inst`` computes its reading from ``local`` sums."""
    return type(inst).local is not Instrument.local


def advances_locally(inst: Instrument) -> bool:
    """Whether ``inst``'s ``advance`` goes through ``advance_local`` sums."""
    return type(inst).advance_local is not Instrument.advance_local


def norms_and_total(named: list[tuple[str, Tensor]]) -> dict[str, Leaf] | None:
    """``{"total": ‖all‖₂ (float64), name: ‖t‖₂ ...}``; None when ``named`` is empty.

    One fused ``_foreach_norm`` instead of one kernel per tensor: what keeps the
    cheap every-step instruments cheap on models with hundreds of tensors.
    """
    if not named:
        return None
    norms = torch._foreach_norm([t.detach() for _, t in named])
    total = torch.linalg.vector_norm(torch.stack(norms).double())
    return {"total": total, **{n: v for (n, _), v in zip(named, norms, strict=True)}}


def sq_norms(step: StepView) -> dict[str, Tensor]:
    """``‖g^{(l)}‖²`` of ``p.grad`` per parameter name, float64 scalars.

    Computed once per step for all instruments (the three gradient tests read
    it), again only if a gradient was replaced or modified in place since.
    """
    grads = step.grads()
    key = [(n, g, g._version) for n, g in grads]
    hit = step.cache.get("sq_norms")
    if (
        hit is not None
        and len(hit[0]) == len(key)
        and all(
            n == m and g is h and v == w
            for (n, g, v), (m, h, w) in zip(key, hit[0], strict=True)
        )
    ):
        return dict(hit[1])
    # One fused float64 norm for all tensors, not a few kernels per parameter.
    norms = torch._foreach_norm([g.detach().double() for _, g in grads])
    out = {n: v.square() for (n, _), v in zip(grads, norms, strict=True)}
    step.cache["sq_norms"] = (key, out)
    return dict(out)


def f32_noise(mean_sq: Tensor) -> Tensor:
    """Squared size below which a float32 mean of per-sample values is round-off.

    A mean gradient smaller than ``eps_f32 · rms(g_n)`` is indistinguishable from
    zero, so statistics that divide by it are reported as undefined.
    """
    return mean_sq * torch.finfo(torch.float32).eps ** 2


def total(values: Iterable[Tensor]) -> Tensor:
    """Sum of scalar tensors, float64 (the per-layer values must be non-empty)."""
    return torch.stack([v.double() for v in values]).sum()


def stack64(values: Sequence[Tensor]) -> Tensor:
    """Tensors of one shape stacked along a new first axis, in float64.

    One conversion for all of them when they share a dtype (the usual case).
    """
    if len({v.dtype for v in values}) == 1:
        return torch.stack(list(values)).double()
    return torch.stack([v.double() for v in values])


def split_layers(g: Guarded, names: Sequence[str]) -> dict[str, Leaf]:
    """``{"total": g[0], names[i]: g[i + 1]}`` of a guarded ``[1 + L]`` vector.

    The gradient tests evaluate their formula once on the network's and every
    layer's values stacked (elementwise: the same numbers as one call each).
    """
    # ``unbind``: all views in one call (a ``select`` per layer costs a dispatch).
    values, valid = g.value.unbind(0), g.valid.unbind(0)
    out: dict[str, Leaf] = {"total": Guarded(values[0], valid[0])}
    for i, n in enumerate(names, 1):
        out[n] = Guarded(values[i], valid[i])
    return out


def count_into(counts: Tensor, index: Tensor) -> None:
    """``counts[i] += #{index == i}`` in place (int64 counts, integer index ≥ 0).

    ``bincount`` of int32 indices: on CPU about twice as fast as ``index_put_``
    with accumulation (which needs int64 indices), and 3–4× ``histc``. On CUDA
    ``bincount`` waits for the GPU (it reads the largest index to size its
    output); ``index_add_`` does not.
    """
    flat = index.reshape(-1)
    if flat.is_cuda:
        counts.index_add_(0, flat, torch.ones_like(flat, dtype=counts.dtype))
    else:
        counts += torch.bincount(flat, minlength=counts.numel())
