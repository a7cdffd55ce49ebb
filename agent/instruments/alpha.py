"""Alpha: where the applied step landed on a noisy local parabola along it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from glasscockpit.agent.curvature import split_flat
from glasscockpit.agent.engine import EngineError
from glasscockpit.agent.instruments.base import Cost, Instrument, Phase, Reading
from glasscockpit.agent.needs import Need
from glasscockpit.agent.schedules import Schedule
from glasscockpit.agent.step import StepView
from glasscockpit.agent.update_fit import (
    SampleJacobian,
    fit_alpha,
    orthonormal_basis,
    update_directions,
)
from glasscockpit.protocol import Kind, PanelSpec


@dataclass
class _Start:
    step: int
    theta: list[Tensor]  # θ_t per parameter
    basis: Tensor  # [K, D] orthonormal, direction_dtype; spans the predicted update
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


#: Needs of the fallback that differentiates the loss graph (before backward).
_GRAPH_NEEDS = frozenset({Need.PARAMS, Need.LOSSES, Need.OPTIMIZER})


def _jacobian(step: StepView, losses: Tensor, params: list[Tensor]) -> SampleJacobian:
    """One per step, shared by the end of α(t−1), the start of α(t) and instances."""
    jac = step.cache.get("sample_jacobian")
    if not isinstance(jac, SampleJacobian):
        with torch.enable_grad():
            jac = step.cache["sample_jacobian"] = SampleJacobian(losses, params)
    return jac


class Alpha(Instrument):
    """Cockpit's effective relative step size α, for the update actually applied.

    At a tracked step t (before backward) the per-sample gradients are projected
    onto a few directions that span the coming update: the update predicted by a
    shadow copy of the optimizer, the gradient, parameter-shaped optimizer state
    (momentum) and, with weight decay, θ_t. At step t+1 the measured
    d = θ_{t+1} − θ_t is expressed in that basis; if it leaves the span by more
    than ``span_rtol`` (e.g. Adam with clipping) α is undefined (None). The
    reading for step t arrives at step t+1; the last tracked step gets None at
    ``close()``. Needs ``cockpit.step(..., losses=per_sample_losses)``.

    Two engines: when the hook engine serves every parameter, the projections
    are per-layer contractions of the recorded inputs and output gradients after
    the backward pass (one matrix product per layer and direction); otherwise
    ``SampleJacobian`` differentiates the loss graph twice before the backward
    pass. Both assume the loss is the mean of the per-sample losses.
    """

    name = "alpha"
    #: The per-sample engine path; ``on_engine`` falls back to ``_GRAPH_NEEDS``.
    needs: ClassVar[frozenset[Need]] = frozenset(
        {Need.PARAMS, Need.LOSSES, Need.OPTIMIZER, Need.BATCH_DOT}
    )
    phase: ClassVar[Phase] = Phase.AFTER_BACKWARD
    cost = Cost.MODERATE
    preset = "economy"  # Cockpit's configuration membership
    kind = Kind.SCALAR
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

    @override
    def advance(self, step: StepView) -> None:
        """Finish step t's α with the batch of this step at θ_{t+1}."""
        start, self._start = self._start, None
        if start is None:
            return
        params: list[Tensor] = [p for _, p in step.params]
        step.require(Need.PARAMS)
        # One rounded subtraction per entry, in at least float32 (bf16 models).
        d = torch.cat(
            [
                (p.detach().to(start.basis.dtype) - t.to(start.basis.dtype)).reshape(-1)
                for p, t in zip(params, start.theta, strict=True)
            ]
        )
        coef = start.basis @ d  # [K]
        tau = float(coef.double().norm())
        resid = float((d - coef @ start.basis).norm()) / max(float(d.norm()), 1e-300)
        if tau == 0.0 or resid > self.span_rtol:
            self._done[start.step] = None
            return
        u = (coef / tau) @ start.basis  # unit direction [D]
        slopes0 = (coef.double() / tau) @ start.proj  # [B]
        losses = step.sample_losses()
        slopes1 = self._project(step, losses, params, [u])[0]
        value1 = float((losses.mean() if step.loss is None else step.loss).detach())
        _, var1 = _mean_var(losses.detach())
        s0, vs0 = _mean_var(slopes0)
        s1, vs1 = _mean_var(slopes1)
        self._done[start.step] = fit_alpha(
            tau, (start.value, value1), (s0, s1), (start.var_value, var1), (vs0, vs1)
        )

    @override
    def on_engine(self, complete: bool) -> None:
        """Without an engine serving every parameter, use the loss graph."""
        if not complete:
            self._use_graph()

    def _use_graph(self) -> None:
        # A per-instance choice of engine: instance attributes shadow the class's.
        self.phase = Phase.BEFORE_BACKWARD  # type: ignore[misc]
        self.needs = _GRAPH_NEEDS  # type: ignore[misc]

    def _project(
        self,
        step: StepView,
        losses: Tensor,
        params: list[Tensor],
        directions: list[Tensor],
    ) -> list[Tensor]:
        """Per-sample slopes ``[B]`` (float64) along flat float64 directions."""
        if Need.BATCH_DOT in self.needs:
            names = [n for n, _ in step.params]
            try:
                return [
                    step.project(dict(zip(names, _as_params(d, params), strict=True)))
                    for d in directions
                ]
            except EngineError:
                # E.g. a loss term on the parameters found at the first step:
                # this step's α is undefined, later ones use the loss graph.
                self._start = None
                self._use_graph()
                raise
        jac = _jacobian(step, losses, params)
        return [jac.project(_as_params(d, params)).double() for d in directions]

    @override
    def compute(self, step: StepView) -> Reading:
        """Starts step t's α (finishing t−1's first); the reading comes later."""
        self.advance(step)
        params: list[Tensor] = [p for _, p in step.params]
        step.require(Need.PARAMS)
        losses = step.sample_losses()
        loss = losses.mean() if step.loss is None else step.loss
        if self.phase is Phase.AFTER_BACKWARD:
            # p.grad is what the optimizer will see (accumulation included).
            seen = [
                torch.zeros_like(p) if p.grad is None else p.grad.detach()
                for p in params
            ]
        else:
            grads = torch.autograd.grad(
                loss, params, retain_graph=True, allow_unused=True
            )
            # What the optimizer will see: this gradient plus anything accumulated.
            seen = [
                (torch.zeros_like(p) if g is None else g.detach())
                + (torch.zeros_like(p) if p.grad is None else p.grad.detach())
                for p, g in zip(params, grads, strict=True)
            ]
        basis = orthonormal_basis(update_directions(step.optimizer(), params, seen))
        rows = self._project(step, losses, params, list(basis))
        proj = torch.stack(rows) if rows else basis.new_zeros((0, losses.numel()))
        _, var0 = _mean_var(losses.detach())
        self._start = _Start(
            step.step,
            [p.detach().clone() for p in params],
            basis,
            proj,
            float(loss.detach()),
            var0,
        )
        return None
