"""Distance of the parameters from where they were when monitoring started."""

from __future__ import annotations

from typing import ClassVar

import torch
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


class Distance(Instrument):
    """‖θ_t − θ_0‖₂ per parameter tensor and for the whole network.

    θ_0 is copied when the Cockpit is constructed (not at step 0), so resumed
    runs and step counters that start at 1 work.
    """

    name = "distance"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.PARAMS, Need.INIT_PARAMS})
    cost = Cost.CHEAP
    preset = "economy"  # Cockpit's configuration membership
    kind = Kind.PER_LAYER
    panel = PanelSpec(
        title="Distance from initialisation",
        y_label="‖θ_t − θ_0‖₂",
        group="step size",
        help="How far training has moved the weights; steady growth is normal, "
        "explosive growth or growth without loss decrease suggests a too large "
        "learning rate or weight decay misconfigured.",
    )

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total": [], name: [] per parameter}, scalar tensors."""
        init = step.init_params()
        now = step.param_data()
        moved = torch._foreach_sub([p for _, p in now], [t for _, t in init])
        return norms_and_total([(n, d) for (n, _), d in zip(now, moved, strict=True)])
