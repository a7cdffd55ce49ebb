"""Mini-batch training loss."""

from __future__ import annotations

from typing import ClassVar

from typing_extensions import override

from glasscockpit.agent.engine.errors import EngineError
from glasscockpit.agent.instruments.base import Cost, Instrument, Reading
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


class Loss(Instrument):
    """The loss value passed to ``cockpit.step``; NaN/Inf are reported as they are."""

    name = "loss"
    needs: ClassVar[frozenset[Need]] = frozenset()
    cost = Cost.CHEAP
    preset = "economy"
    kind = Kind.SCALAR
    panel = PanelSpec(
        title="Mini-batch loss",
        y_label="loss",
        log_y=True,
        group="performance",
        help="Training loss per step; watch the trend, not single noisy values.",
        smooth=True,
    )

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns a scalar tensor; None with the reason when no loss was given."""
        if step.loss is None:
            raise EngineError(
                "no loss was given at this step: pass it as "
                "cockpit.step(step, loss=loss)"
            )
        return step.loss.detach()
