"""Cockpit's use of the hook engine: arming it, step data, partial-coverage notes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from glasscockpit.agent.curvature.double_backward_kernels import MathAttention
from glasscockpit.agent.curvature.hessian_products import keep_backpack_io
from glasscockpit.agent.engine import EngineError, HookEngine, StepStats, diag_ggn
from glasscockpit.agent.environment.grad_scale import GradScale, current
from glasscockpit.agent.environment.local_grads import LocalGrads
from glasscockpit.agent.instruments import Instrument
from glasscockpit.agent.lifecycle.budget import OverheadBudget
from glasscockpit.agent.lifecycle.data_parallel import DataParallel
from glasscockpit.agent.lifecycle.needs import RECORDED, TWICE, Need
from glasscockpit.agent.lifecycle.schedules import allowance
from glasscockpit.agent.lifecycle.step import StepData


class EngineWiring:
    """Mixin of ``Cockpit``: when the engine records, and what it hands a step."""

    engine: HookEngine | None
    kernels: MathAttention | None
    optimizer: Optimizer | None
    scaler: Any
    instruments: list[Instrument]
    params: list[tuple[str, nn.Parameter]]
    disabled: dict[str, str]
    _closed: bool
    _checked: bool
    _budget: OverheadBudget | None
    #: ``(step, due)`` planned by ``_prepare`` for the coming step.
    _planned: tuple[int, list[Instrument]] | None
    _local: LocalGrads | None
    #: Global readings under data parallelism (``data_parallel.py``), or None.
    _dp: DataParallel | None

    def _grad_scale(self) -> GradScale | None:
        """What the step's gradients carry of the loss scale (mixed precision)."""
        return current(self.scaler, self.optimizer)

    def _plan(self, step: int) -> tuple[list[Instrument], list[Instrument]]:
        """(due, pending) instruments at ``step``, asked once per step.

        ``_prepare`` plans the next step (to arm the engine before its forward
        pass); entering that step reuses the plan instead of asking every
        schedule again. Pending is asked afresh: only two-step instruments can be.
        """
        planned = self._planned
        if planned is not None and planned[0] == step:
            due = [i for i in planned[1] if i.key not in self.disabled]
        else:
            due = [
                i
                for i in self.instruments
                if i.key not in self.disabled and i.is_due(step)
            ]
        pending = [
            i
            for i in self.instruments
            if i.two_step
            and i.key not in self.disabled
            and i not in due
            and i.is_pending()
        ]
        return due, pending

    def _prepare(self, step: int) -> None:
        """Arm the engine iff an instrument that needs it is due or pending.

        Pending: Alpha finishes a reading with the next step's statistics.
        Likewise, ``step``'s forward pass runs under the math attention kernel
        iff an instrument that differentiates twice is due then, or pending.
        """
        if self._closed:
            self._planned = None
            due: list[Instrument] = []
            pending: list[Instrument] = []
        else:
            self._planned = None  # plan afresh: schedules may have changed
            due, pending = self._plan(step)
            self._planned = (step, due)
        wanted = [*due, *pending]
        if self.kernels is not None:
            self.kernels.wanted = any(i.needs & TWICE for i in wanted)
        if self.engine is None:
            return
        if any(i.needs & RECORDED for i in wanted):
            self.engine.arm()
        else:
            self.engine.disarm()

    def _note(self, inst: Instrument, data: StepData) -> str | None:
        """Notes on a reading: partial coverage, an estimated GGN diagonal."""
        notes = [self._partial(inst), inst.note]
        if Need.DIAG_GGN in inst.needs and isinstance(data.ggn, dict):
            notes.append(data.ggn_note)
        text = "; ".join(n for n in notes if n)
        return text or None

    def _partial(self, inst: Instrument) -> str | None:
        """A "partial: ..." note when per-sample statistics skip some parameters."""
        engine = self.engine
        if engine is None or not inst.needs & RECORDED or not engine.uncovered:
            return None
        names = engine.uncovered
        return (
            f"partial: {len(names)} of {len(self.params)} parameter tensors not "
            f"covered and left out of this instrument: {', '.join(names[:6])}"
            f"{' ...' if len(names) > 6 else ''} ({engine.coverage[names[0]]})"
        )

    def _step_data(self, due: Sequence[Instrument], loss: Tensor | None) -> StepData:
        """Engine work before the backward pass; per-sample statistics come lazily.

        ``due``: the instruments that run at this step, pending ones included.
        """
        engine = self.engine
        if engine is None or not any(i.needs & RECORDED for i in due):
            return StepData()
        if not engine.recording or engine.backpropagated:
            # Opened before the forward pass, or what was recorded belongs to an
            # earlier, finished backward pass: record afresh from here.
            engine.arm()
        ggn: dict[str, Tensor] | Exception | None = None
        start = time.perf_counter()
        notes: list[str] = []
        if any(Need.DIAG_GGN in i.needs for i in due):
            try:
                if loss is None:
                    raise EngineError(
                        "Curvature instruments need cockpit.step(loss=...)"
                    )
                # A budget's allowance bounds the passes: the smallest of the
                # step's curvature users (None: exact up to MAX_PASSES).
                allowed = [
                    a
                    for i in due
                    if Need.DIAG_GGN in i.needs
                    and (a := allowance(i.schedule)) is not None
                ]
                # Half of it: the rest of the reading (the per-sample pass for
                # TIC's numerator) comes out of the same allowance.
                seconds = min(allowed) / 2 if allowed else None
                with keep_backpack_io():  # an extended model's IO stays
                    ggn = diag_ggn(engine, loss, notes, seconds)
                if self._dp is not None:  # of the global loss
                    ggn = self._dp.mean(ggn)
            except Exception as exc:  # noqa: BLE001 - the TIC instruments report it
                ggn = exc
        if self._budget is not None:
            self._budget.share(time.perf_counter() - start)

        # ``data`` comes in as an argument: a closure over it would make a
        # reference cycle (data -> stats -> data) that keeps every step's
        # per-sample statistics alive until a full garbage collection.
        def stats(data: StepData) -> StepStats:
            start = time.perf_counter()
            result = StepStats(
                engine,
                check=not self._checked,
                grad_scale=self._grad_scale(),
                local=self._local,
                global_grad=self._dp is not None,
            )
            if self._budget is not None:  # shared by every engine user of the step
                self._budget.share(time.perf_counter() - start)
            self._checked = True
            if result.moved and isinstance(data.ggn, dict):
                # The curvature passes ran before the check found these
                # parameters used outside their module; from the next step on
                # they are served correctly.
                data.ggn = EngineError(
                    f"Parameters {result.moved[:4]} turned out to be used outside "
                    "their module (tied?, or an output other than its first) at "
                    "this step; curvature resumes next step"
                )
            return result

        data = StepData(stats, ggn)
        data.ggn_note = "; ".join(notes) if notes else None
        return data
