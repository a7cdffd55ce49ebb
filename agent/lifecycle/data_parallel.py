"""Readings of the global batch under data parallelism (DDP with several processes).

Every process runs the same instruments on its own samples. What a reading sums
over samples is added over processes in one packed all-reduce per tracked step,
after the backward pass:

- the step's sample count and ``n_r · L_r`` (the loss and α use the global mean);
- ``Σ_n g_n²`` per parameter (GSNR, CABS, early stopping, TIC);
- the sums instruments return from ``local`` (the gradient tests' ``Σ‖g_n‖²``
  and ``Σ u_n²``, α's slope and loss moments), including those an instrument
  computed before the backward pass;
- the ``summed`` fields of readings computed per process (histogram counts).

Then each reading is finished from the sums with a view whose ``sample_count``
and ``loss`` are the global batch's; instruments that read only what DDP makes
equal on every process (``.grad``, the parameters, learning rates) compute
after the collective from that view. Curvature is of the global loss: the GGN
diagonal is averaged (one all-reduce before the backward pass, on steps that
need it) and Hessian-vector products are all-reduced one by one
(``agent/curvature/data_parallel.py``). Rank 0 streams the run; the other
processes compute (they take part in the collectives) and send nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from glasscockpit.agent.engine import EngineError, HookEngine
from glasscockpit.agent.environment.distributed import Group
from glasscockpit.agent.instruments import Instrument, Reading
from glasscockpit.agent.instruments.base import Phase, advances_locally, sums_locally
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.step import StepData, StepView
from glasscockpit.agent.transport.base import Item, TransportStats

log = logging.getLogger("glasscockpit.agent")


class Step(Protocol):
    """What the runner reads of ``StepContext`` (``lifecycle/phases.py``)."""

    step: int
    loss: Tensor | None
    losses: Tensor | None
    batch_size: int | None
    data: StepData


class Host(Protocol):
    """The Cockpit as the runner uses it (``StepPhases``)."""

    disabled: dict[str, str]

    def _view(self, ctx: Any, inst: Instrument) -> StepView: ...

    def _timed(
        self, ctx: Any, inst: Instrument, fn: Callable[[], Any], errors: dict[str, str]
    ) -> tuple[bool, Any]: ...

    def _note(self, inst: Instrument, data: StepData) -> str | None: ...


@dataclass
class _Part:
    """An instrument's share of the step's collective, finished after it."""

    inst: Instrument
    kind: str  # "local", "summed", "plain", "advance", "advance_plain"
    sums: dict[str, Tensor]
    value: Any = None


class SilentTransport:
    """Where the frames of ranks other than 0 go: nowhere (counted as dropped)."""

    def __init__(self) -> None:
        self.stats = TransportStats(state="closed")

    def send(self, frame: Item) -> None:
        """Drop the frame."""
        del frame
        self.stats.dropped += 1

    def close(self, timeout: float) -> None:
        """Nothing to deliver."""
        del timeout


def refuse_sharded(params: Sequence[tuple[str, Tensor]]) -> None:
    """Raise for parameters sharded over processes (FSDP's ``DTensor``s).

    Their instruments would read one shard's slice of each parameter; gathering
    them is not implemented (docs/data-parallel.md).
    """
    sharded = [n for n, p in params if type(p).__name__ == "DTensor"]
    if sharded:
        raise NotImplementedError(
            f"{len(sharded)} parameters are sharded over processes (FSDP DTensors, "
            f"e.g. {sharded[0]!r}): glasscockpit reads data-parallel replicas "
            "(DistributedDataParallel), not sharded parameters yet; see "
            "docs/data-parallel.md"
        )


def per_rank_run(run: str) -> str:
    """``run`` with this process's rank appended (the opt-in per-rank view)."""
    return f"{run}.rank{int(torch.distributed.get_rank())}"


class DataParallel:
    """Global readings of one data-parallel job (see the module docstring)."""

    def __init__(self, group: Group) -> None:
        self.group = group
        #: Rank 0 streams the job's run; the others send nothing.
        self.silent = group.rank != 0
        self._count = 1.0
        self._parts: list[_Part] = []

    def meta(self) -> dict[str, Any]:
        """Run metadata: what the readings describe."""
        return {
            "processes": self.group.size,
            "backend": self.group.backend,
            "readings": "global batch (sums over every process's samples, one "
            "all-reduce per tracked step); streamed by rank 0",
        }

    # -- one step ------------------------------------------------------------------
    def begin(self, ctx: Step, engine: HookEngine | None) -> None:
        """Forget the last step's parts; this process's weight in the global mean."""
        self._parts = []
        if ctx.batch_size:
            count = float(ctx.batch_size)
        elif ctx.losses is not None:
            count = float(ctx.losses.numel())
        elif engine is not None and engine.output is not None:
            count = float(engine.output.shape[0])
        else:
            count = 1.0  # equal weights: pass batch_size= when batches differ
        self._count = count

    def attach(self, data: StepData) -> None:
        """Give the step's data the group: curvature then uses the global loss."""
        data.group = self.group
        data.count = self._count

    def mean(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """The sample-weighted mean over processes (GGN diagonal): one all-reduce."""
        names = list(values)
        weight = torch.tensor([self._count], dtype=torch.float64)
        if names:
            weight = weight.to(values[names[0]].device)
        *summed, total = self.group.sum(
            [*(values[n] * self._count for n in names), weight], curvature=True
        )
        return {n: v / float(total) for n, v in zip(names, summed, strict=True)}

    def run(
        self,
        host: Host,
        phase: Phase,
        ctx: Step,
        due: Sequence[Instrument],
        pending: Sequence[Instrument],
        errors: dict[str, str],
    ) -> dict[str, Reading]:
        """Run ``phase`` of a step; after the backward pass, the one all-reduce."""
        results: dict[str, Reading] = {}
        for inst in sorted(due, key=lambda i: not i.leads):
            if inst.phase is not phase or inst.key in host.disabled:
                continue
            view = host._view(ctx, inst)
            if sums_locally(inst) and phase is Phase.BEFORE_BACKWARD:
                # Before the backward pass only this process's gradient exists
                # (α's graph fallback): not the global batch's.
                host._timed(ctx, inst, _refuse, errors)
            elif sums_locally(inst):
                ok, sums = host._timed(ctx, inst, _bind(inst.local, view), errors)
                if ok and sums is None:
                    results[inst.key] = None
                elif ok:
                    self._parts.append(_Part(inst, "local", sums))
            elif inst.summed:
                ok, value = host._timed(ctx, inst, _bind(inst.compute, view), errors)
                if ok:
                    sums = _fields(value, inst.summed)
                    self._parts.append(_Part(inst, "summed", sums, value))
            elif phase is Phase.BEFORE_BACKWARD:
                # Curvature: its products are of the global loss already.
                ok, value = host._timed(ctx, inst, _bind(inst.compute, view), errors)
                if ok and not inst.two_step:
                    results[inst.key] = value
            else:
                self._parts.append(_Part(inst, "plain", {}))
        for inst in pending:
            if inst.phase is not phase or inst.key in host.disabled:
                continue
            view = host._view(ctx, inst)
            if advances_locally(inst):
                ok, sums = host._timed(
                    ctx, inst, _bind(inst.advance_local, view), errors
                )
                if ok and sums is not None:
                    self._parts.append(_Part(inst, "advance", sums))
            else:
                self._parts.append(_Part(inst, "advance_plain", {}))
        if phase is Phase.AFTER_BACKWARD:
            results.update(self._finish(host, ctx, due, pending, errors))
        return results

    def _finish(
        self,
        host: Host,
        ctx: Step,
        due: Sequence[Instrument],
        pending: Sequence[Instrument],
        errors: dict[str, str],
    ) -> dict[str, Reading]:
        """The step's one all-reduce, then every reading from the global sums."""
        parts, self._parts = self._parts, []
        if not parts:
            return {}
        data = ctx.data
        device = next(
            (t.device for p in parts for t in p.sums.values()),
            torch.device("cpu") if ctx.loss is None else ctx.loss.device,
        )
        count = torch.tensor(
            _samples(ctx, self._count), dtype=torch.float64, device=device
        )
        weighted = count * (
            0.0 if ctx.loss is None else ctx.loss.detach().double().reshape(())
        )
        sgs = self._sgs(data, [*due, *pending])
        tensors = [torch.stack([count, weighted])]
        tensors += list(sgs.values())
        for p in parts:
            tensors += list(p.sums.values())
        reduced = iter(self.group.sum(tensors))
        head = next(reduced)
        data.reduced = {"n": float(head[0])}
        if sgs:
            data.reduced["sgs"] = {n: next(reduced) for n in sgs}
        loss = None
        if ctx.loss is not None:
            loss = (head[1] / head[0]).to(ctx.loss.dtype)
        results: dict[str, Reading] = {}
        for p in parts:
            p.sums = {k: next(reduced) for k in p.sums}
            view = dataclasses.replace(host._view(ctx, p.inst), loss=loss)
            inst = p.inst
            if p.kind == "local":
                fn: Callable[[], Any] = _bind(inst.reading, view, p.sums)
            elif p.kind == "summed":
                fn = _bind(_replace, p.value, p.sums)
            elif p.kind == "plain":
                fn = _bind(inst.compute, view)
            elif p.kind == "advance":
                fn = _bind(inst.advance_reading, view, p.sums)
            else:
                fn = _bind(inst.advance, view)
            ok, value = host._timed(ctx, inst, fn, errors)
            if ok and p.kind in ("local", "summed", "plain") and not inst.two_step:
                results[inst.key] = value
                note = host._note(inst, data)
                if note and inst.key not in errors:
                    errors[inst.key] = note
        return results

    @staticmethod
    def _sgs(data: StepData, insts: Sequence[Instrument]) -> dict[str, Tensor]:
        """This process's ``Σ_n g_n²`` when an instrument of the step reads it."""
        if not any(Need.SUM_GRAD_SQUARED in i.needs for i in insts):
            return {}
        try:
            return dict(data.stats().sum_grad_squared())
        except Exception:  # noqa: BLE001 - the instruments report the engine's error
            return {}


def _samples(ctx: Step, fallback: float) -> float:
    """This process's samples at the step, as one process's ``sample_count`` has it.

    The engine's count where it recorded the step, else ``batch_size=`` or the
    per-sample losses (which a step opened before the forward pass receives
    later, through ``set_loss``), else what ``begin`` found.
    """
    try:
        return float(ctx.data.stats().batch_size)
    except Exception:  # noqa: BLE001 - no engine at this step
        pass
    if ctx.batch_size:
        return float(ctx.batch_size)
    if ctx.losses is not None:
        return float(ctx.losses.numel())
    return fallback


def _refuse() -> None:
    raise EngineError(
        "undefined under data parallelism: computed before the backward pass from "
        "this process's gradient (the per-sample engine does not cover every "
        "parameter of this model)"
    )


def _bind(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: fn(*args)


def _fields(value: Reading, names: Sequence[str]) -> dict[str, Tensor]:
    """The ``names`` fields of a reading (tensors), to be summed over processes."""
    if not isinstance(value, dict):
        return {}
    return {n: v for n, v in value.items() if n in names and isinstance(v, Tensor)}


def _replace(value: Reading, sums: dict[str, Tensor]) -> Reading:
    """The reading with its summed fields replaced by their sums over processes."""
    if not isinstance(value, dict):
        return value
    return {**value, **sums}
