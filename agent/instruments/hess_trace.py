"""Trace of the Hessian of the mini-batch loss, per parameter and total."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from typing_extensions import override

from glasscockpit.agent.curvature import hutchinson
from glasscockpit.agent.instruments.base import Cost, Instrument, Phase, Reading
from glasscockpit.agent.needs import Need
from glasscockpit.agent.schedules import Schedule
from glasscockpit.agent.step import StepView
from glasscockpit.protocol import Kind, PanelSpec

Method = Literal["auto", "exact", "hutchinson"]


class HessTrace(Instrument):
    """tr(∇²L_B(θ_t)) per parameter block and in total.

    ``method="auto"`` (default) sums BackPACK's exact ``DiagHessian`` where it
    applies (``backpack.extend``-ed model and loss module, supported layers) and
    otherwise uses Hutchinson's estimator with ``probes`` Rademacher probes from a
    private generator (seed ``seed``) on Hessian-vector products, which works for
    any model autograd can differentiate twice. "stderr" is the standard error of
    the total; it is None (undefined) for the exact BackPACK reading.

    Args:
        method: "auto", "exact" (BackPACK or fail) or "hutchinson".
        probes: Hessian-vector products per Hutchinson reading (default 20).
        seed: seed of the private generator.
    """

    name = "hess_trace"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.HVP, Need.DIAG_HESSIAN})
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
        method: Method = "auto",
        probes: int = 20,
        seed: int = 0,
    ) -> None:
        super().__init__(schedule, label)
        if probes < 1:
            raise ValueError(f"HessTrace needs probes >= 1, got {probes!r}")
        if method not in ("auto", "exact", "hutchinson"):
            raise ValueError(
                f"HessTrace method must be 'auto', 'exact' or 'hutchinson', "
                f"got {method!r}"
            )
        self.method = method
        self.probes = probes
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        #: False once BackPACK failed in "auto": a model stays (un)extended, so
        #: later steps skip the wasted extra backward.
        self._try_exact = method != "hutchinson"

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total", "stderr", name per parameter}; float64 scalars."""
        names = [name for name, _ in step.params]
        if self._try_exact:
            diag = step.diag_hessian()
            if diag is not None:
                per_param = {
                    n: d.double().sum() for n, d in zip(names, diag, strict=True)
                }
                total = torch.stack(list(per_param.values())).sum()
                return {"total": total, "stderr": None, **per_param}
            self._try_exact = self.method == "exact"
            if self.method == "exact":
                raise RuntimeError(
                    "BackPACK's DiagHessian does not apply: extend the model and the "
                    "loss module with backpack.extend before the forward pass, or use "
                    "method='auto'/'hutchinson'"
                )
        op = step.hessian()
        for p in op.params:
            if p.device not in self._generators:
                gen = torch.Generator(p.device).manual_seed(self.seed)
                self._generators[p.device] = gen
        est = hutchinson(op, self.probes, self._generators)
        per_param = dict(zip(names, est.per_param, strict=True))
        return {"total": est.total, "stderr": est.stderr, **per_param}
