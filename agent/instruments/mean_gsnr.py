"""Mean gradient signal-to-noise ratio (Liu et al. 2020), per parameter and total."""

from __future__ import annotations

from typing import ClassVar

import torch
from typing_extensions import override

from glasscockpit.agent.instruments.base import Cost, Guarded, Instrument, Leaf, Reading
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.schedules import Schedule
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


class MeanGSNR(Instrument):
    """``mean_j g_j² / (Σ_n g_nj²/B − g_j² + ε)``, the population-variance GSNR.

    Args:
        epsilon: regulariser of the variance. With ``relative=True`` (default) it
            is scaled by the mean second moment ``mean_j Σ_n g_nj²/B``, so the
            reading does not depend on the gradient's scale; ``relative=False,
            epsilon=1e-5`` is Cockpit's absolute ε.
    """

    name = "mean_gsnr"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAD, Need.SUM_GRAD_SQUARED})
    cost = Cost.MODERATE
    kind = Kind.PER_LAYER
    panel = PanelSpec(
        title="Mean GSNR",
        y_label="GSNR",
        log_y=True,
        group="auxiliary",
        help="How much the samples agree on each gradient entry, averaged; it "
        "usually decays as the model fits the data (≈ 1/B for pure noise).",
        smooth=True,
    )

    def __init__(
        self,
        schedule: Schedule | None = None,
        label: str | None = None,
        *,
        epsilon: float = 1e-5,
        relative: bool = True,
    ) -> None:
        super().__init__(schedule, label)
        self.epsilon, self.relative = epsilon, relative

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total": mean over all entries, name: mean over that tensor}."""
        b = step.sample_count()
        grads = dict(step.grads())
        sgs = {n: v for n, v in step.sum_grad_squared().items() if n in grads}
        if not sgs:
            return None
        moment = {n: v.double() / b for n, v in sgs.items()}  # Σ_n g_n² / B
        signal = {n: grads[n].double().square() for n in sgs}
        eps = torch.tensor(self.epsilon, dtype=torch.float64)
        if self.relative:
            all_m = torch.cat([m.reshape(-1) for m in moment.values()])
            eps = eps.to(all_m.device) * all_m.mean()
        ratio = {n: signal[n] / (moment[n] - signal[n] + eps) for n in sgs}
        valid = (eps > 0) & (b > 1)
        out: dict[str, Leaf] = {
            "total": Guarded.of(
                torch.cat([r.reshape(-1) for r in ratio.values()]).mean(), valid
            )
        }
        out.update({n: Guarded.of(r.mean(), valid) for n, r in ratio.items()})
        return out
