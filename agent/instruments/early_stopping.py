"""Evidence-based early-stopping criterion (Mahsereci et al. 2017); stop when > 0."""

from __future__ import annotations

from typing import ClassVar

import torch
from typing_extensions import override

from glasscockpit.agent.instruments.base import Cost, Guarded, Instrument, Leaf, Reading
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.schedules import Schedule
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


class EarlyStopping(Instrument):
    """``1 − B · mean_j g_j² / (σ̂_j² + ε)`` with the unbiased per-entry variance σ̂².

    Works with any optimizer: the criterion reads only gradients.

    Args:
        epsilon: regulariser of σ̂². With ``relative=True`` (default) it is scaled
            by the mean second moment ``mean_j Σ_n g_nj²/B``; ``relative=False,
            epsilon=1e-5`` is Cockpit's absolute ε.
    """

    name = "early_stopping"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAD, Need.SUM_GRAD_SQUARED})
    cost = Cost.MODERATE
    kind = Kind.PER_LAYER
    panel = PanelSpec(
        title="Early-stopping criterion (EB)",
        y_label="EB",
        group="auxiliary",
        help="Above 0 the gradient is statistically indistinguishable from noise: "
        "a hint to stop without a validation set.",
        ref_lines=(0.0,),
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
        """Returns {"total": EB over all entries, name: EB of that tensor}."""
        b = step.sample_count()
        grads = dict(step.grads())
        sgs = {n: v.double() for n, v in step.sum_grad_squared().items() if n in grads}
        if not sgs:
            return None
        signal = {n: grads[n].double().square() for n in sgs}
        var = {n: (sgs[n] - b * signal[n]) / max(b - 1, 1) for n in sgs}
        eps = torch.tensor(self.epsilon, dtype=torch.float64)
        if self.relative:
            all_m = torch.cat([v.reshape(-1) for v in sgs.values()]) / b
            eps = eps.to(all_m.device) * all_m.mean()
        ratio = {n: signal[n] / (var[n] + eps) for n in sgs}
        valid = (eps > 0) & (b > 1)
        mean_all = torch.cat([r.reshape(-1) for r in ratio.values()]).mean()
        out: dict[str, Leaf] = {"total": Guarded.of(1 - b * mean_all, valid)}
        out.update({n: Guarded.of(1 - b * r.mean(), valid) for n, r in ratio.items()})
        return out
