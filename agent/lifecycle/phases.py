"""Running instruments at their phase of a step, two-step draining, sending readings.

A tracked step has three phases: on entry to ``cockpit.step`` (before the backward
pass), on exit (after it), and after ``optimizer.step()`` (through a hook on the
optimizer). Two-step instruments finish a reading a step later; ``drain`` hands
those over and they are sent under the step they belong to.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from glasscockpit.agent.engine import EngineError
from glasscockpit.agent.instruments import Instrument, Reading
from glasscockpit.agent.instruments.base import Phase
from glasscockpit.agent.lifecycle.budget import OverheadBudget
from glasscockpit.agent.lifecycle.diagnosis import AgentDiagnosis
from glasscockpit.agent.lifecycle.engine_wiring import EngineWiring
from glasscockpit.agent.lifecycle.step import StepData, StepView
from glasscockpit.agent.transport.host_copy import DeferredReadings, pack_readings
from glasscockpit.agent.transport.websocket import Transport
from glasscockpit.protocol import Bye, Hello, Readings

log = logging.getLogger("glasscockpit.agent")


@dataclass
class StepContext:
    """What ``cockpit.step`` received, kept until the step's last phase ran."""

    step: int
    loss: Tensor | None
    losses: Tensor | None
    batch_size: int | None
    lrs: list[float]
    #: θ_t, cloned on entry when an AFTER_STEP instrument needs the update.
    before: list[Tensor] | None = None
    data: StepData = field(default_factory=StepData)
    param_lrs: dict[str, float] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    #: ``mixes_samples`` of the model at this step (per-sample losses undefined).
    mixes: str | None = None


