"""Learning rate of each optimizer parameter group."""

from __future__ import annotations

from typing import ClassVar

from typing_extensions import override

from glasscockpit.agent.instruments.base import Cost, Instrument, Leaf, Reading
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


class Lr(Instrument):
    """The learning rate(s) the optimizer will apply at this step."""

    name = "lr"
    needs: ClassVar[frozenset[Need]] = frozenset()
    cost = Cost.CHEAP
    preset = "economy"
    kind = Kind.PER_LAYER
    panel = PanelSpec(
        title="Learning rate",
        y_label="lr",
        log_y=True,
        group="step size",
        help="Learning rate per parameter group, as read from the optimizer.",
    )

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"total": lr of group 0, "group i": lr of group i}, or None."""
        if not step.lrs:
            return None
        out: dict[str, Leaf] = {"total": float(step.lrs[0])}
        if len(step.lrs) > 1:
            out.update({f"group {i}": float(lr) for i, lr in enumerate(step.lrs)})
        return out
