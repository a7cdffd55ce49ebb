"""Alpha: where the applied step landed on a noisy local parabola along it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from glasscockpit.agent.curvature import split_flat
from glasscockpit.agent.instruments.base import Cost, Instrument, Phase, Reading
from glasscockpit.agent.needs import Need
from glasscockpit.agent.schedules import Schedule
from glasscockpit.agent.step import StepView
from glasscockpit.agent.update_fit import (
    fit_alpha,
    orthonormal_basis,
    update_directions,
)
from glasscockpit.protocol import Kind, PanelSpec


@dataclass
class _Start:
    step: int
    theta: list[Tensor]  # θ_t per parameter
    basis: Tensor  # [K, D] float64, orthonormal; spans the predicted update
    proj: Tensor  # [K, B] per-sample gradients at θ_t projected on the basis
    value: float  # L_t(θ_t)
    var_value: float  # unbiased variance of the per-sample losses


def _mean_var(x: Tensor) -> tuple[float, float]:
    x = x.double()
    return float(x.mean()), float(x.var()) if x.numel() > 1 else float("nan")


def _as_params(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
    return [
        v.to(p.dtype) for v, p in zip(split_flat(flat, params), params, strict=True)
    ]


def _slopes(step: StepView, basis: Tensor) -> Tensor:
    """``[K, B]``: each sample's gradient dotted with each row of ``basis`` [K, D]."""
    names = [n for n, _ in step.params]
    params: list[Tensor] = [p for _, p in step.params]
    return step.sample_dots(
        [dict(zip(names, _as_params(row, params), strict=True)) for row in basis]
    )


class Alpha(Instrument):
    """Cockpit's effective relative step size α, for the update actually applied.

    At a tracked step t (after backward) the per-sample gradients are projected
    onto a few directions that span the coming update: the update predicted by a
    shadow copy of the optimizer, the gradient, parameter-shaped optimizer state
    (momentum) and, with weight decay, θ_t. At step t+1 the measured
    d = θ_{t+1} − θ_t is expressed in that basis; if it leaves the span by more
    than ``span_rtol`` (e.g. Adam with clipping) α is undefined (None). The
    reading for step t arrives at step t+1; the last tracked step gets None at
    ``close()``. Needs ``cockpit.step(..., losses=per_sample_losses)``.

    The projections ``g_n · d`` come from the hook engine's per-layer rules
    (engines.md: "g_n·d: hook engine"), so α needs per-sample gradients of
    every parameter: it is undefined (None, with the engine's reason) on
    models or steps where some parameter is not covered or per-sample
    gradients are undefined (train-mode BatchNorm).
    """

    name = "alpha"
    needs: ClassVar[frozenset[Need]] = frozenset(
        {Need.PARAMS, Need.GRAD, Need.LOSSES, Need.OPTIMIZER, Need.BATCH_DOT}
    )
    cost = Cost.MODERATE
    preset = "economy"  # Cockpit's configuration membership
    kind = Kind.SCALAR
    phase = Phase.AFTER_BACKWARD
    two_step = True
    panel = PanelSpec(
        title="Alpha (relative step size)",
        y_label="α",
        group="step size",
        help="Where each step lands on a local parabola: −1 start, 0 minimum, "
        "+1 same loss on the far side; > 1 overshoots, tuned SGD sits mostly "
        "a little above 0.",
        smooth=True,
        distribution="alpha",
    )

    def __init__(
        self,
        schedule: Schedule | None = None,
        label: str | None = None,
        *,
        span_rtol: float = 1e-3,
    ) -> None:
        super().__init__(schedule, label)
        self.span_rtol = span_rtol
        self._start: _Start | None = None
        self._done: dict[int, Reading] = {}

    @override
    def is_pending(self) -> bool:
        return self._start is not None

    @override
    def drain(self) -> dict[int, Reading]:
        done, self._done = self._done, {}
        return done

    @override
    def finish(self) -> None:
        if self._start is not None:  # no later batch: α is undefined
            self._done[self._start.step] = None
            self._start = None

    def _end(self, step: StepView) -> tuple[_Start, Tensor, float] | None:
        """Pops step t's start; (start, coefficients of d in its basis, τ).

        None when nothing is pending, or α(t) is already decided (undefined: the
        applied update left the predicted span, or no update at all).
        """
        start, self._start = self._start, None
        if start is None:
            return None
        params: list[Tensor] = [p for _, p in step.params]
        step.require(Need.PARAMS)
        d = torch.cat(
            [
                (p.detach().double() - t.double()).reshape(-1)
                for p, t in zip(params, start.theta, strict=True)
            ]
        )
        coef = start.basis @ d  # [K]
        tau = float(coef.norm())
        resid = float((d - start.basis.T @ coef).norm()) / max(float(d.norm()), 1e-300)
        if tau == 0.0 or resid > self.span_rtol:
            self._done[start.step] = None
            return None
        return start, coef, tau

    def _finish(
        self, step: StepView, end: tuple[_Start, Tensor, float], slopes1: Tensor
    ) -> None:
        """α(t) from its start and this step's losses and slopes along ``u``."""
        start, coef, tau = end
        losses = step.sample_losses()
        slopes0 = (coef / tau) @ start.proj  # [B]
        value1 = float((losses.mean() if step.loss is None else step.loss).detach())
        _, var1 = _mean_var(losses.detach())
        s0, vs0 = _mean_var(slopes0)
        s1, vs1 = _mean_var(slopes1)
        self._done[start.step] = fit_alpha(
            tau, (start.value, value1), (s0, s1), (start.var_value, var1), (vs0, vs1)
        )

    @staticmethod
    def _direction(end: tuple[_Start, Tensor, float]) -> Tensor:
        """The applied update's unit direction ``u`` [D], float64, in the basis."""
        start, coef, tau = end
        return start.basis.T @ (coef / tau)

    @override
    def advance(self, step: StepView) -> None:
        """Finish step t's α with the batch of this step at θ_{t+1}."""
        end = self._end(step)
        if end is None:
            return
        try:
            step.sample_losses()  # undefined losses: say so before any work
            self._finish(step, end, _slopes(step, self._direction(end)[None])[0])
        except Exception:
            self._done[end[0].step] = None  # undefined at t+1: so is α(t)
            raise

    @override
    def compute(self, step: StepView) -> Reading:
        """Starts step t's α (finishing t−1's first); the reading comes later.

        Both need per-sample slopes at this step: the finished reading's along
        ``u``, the new start's along its basis; one pass over the engine's
        per-sample gradients serves all of them.
        """
        end = self._end(step)
        try:
            params: list[Tensor] = [p for _, p in step.params]
            step.require(Need.PARAMS)
            step.require(Need.GRAD)
            losses = step.sample_losses()
            loss = losses.mean() if step.loss is None else step.loss
            # What the optimizer will see: .grad after this step's backward pass.
            seen = [
                torch.zeros_like(p) if p.grad is None else p.grad.detach()
                for p in params
            ]
            opt = step.optimizer()
            basis = orthonormal_basis(update_directions(opt, params, seen))
            rows = (
                basis if end is None else torch.cat([self._direction(end)[None], basis])
            )
            slopes = _slopes(step, rows)
        except Exception:
            if end is not None:
                self._done[end[0].step] = None  # undefined at t+1: so is α(t)
            raise
        if end is not None:
            self._finish(step, end, slopes[0])
            slopes = slopes[1:]
        _, var0 = _mean_var(losses.detach())
        self._start = _Start(
            step.step,
            [p.detach().clone() for p in params],
            basis,
            slopes,
            float(loss.detach()),
            var0,
        )
        return None
