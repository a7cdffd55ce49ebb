"""Trace of the Hessian of the mini-batch loss, per parameter and total."""

from __future__ import annotations

from typing import ClassVar

import torch
from typing_extensions import override

from glasscockpit.agent.curvature import hutchinson
from glasscockpit.agent.instruments.base import Cost, Instrument, Phase, Reading
from glasscockpit.agent.needs import Need
from glasscockpit.agent.schedules import Schedule
from glasscockpit.agent.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


class HessTrace(Instrument):
    """tr(∇²L_B(θ_t)) by Hutchinson's estimator on Hessian-vector products.

    Architecture-agnostic (any model autograd can differentiate twice), unbiased
    per parameter block and in total; the reading carries the standard error of
    the total over the ``probes`` Rademacher probes (private generator, seed
    ``seed``). See docs/deviations-step-curvature.md for why this is not
    BackPACK's exact DiagHessian.

    Args:
        probes: Hessian-vector products per reading (default 20).
        seed: seed of the private generator.
    """

    name = "hess_trace"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.HVP})
    cost = Cost.EXPENSIVE
    preset = "business"  # Cockpit's configuration membership
    kind = Kind.PER_LAYER
    phase = Phase.BEFORE_BACKWARD
    panel = PanelSpec(
        title="Hessian trace",
        y_label="tr(H)",
        group="curvature",
        help="Total curvature (sum of eigenvalues); a rising trace means the "
        "optimizer enters sharper regions. 'stderr' is the estimate's standard "
        "error.",
    )

    def __init__(
        self,
        schedule: Schedule | None = None,
        label: str | None = None,
        *,
        probes: int = 20,
        seed: int = 0,
    ) -> None:
        super().__init__(schedule, label)
        if probes < 1:
            raise ValueError(f"HessTrace needs probes >= 1, got {probes!r}")
        self.probes = probes
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total", "stderr", name per parameter}; float64 scalar tensors."""
        op = step.hessian()
        for p in op.params:
            if p.device not in self._generators:
                gen = torch.Generator(p.device).manual_seed(self.seed)
                self._generators[p.device] = gen
        est = hutchinson(op, self.probes, self._generators)
        names = [name for name, _ in step.params]
        per_param = dict(zip(names, est.per_param, strict=True))
        return {"total": est.total, "stderr": est.stderr, **per_param}
