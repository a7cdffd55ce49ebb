"""CABS (Balles et al. 2017): the batch size suggested for the current learning rate."""

from __future__ import annotations

from typing import ClassVar

from typing_extensions import override

from glasscockpit.agent.instruments.base import (
    Cost,
    Guarded,
    Instrument,
    Leaf,
    Reading,
    total,
)
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


class CABS(Instrument):
    """``Σ_l lr_l · tr Σ̂_l / L`` with the population covariance ``Σ̂`` of the g_n.

    Each parameter uses the learning rate of its own optimizer group, so any
    optimizer and any number of groups work (Cockpit accepts only plain SGD with
    one learning rate); for adaptive optimizers it is the SGD rule evaluated at
    their nominal learning rate. Undefined for ``B < 2`` or a loss ≤ 0.
    """

    name = "cabs"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAD, Need.SUM_GRAD_SQUARED})
    cost = Cost.MODERATE
    kind = Kind.PER_LAYER
    panel = PanelSpec(
        title="CABS batch size",
        y_label="B_CABS",
        log_y=True,
        group="auxiliary",
        help="Batch size that the coupled-adaptive-batch-size rule suggests at the "
        "current learning rate; growth means rising noise relative to the loss.",
        smooth=True,
    )

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total": B_CABS, name: that parameter's share}."""
        if step.loss is None:
            return None
        b = step.sample_count()
        grads = dict(step.grads())
        sgs = step.sum_grad_squared()
        names = [n for n in sgs if n in grads and n in step.param_lrs]
        if not names:
            return None
        loss = step.loss.detach().double()
        share = {
            n: step.param_lrs[n]
            * (sgs[n].double().sum() / b - grads[n].double().square().sum())
            / loss
            for n in names
        }
        valid = (loss > 0) & (b > 1)
        out: dict[str, Leaf] = {"total": Guarded.of(total(share.values()), valid)}
        out.update({n: Guarded.of(v, valid) for n, v in share.items()})
        return out
