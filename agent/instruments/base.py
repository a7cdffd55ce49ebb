"""The instrument extension point: declarations as class attributes, one ``compute``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import IntEnum
from typing import TYPE_CHECKING, ClassVar, TypeAlias

from torch import Tensor

from glasscockpit.agent.schedules import Schedule, every, log_spaced
from glasscockpit.protocol import Kind, PanelSpec

if TYPE_CHECKING:
    from glasscockpit.agent.needs import Need
    from glasscockpit.agent.step import StepView

#: A reading before it leaves the device: a tensor (scalar or array), a float,
#: None (undefined at this step), or a mapping of names to those.
Leaf: TypeAlias = Tensor | float | None
Reading: TypeAlias = Leaf | dict[str, Leaf]


class Cost(IntEnum):
    """Rough price of an instrument; drives default schedules and presets."""

    CHEAP = 0
    MODERATE = 1
    EXPENSIVE = 2


def default_schedule(cost: Cost) -> Schedule:
    """Every step for cheap instruments, every 10 for moderate, log-spaced otherwise."""
    if cost is Cost.CHEAP:
        return every(1)
    if cost is Cost.MODERATE:
        return every(10)
    return log_spaced()


class Instrument(ABC):
    """One training diagnostic: what it needs, what it costs, how it is drawn."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[Need]]
    cost: ClassVar[Cost]
    kind: ClassVar[Kind]
    panel: ClassVar[PanelSpec]

    def __init__(
        self, schedule: Schedule | None = None, label: str | None = None
    ) -> None:
        self.schedule: Schedule = schedule or default_schedule(self.cost)
        #: Wire key of this instance; a label lets two instances of one class coexist.
        self.key = self.name if label is None else f"{self.name}:{label}"

    def is_due(self, step: int) -> bool:
        """Whether ``step`` should be tracked; asked before the forward pass."""
        return bool(self.schedule(step))

    @abstractmethod
    def compute(self, step: StepView) -> Reading:
        """Return this step's reading, on the training device; runs after backward."""
