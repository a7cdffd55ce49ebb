"""Largest Hessian eigenvalue of the mini-batch loss, by warm-started Lanczos."""

from __future__ import annotations

import logging
import time
from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from glasscockpit.agent.curvature.hessian_products import lanczos_top, rademacher
from glasscockpit.agent.instruments.base import Cost, Instrument, Phase, Reading
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.schedules import Schedule, allowance
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec

log = logging.getLogger("glasscockpit.agent")


class HessMaxEV(Instrument):
    """λ_max(∇²L_B(θ_t)), the largest *algebraic* eigenvalue, sign kept.

    Lanczos on double-backward Hessian-vector products, run before the user's
    backward pass; it stops when the top Ritz pair's residual is at most ``rtol``
    times the largest |Ritz value|. The start vector is the previous step's Ritz
    vector plus a little noise from a private generator (seed ``seed``), so the
    training run's RNG is untouched.

    Args:
        rtol: relative residual tolerance (default 1e-3).
        max_iter: at most this many Hessian-vector products per reading.
        seed: seed of the private generator.
    """

    name = "hess_max_ev"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.HVP})
    cost = Cost.EXPENSIVE
    preset = "full"  # Cockpit's configuration membership
    kind = Kind.SCALAR
    phase = Phase.BEFORE_BACKWARD
    panel = PanelSpec(
        title="Largest Hessian eigenvalue",
        y_label="λ_max",
        group="curvature",
        help="Sharpness along the steepest direction; for gradient descent "
        "lr·λ_max > 2 diverges along it. Negative values mean no positive "
        "curvature in this batch.",
    )

    def __init__(
        self,
        schedule: Schedule | None = None,
        label: str | None = None,
        *,
        rtol: float = 1e-3,
        max_iter: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(schedule, label)
        self.rtol = rtol
        self.max_iter = max_iter
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._warm: Tensor | None = None
        #: Matrix-vector products used by the last reading, for benchmarks.
        self.last_matvecs = 0

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device).manual_seed(self.seed)
        return self._generators[device]

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns λ_max as a float (negative values are kept)."""
        began = time.perf_counter()
        op = step.hessian()
        for p in op.params:
            self._generator(p.device)
        noise = torch.cat(
            [v.reshape(-1) for v in rademacher(op.params, self._generators)]
        )
        start = noise
        if self._warm is not None and self._warm.shape == noise.shape:
            # Warm start: last Ritz vector, perturbed so a new top direction that is
            # orthogonal to it is still found.
            start = self._warm + 0.1 * noise / noise.norm()
        seconds = allowance(self.schedule)
        if seconds is not None:  # what building the operator took comes off
            seconds = max(seconds - (time.perf_counter() - began), 0.0)
        top = lanczos_top(op.flat_matvec, start, self.rtol, self.max_iter, seconds)
        self.note = None
        if not top.converged and seconds is not None:
            # The residual bounds the distance to an eigenvalue of the batch's
            # Hessian; the warm start carries the work on to the next reading.
            self.note = (
                f"estimate: Lanczos stopped by the overhead budget after "
                f"{top.matvecs} products; an eigenvalue lies within "
                f"{top.residual:.2g}·|λ| of the reading (relative residual)"
            )
            self._warm = top.vector
            self.last_matvecs = top.matvecs
            return top.value
        self._warm = top.vector
        self.last_matvecs = top.matvecs
        if not top.converged:
            log.warning(
                "glasscockpit: [Step %d | %s] Lanczos stopped after %d products at "
                "relative residual %.2g > rtol %.2g",
                step.step,
                self.key,
                top.matvecs,
                top.residual,
                self.rtol,
            )
        return top.value
