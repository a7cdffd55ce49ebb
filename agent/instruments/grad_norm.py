"""Euclidean norm of the mini-batch gradient, per parameter and total."""

from __future__ import annotations

from typing import ClassVar

from typing_extensions import override

from glasscockpit.agent.instruments.base import (
    Cost,
    Instrument,
    Reading,
    norms_and_total,
)
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


class GradNorm(Instrument):
    """‖g‖₂ for each parameter tensor and for the whole network."""

    name = "grad_norm"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAD})
    cost = Cost.CHEAP
    preset = "economy"
    kind = Kind.PER_LAYER
    panel = PanelSpec(
        title="Gradient norm",
        y_label="‖g‖₂",
        log_y=True,
        group="gradients",
        help="Size of the mini-batch gradient; spikes warn of instability, "
        "a steady fall to ~0 of convergence or vanishing gradients.",
    )

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total": [], name: [] for each parameter}, scalar tensors."""
        return norms_and_total(step.grads())