class StepPhases(EngineWiring):
    """Mixin of ``Cockpit``: runs instruments at a phase and sends their readings."""

    optimizer: torch.optim.Optimizer | None
    fail_mode: str
    run: str
    transport: Transport
    _warned: set[str]
    _seq: int
    _init: list[Tensor] | None
    _after_step: tuple[StepContext, list[Instrument]] | None
    _budget: OverheadBudget | None
    _diagnosis: AgentDiagnosis | None
    _closing: bool

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send_frame(self, frame: Hello | Readings | Bye | DeferredReadings) -> None:
        try:
            self.transport.send(frame)
        except Exception:  # noqa: BLE001 - monitoring never breaks training
            log.exception("glasscockpit: could not queue a frame")
        if self._diagnosis is not None:
            try:
                self._diagnosis.observe(frame)
                self._diagnosis.poll()
            except Exception:  # noqa: BLE001 - a diagnosis bug never breaks training
                log.exception("glasscockpit: diagnosis failed")
            if not self._closing:
                # The user's callback: raising from it stops training.
                self._diagnosis.deliver()

    def _lrs(self) -> list[float]:
        if self.optimizer is None:
            return []
        return [float(g["lr"]) for g in self.optimizer.param_groups if "lr" in g]

    def _param_lrs(self) -> dict[str, float]:
        if self.optimizer is None:
            return {}
        lr_of = {
            id(p): float(g["lr"])
            for g in self.optimizer.param_groups
            if "lr" in g
            for p in g["params"]
        }
        return {n: lr_of[id(p)] for n, p in self.params if id(p) in lr_of}

    def _view(
        self,
        ctx: StepContext,
        inst: Instrument,
        applied: Sequence[Tensor] | None = None,
    ) -> StepView:
        return StepView(
            ctx.step,
            ctx.loss,
            self.params,
            ctx.lrs,
            ctx.batch_size,
            inst.needs,
            losses=ctx.losses,
            opt=self.optimizer,
            init=self._init,
            applied=applied,
            cache=ctx.cache,
            data=ctx.data,
            param_lrs=ctx.param_lrs,
            mixes=ctx.mixes,
            grad_scale=self._grad_scale(),
            # Global readings (data parallelism) read the all-reduced ``.grad``.
            local=self._local if self._dp is None else None,
        )

    def _guard(
        self,
        step: int,
        inst: Instrument,
        fn: Callable[[], Any],
        errors: dict[str, str],
        ctx: StepContext | None = None,
    ) -> tuple[bool, Any]:
        """Run ``fn``; on failure disable ``inst`` (or re-raise in raise mode).

        A failure on a step whose loss or gradients are not finite (an
        eigensolver on NaNs) only makes this step's reading undefined.
        """
        try:
            return True, fn()
        except Exception as exc:
            if not isinstance(exc, EngineError) and (ctx is None or _finite(self, ctx)):
                return self._disable(step, inst, exc, errors)
            if isinstance(exc, EngineError):
                msg = f"{type(exc).__name__}: {exc}"
            else:
                msg = f"non-finite loss or gradients at this step: {exc}"
            # The model or this step does not allow the statistic: report it at
            # this step (None), keep the instrument for later steps.
            if self.fail_mode == "raise":
                raise
            errors[inst.key] = msg
            if msg not in self._warned:
                self._warned.add(msg)
                log.warning(
                    "glasscockpit: [Step %d | %s] undefined: %s", step, inst.key, msg
                )
            return True, None

    def _disable(
        self, step: int, inst: Instrument, exc: Exception, errors: dict[str, str]
    ) -> tuple[bool, Any]:
        if self.fail_mode == "raise":
            raise exc
        msg = f"{type(exc).__name__}: {exc}"
        self.disabled[inst.key] = msg
        errors[inst.key] = msg
        log.warning(
            "glasscockpit: [Step %d | %s] failed and is disabled: %s",
            step,
            inst.key,
            msg,
        )
        return False, None

    def _run_phase(
        self,
        phase: Phase,
        ctx: StepContext,
        due: Sequence[Instrument],
        pending: Sequence[Instrument],
        errors: dict[str, str],
        applied: Sequence[Tensor] | None = None,
    ) -> dict[str, Reading]:
        if self._dp is not None and phase is not Phase.AFTER_STEP:
            return self._dp.run(self, phase, ctx, due, pending, errors)
        results: dict[str, Reading] = {}
        budget = self._budget
        for inst in sorted(due, key=_follows):  # stable: leaders first
            if inst.phase is phase and inst.key not in self.disabled:
                view = self._view(ctx, inst, applied)
                start = time.perf_counter(), _shared(budget)
                ok, value = self._guard(
                    ctx.step, inst, partial(inst.compute, view), errors, ctx
                )
                _attribute(budget, inst.key, start)
                if ok and not inst.two_step:
                    results[inst.key] = value
                    note = self._note(inst, ctx.data)
                    if note and inst.key not in errors:
                        errors[inst.key] = note
        for inst in pending:
            if inst.phase is phase and inst.key not in self.disabled:
                view = self._view(ctx, inst, applied)
                start = time.perf_counter(), _shared(budget)
                self._guard(ctx.step, inst, partial(inst.advance, view), errors, ctx)
                _attribute(budget, inst.key, start)
        return results

    def _timed(
        self,
        ctx: StepContext,
        inst: Instrument,
        fn: Callable[[], Any],
        errors: dict[str, str],
    ) -> tuple[bool, Any]:
        """``_guard(fn)``, its time charged to ``inst`` (less shared engine work)."""
        start = time.perf_counter(), _shared(self._budget)
        try:
            return self._guard(ctx.step, inst, fn, errors, ctx)
        finally:
            _attribute(self._budget, inst.key, start)

    def _run_after_step(self) -> None:
        """Run the AFTER_STEP instruments of the last tracked step, once."""
        pending, self._after_step = self._after_step, None
        if pending is None:
            return
        start = time.perf_counter()
        try:
            self._after_step_phase(*pending)
        finally:
            if self._budget is not None:
                self._budget.charge(time.perf_counter() - start)

    def _after_step_phase(self, ctx: StepContext, insts: list[Instrument]) -> None:
        applied = None
        if ctx.before is not None:
            applied = list(
                torch._foreach_sub([p.detach() for _, p in self.params], ctx.before)
            )
        errors: dict[str, str] = {}
        with torch.no_grad():
            results = self._run_phase(Phase.AFTER_STEP, ctx, insts, (), errors, applied)
        if results or errors:
            self._emit(ctx.step, results, errors)
        self._send_drained()

    def _send_drained(self) -> None:
        """Send readings that two-step instruments finished for earlier steps."""
        by_step: dict[int, dict[str, Reading]] = {}
        for inst in self.instruments:
            for step, reading in inst.drain().items():
                by_step.setdefault(step, {})[inst.key] = reading
        for step, results in sorted(by_step.items()):
            self._emit(step, results, {})

    def _emit(
        self, step: int, results: dict[str, Reading], errors: dict[str, str]
    ) -> None:
        try:
            # On CUDA this only queues the copy; the transport waits for it.
            frame = pack_readings(
                self.run, self._seq + 1, step, time.time(), results, errors
            )
        except Exception as exc:
            if self.fail_mode == "raise":
                raise
            log.warning("glasscockpit: [Step %d] could not read results: %s", step, exc)
            return
        self._next_seq()
        self._send_frame(frame)


def _finite(cockpit: StepPhases, ctx: StepContext) -> bool:
    """Whether the step's loss and gradients are finite (checked on failure only)."""
    tensors = [] if ctx.loss is None else [ctx.loss.detach()]
    tensors += [p.grad for _, p in cockpit.params if p.grad is not None]
    return all(bool(torch.isfinite(t).all()) for t in tensors if not t.is_sparse)


def _follows(inst: Instrument) -> bool:
    return not inst.leads


def _shared(budget: OverheadBudget | None) -> float:
    return 0.0 if budget is None else budget.shared_so_far()


def _attribute(
    budget: OverheadBudget | None, key: str, start: tuple[float, float]
) -> None:
    """Charge ``key`` the time since ``start`` less engine work shared meanwhile."""
    if budget is not None:
        shared = budget.shared_so_far() - start[1]
        budget.attribute(key, time.perf_counter() - start[0] - shared)


def on_optimizer_step(ref: weakref.ReferenceType[StepPhases]) -> Callable[..., None]:
    """An optimizer step post-hook that runs the pending AFTER_STEP instruments.

    It holds the cockpit weakly, so a forgotten cockpit can still be collected.
    """

    def hook(*_: object) -> None:
        cockpit = ref()
        if cockpit is not None:
            cockpit._run_after_step()

    return hook
