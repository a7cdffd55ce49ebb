"""Length of the update the optimizer actually applied at a step."""

from __future__ import annotations

from typing import ClassVar

from typing_extensions import override

from glasscockpit.agent.instruments.base import (
    Cost,
    Instrument,
    Phase,
    Reading,
    norms_and_total,
)
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


class UpdateSize(Instrument):
    """‖θ_{t+1} − θ_t‖₂ per parameter tensor and for the whole network.

    Measured after ``optimizer.step()``, so momentum, weight decay, clipping,
    schedulers and any other in-place change between the steps are included.
    The last tracked step gets its value too (at ``close()`` at the latest).
    """

    name = "update_size"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.UPDATE})
    cost = Cost.CHEAP
    preset = "economy"  # Cockpit's configuration membership
    kind = Kind.PER_LAYER
    phase = Phase.AFTER_STEP
    panel = PanelSpec(
        title="Update size",
        y_label="‖θ_{t+1} − θ_t‖₂",
        log_y=True,
        group="step size",
        help="Length of each applied update; against the gradient norm it is the "
        "effective learning rate, sudden drops show schedule steps, spikes "
        "instability.",
    )

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total": [], name: [] per parameter}, scalar tensors."""
        return norms_and_total(step.update())
