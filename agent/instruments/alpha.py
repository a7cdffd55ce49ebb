"""Alpha: where the applied step landed on a noisy local parabola along it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from typing_extensions import override

from glasscockpit.agent.curvature.alpha_fit import (
    SampleJacobian,
    fit_alpha,
    orthonormal_rows,
    update_directions,
    update_in_span,
)
from glasscockpit.agent.curvature.hessian_products import split_flat
from glasscockpit.agent.engine import EngineError
from glasscockpit.agent.engine.errors import dense_grad
from glasscockpit.agent.instruments.base import (
    Cost,
    Instrument,
    Phase,
    Reading,
    stack64,
)
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.schedules import Schedule
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


@dataclass
class _Start:
    step: int
    theta: list[Tensor]  # θ_t per parameter
    basis: Tensor  # [K, D] orthonormal, direction_dtype; spans the predicted update
    #: Per-sample gradients at θ_t projected on the basis, p_n [K]: their sum
    #: [K], their sum of outer products [K, K] (float64) and the sample count,
    #: over every process's samples (what the slopes' mean and variance need).
    proj: tuple[Tensor, Tensor, float]
    value: float  # L_t(θ_t)
    var_value: float  # unbiased variance of the per-sample losses
    #: The predicted update [D] with its coefficients in the basis and its
    #: relative remainder: when θ_{t+1} − θ_t is exactly it (SGD unclipped),
    #: ``_end`` needs no pass over the basis.
    expected: tuple[Tensor, Tensor, float] | None = None
    #: The applied update's unit direction when it was ``expected`` (else None).
    unit: Tensor | None = None


def _same(a: Tensor, b: Tensor) -> bool:
    """``torch.equal``; through NumPy on CPU, whose comparison is vectorised (3x)."""
    if (
        a.device.type == b.device.type == "cpu"
        and a.dtype == b.dtype
        and a.dtype in (torch.float32, torch.float64)
    ):
        return bool(np.array_equal(a.numpy(), b.numpy()))
    return torch.equal(a, b)


def _moments(x: Tensor) -> Tensor:
    """``[Σ x, Σ x²]`` of a vector, float64 (summed over processes as they are)."""
    x = x.detach().double()
    return torch.stack([x.sum(), x.square().sum()])


def _mean_var(sums: Sequence[float], n: float) -> tuple[float, float]:
    """Mean and unbiased variance from ``[Σ x, Σ x²]``; NaN variance for n < 2."""
    mean = sums[0] / n
    if n < 2:
        return mean, math.nan
    return mean, max(sums[1] - n * mean * mean, 0.0) / (n - 1)


def _as_params(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
    if all(p.dtype == flat.dtype for p in params):  # views only (the usual case)
        return split_flat(flat, params)
    return [
        v.to(p.dtype) for v, p in zip(split_flat(flat, params), params, strict=True)
    ]


#: Needs of the fallback that differentiates the loss graph (before backward).
_GRAPH_NEEDS = frozenset({Need.PARAMS, Need.LOSSES, Need.OPTIMIZER})


def _engine_slopes(step: StepView, rows: Sequence[Tensor], grad: bool) -> Tensor:
    """``[K, B]``: each sample's gradient dotted with each of ``rows`` [D].

    With ``grad``, ``step.batch_dot()`` is computed in the same pass.
    """
    names = [n for n, _ in step.params]
    params: list[Tensor] = [p for _, p in step.params]
    return step.sample_dots(
        [dict(zip(names, _as_params(row, params), strict=True)) for row in rows],
        grad,
    )


def _along_grad(step: StepView) -> Tensor:
    """``[B]``: ``g_n · g``, summed over parameters as ``sample_dots`` does."""
    dots = list(step.batch_dot().values())
    if not dots:
        device = step.params[0][1].device
        return torch.zeros(step.sample_count(), dtype=torch.float64, device=device)
    return stack64(dots).sum(0)


#: Why α cannot use the loss graph: the per-sample losses given are detached.
_DETACHED = (
    "alpha's per-sample slopes then come from differentiating the per-sample "
    "losses, which were passed detached: pass losses= attached to the graph "
    "(e.g. F.cross_entropy(out, y, reduction='none'), not .detach() or .item())"
)


def _graph_slopes(step: StepView, losses: Tensor, rows: Sequence[Tensor]) -> Tensor:
    """``_engine_slopes`` by differentiating the loss graph twice (before backward).

    One ``SampleJacobian`` per step, shared by the end of α(t−1), the start of
    α(t) and every instance.
    """
    params: list[Tensor] = [p for _, p in step.params]
    jac = step.cache.get("sample_jacobian")
    if not isinstance(jac, SampleJacobian):
        with torch.enable_grad():
            jac = step.cache["sample_jacobian"] = SampleJacobian(losses, params)
    out = [jac.project(_as_params(row, params)).double() for row in rows]
    if not out:
        return torch.zeros((0, losses.numel()), dtype=torch.float64)
    return torch.stack(out)


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
    after the backward pass (engines.md: "g_n·d: hook engine"; one pass over
    each layer for all directions). When the engine does not cover every
    parameter (``on_engine``), or a step finds it cannot (a loss term on the
    parameters: that step's α is None with the reason), α differentiates the
    loss graph twice before the backward pass instead (``SampleJacobian``).
    Under train-mode BatchNorm per-sample losses are undefined, and so is α.
    """

    name = "alpha"
    #: The per-sample engine path; ``_use_graph`` switches to ``_GRAPH_NEEDS``.
    needs: ClassVar[frozenset[Need]] = frozenset(
        {Need.PARAMS, Need.GRAD, Need.LOSSES, Need.OPTIMIZER, Need.BATCH_DOT}
    )
    cost = Cost.MODERATE
    preset = "economy"  # Cockpit's configuration membership
    kind = Kind.SCALAR
    phase = Phase.AFTER_BACKWARD
    two_step = True
    #: Its per-sample pass computes ``batch_dot`` for the gradient tests too.
    leads = True
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
        # Model-sized buffers of the last step, refilled: a fresh allocation of
        # that size costs more than the pass that fills it (first-touch faults).
        self._spare: list[Tensor] = []  # θ_t of a finished start
        self._d: Tensor | None = None  # θ_{t+1} − θ_t, flat
        # Between ``local`` and ``reading``: α(t−1)'s end, α(t)'s start.
        self._ending: tuple[_Start, Tensor, float] | None = None
        self._begun: tuple[
            int, list[Tensor], Tensor, list[Tensor], tuple[Tensor, float] | None
        ] = (
            -1,
            [],
            torch.empty(0),
            [],
            None,
        )
        self._expects = False

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
        # One rounded subtraction per entry, in at least float32 (bf16 models).
        dtype = start.basis.dtype
        sizes = [p.numel() for p in params]
        d = self._d
        if d is None or (d.shape, d.dtype, d.device) != (
            start.basis.shape[1:],
            dtype,
            start.basis.device,
        ):
            d = self._d = start.basis.new_empty(sum(sizes))
        for p, t, part in zip(params, start.theta, torch.split(d, sizes), strict=True):
            if p.dtype == t.dtype == dtype:  # subtracted straight into place
                torch.sub(p.detach().reshape(-1), t.reshape(-1), out=part)
            else:
                part.copy_((p.detach().to(dtype) - t.to(dtype)).reshape(-1))
        self._spare = start.theta
        if start.expected is not None and _same(d, start.expected[0]):
            _, coef, resid = start.expected
            tau = float(coef.double().norm())
            if tau == 0.0 or resid > self.span_rtol:
                self._done[start.step] = None
                return None
            start.unit = d.div_(tau)  # one pass, not one per basis row
            return start, coef, tau
        coef = start.basis @ d  # [K]
        d_norm = d.norm()
        # d − coefᵀ·basis in one fused pass over the basis, in place.
        d.addmv_(start.basis.T, coef, alpha=-1)
        # One host synchronisation for the three norms.
        tau, left, size = torch.stack(
            [coef.double().norm(), d.norm().double(), d_norm.double()]
        ).tolist()
        resid = left / max(size, 1e-300)
        if tau == 0.0 or resid > self.span_rtol:
            self._done[start.step] = None
            return None
        return start, coef, tau

    def _finish(
        self,
        end: tuple[_Start, Tensor, float],
        value1: float,
        sums: dict[str, Tensor],
    ) -> None:
        """α(t) from its start and this step's sums: losses, slopes along ``u``."""
        start, coef, tau = end
        p1, p2, n0 = start.proj
        c = coef.double().to(p1.device) / tau
        mean0 = float(c @ p1) / n0
        var0 = (
            max(float(c @ p2 @ c) - n0 * mean0 * mean0, 0.0) / (n0 - 1)
            if n0 > 1
            else math.nan
        )
        n1 = float(sums["n"])
        s1, v1 = _mean_var(sums["slopes"].tolist(), n1)
        _, var1 = _mean_var(sums["losses"].tolist(), n1)
        self._done[start.step] = fit_alpha(
            tau, (start.value, value1), (mean0, s1), (start.var_value, var1), (var0, v1)
        )

    @staticmethod
    def _direction(end: tuple[_Start, Tensor, float]) -> Tensor:
        """The applied update's unit direction ``u`` [D], in the basis."""
        start, coef, tau = end
        return (coef / tau) @ start.basis if start.unit is None else start.unit

    def _snapshot(self, params: list[Tensor]) -> list[Tensor]:
        """θ_t, copied into the buffers of a finished start where they fit."""
        spare, self._spare = self._spare, []
        if len(spare) == len(params) and all(
            s.shape == p.shape and s.dtype == p.dtype and s.device == p.device
            for s, p in zip(spare, params, strict=True)
        ):
            torch._foreach_copy_(spare, [p.detach() for p in params])
            return spare
        return [p.detach().clone() for p in params]

    @override
    def on_engine(self, complete: bool) -> None:
        """Without an engine serving every parameter, use the loss graph."""
        if not complete:
            self._use_graph()

    def _use_graph(self) -> None:
        # A per-instance choice of engine: instance attributes shadow the class's.
        self.phase = Phase.BEFORE_BACKWARD  # type: ignore[misc]
        self.needs = _GRAPH_NEEDS  # type: ignore[misc]

    def _slopes(
        self, step: StepView, losses: Tensor, rows: Sequence[Tensor], grad: bool
    ) -> Tensor:
        """``[K, B]`` per-sample slopes along ``rows``, from either engine.

        ``grad`` (engine only): ``batch_dot`` joins the pass (``_along_grad``).
        """
        if self.phase is Phase.BEFORE_BACKWARD:
            if not losses.requires_grad:
                raise EngineError(_DETACHED)
            return _graph_slopes(step, losses, rows)
        try:
            return _engine_slopes(step, rows, grad)
        except EngineError as exc:
            if step.mixes is None and not losses.requires_grad:
                # The other engine differentiates the losses: say what it needs.
                raise EngineError(f"{exc}; {_DETACHED}") from exc
            if step.mixes is None:
                # The engine cannot serve this model after all (found at a
                # step): this α is None with the reason, later ones use the graph.
                self._use_graph()
            raise

    @override
    def advance(self, step: StepView) -> None:
        """Finish step t's α with the batch of this step at θ_{t+1}."""
        sums = self.advance_local(step)
        if sums is not None:
            self.advance_reading(step, sums)

    @override
    def advance_local(self, step: StepView) -> dict[str, Tensor] | None:
        """This step's sums for step t's α: losses and slopes along ``u``."""
        end = self._end(step)
        self._ending = end
        if end is None:
            return None
        try:
            losses = step.sample_losses()  # undefined losses: say so before any work
            slopes = self._slopes(step, losses, [self._direction(end)], False)
            return self._end_sums(losses, slopes[0])
        except Exception:
            self._done[end[0].step] = None  # undefined at t+1: so is α(t)
            self._ending = None
            raise

    @override
    def advance_reading(self, step: StepView, sums: dict[str, Tensor]) -> None:
        end, self._ending = self._ending, None
        if end is not None:
            self._finish(end, self._value(step, sums), sums)

    @staticmethod
    def _end_sums(losses: Tensor, slopes: Tensor | None) -> dict[str, Tensor]:
        """Sample count and moments of the losses (and of the slopes along ``u``)."""
        sums = {
            "n": torch.tensor(float(losses.numel()), dtype=torch.float64),
            "losses": _moments(losses),
        }
        if slopes is not None:
            sums["slopes"] = _moments(slopes)
        return sums

    @staticmethod
    def _value(step: StepView, sums: dict[str, Tensor]) -> float:
        """The step's loss: the one passed, else the mean of the per-sample losses."""
        if step.loss is not None:
            return float(step.loss.detach())
        return float(sums["losses"][0]) / float(sums["n"])

    def _seen(self, step: StepView, loss: Tensor, params: list[Tensor]) -> list[Tensor]:
        """The gradient the optimizer will see (accumulation included)."""
        if self.phase is Phase.AFTER_BACKWARD:
            step.require(Need.GRAD)
            return [
                torch.zeros_like(p) if g is None else step.unscaled(g.detach())
                for p, g in zip(params, map(dense_grad, params), strict=True)
            ]
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return [
            (torch.zeros_like(p) if g is None else g.detach().to_dense())
            + (torch.zeros_like(p) if acc is None else step.unscaled(acc.detach()))
            for p, g, acc in zip(params, grads, map(dense_grad, params), strict=True)
        ]

    @override
    def compute(self, step: StepView) -> Reading:
        """Starts step t's α (finishing t−1's first); the reading comes later."""
        sums = self.local(step)
        return None if sums is None else self.reading(step, sums)

    @override
    def local(self, step: StepView) -> dict[str, Tensor] | None:
        """Sums over this step's samples for α(t−1)'s end and α(t)'s start.

        Both need per-sample slopes at this step: the finished reading's along
        ``u``, the new start's along its basis; one pass over the engine's
        per-sample gradients serves all of them.
        """
        end = self._end(step)
        self._ending = end
        try:
            params: list[Tensor] = [p for _, p in step.params]
            step.require(Need.PARAMS)
            losses = step.sample_losses()
            loss = losses.mean() if step.loss is None else step.loss
            seen = self._seen(step, loss, params)
            opt = step.optimizer()
            candidates = update_directions(opt, params, seen)
            basis, gnorm, last = orthonormal_rows(candidates)
            # SGD (one group) puts the gradient first, so the first row is
            # g/‖g‖: its slopes are ``batch_dot``'s (the gradient tests' too)
            # over ‖g‖, not one more direction for the per-sample pass.
            from_grad = (
                self.phase is Phase.AFTER_BACKWARD
                and step.local is None  # per-rank DDP: batch_dot's g is not .grad
                and gnorm > 0.0
                and (
                    opt is None
                    or (len(opt.param_groups) == 1 and update_in_span(opt, params))
                )
            )
            rows = list(basis[1:] if from_grad else basis)
            if end is not None:
                rows.insert(0, self._direction(end))
            slopes = self._slopes(step, losses, rows, from_grad)
            if from_grad:
                along = (_along_grad(step) / gnorm)[None]
                k = 0 if end is None else 1
                slopes = torch.cat([slopes[:k], along, slopes[k:]])
        except Exception:
            if end is not None:
                self._done[end[0].step] = None  # undefined at t+1: so is α(t)
            self._ending = None
            raise
        sums = self._end_sums(losses, slopes[0] if end is not None else None)
        proj = (slopes[1:] if end is not None else slopes).double()  # [K, B]
        sums["p1"], sums["p2"] = proj.sum(1), proj @ proj.T
        self._begun = (step.step, self._snapshot(params), basis, candidates, last)
        self._expects = from_grad and opt is not None and last is not None
        return sums

    @override
    def reading(self, step: StepView, sums: dict[str, Tensor]) -> Reading:
        value = self._value(step, sums)
        end, self._ending = self._ending, None
        if end is not None:
            self._finish(end, value, sums)
        at, theta, basis, candidates, last = self._begun
        n = float(sums["n"])
        _, var0 = _mean_var(sums["losses"].tolist(), n)
        self._start = _Start(at, theta, basis, (sums["p1"], sums["p2"], n), value, var0)
        if self._expects and last is not None:
            # SGD: the last candidate is the predicted update (checked at _end).
            self._start.expected = (candidates[-1], *last)
        return None
