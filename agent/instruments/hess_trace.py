"""Trace of the Hessian of the mini-batch loss, per parameter and total."""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import torch
from torch import nn
from typing_extensions import override

from glasscockpit.agent.curvature.hessian_products import (
    TraceEstimate,
    hutchinson,
    t95,
)
from glasscockpit.agent.engine import EngineError
from glasscockpit.agent.engine.piecewise import not_piecewise_linear
from glasscockpit.agent.instruments.base import Cost, Instrument, Phase, Reading
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.schedules import Schedule, allowance
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec

Method = Literal["auto", "exact", "hutchinson"]


class HessTrace(Instrument):
    """tr(∇²L_B(θ_t)) per parameter block and in total.

    ``method="auto"`` (default) is exact where it can be: on ``nn.Sequential``
    models of linear layers and piecewise-linear activations (ReLU nets and CNNs,
    ``agent/engine/piecewise.py``) the Hessian diagonal is the GGN diagonal, which
    the hook engine computes exactly (shared with TIC, no ``backpack.extend``);
    else it sums BackPACK's exact ``DiagHessian`` where that applies
    (``backpack.extend``-ed model and loss module, supported layers); otherwise it
    uses Hutchinson's estimator with ``probes`` Rademacher probes from a private
    generator (seed ``seed``) on Hessian-vector products, which works for any
    model autograd can differentiate twice. "stderr" is the standard error of the
    total; it is None (undefined) for exact readings.

    Args:
        method: "auto", "exact" (the GGN diagonal or BackPACK, or fail) or
            "hutchinson".
        probes: Hessian-vector products per Hutchinson reading (default 20; on
            a default schedule fewer, at least 8, where the budget's allowance
            runs out; the note says how many and the 95 % interval).
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
        #: The model, when its Hessian diagonal is its GGN diagonal.
        self._piecewise: nn.Module | None = None

    @override
    def on_model(self, model: nn.Module) -> None:
        """Piecewise-linear ``nn.Sequential``: read the engine's GGN diagonal."""
        if self.method != "hutchinson" and not_piecewise_linear(model) is None:
            self._piecewise = model
            self.needs = self.needs | {Need.DIAG_GGN}  # type: ignore[misc]

    def _from_ggn(self, step: StepView) -> Reading:
        """The exact trace from the GGN diagonal, or None where it does not apply."""
        if self._piecewise is None or not_piecewise_linear(self._piecewise):
            return None  # e.g. a BatchNorm switched to train mode
        try:
            ggn = step.diag_ggn()
        except (EngineError, RuntimeError):
            return None  # a loss the engine cannot factor: BackPACK or Hutchinson
        names = [name for name, _ in step.params]
        if step.data.ggn_note is not None or set(ggn) != set(names):
            return None  # a Monte-Carlo estimate, or some parameters left out
        per_param = {n: ggn[n].double().sum() for n in names}
        total = torch.stack(list(per_param.values())).sum()
        return {"total": total, "stderr": None, **per_param}

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total", "stderr", name per parameter}; float64 scalars."""
        start = time.perf_counter()
        self.note = None
        names = [name for name, _ in step.params]
        exact = self._from_ggn(step)
        if exact is not None:
            return exact
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
                    "Neither the GGN diagonal (a piecewise-linear nn.Sequential) nor "
                    "BackPACK's DiagHessian applies: extend the model and the loss "
                    "module with backpack.extend before the forward pass, or use "
                    "method='auto'/'hutchinson'"
                )
        op = step.hessian()
        for p in op.params:
            if p.device not in self._generators:
                gen = torch.Generator(p.device).manual_seed(self.seed)
                self._generators[p.device] = gen
        seconds = allowance(self.schedule)
        if seconds is not None:  # what building the operator took comes off
            seconds = max(seconds - (time.perf_counter() - start), 0.0)
        est = hutchinson(op, self.probes, self._generators, seconds)
        self.note = _note(est)
        per_param = dict(zip(names, est.per_param, strict=True))
        return {"total": est.total, "stderr": est.stderr, **per_param}


def _note(est: TraceEstimate) -> str:
    """Which estimator, how many probes, and the 95 % interval of the total."""
    head = f"estimate: Hutchinson trace from {est.probes} Rademacher probes"
    if est.stderr is None:
        return head + ", no error estimate from one probe"
    se = float(est.stderr)
    half = t95(est.probes - 1) * se
    return (
        f"{head}; standard error {se:.3g}, 95 % interval ± {half:.3g} "
        f"(Student's t, {est.probes - 1} degrees of freedom)"
    )
