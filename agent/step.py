"""StepView: the read-only view of one tracked step that instruments compute from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from glasscockpit.agent.needs import Need


class UndeclaredNeedError(RuntimeError):
    """An instrument read step data it did not declare in ``needs``."""


@dataclass
class StepView:
    """What one step offers to instruments; accessors check declared needs."""

    step: int
    loss: Tensor | None
    params: Sequence[tuple[str, nn.Parameter]]
    lrs: Sequence[float]
    batch_size: int | None
    allowed: frozenset[Need] = frozenset(Need)

    def require(self, need: Need) -> None:
        """Raise ``UndeclaredNeedError`` unless ``need`` was declared."""
        if need not in self.allowed:
            raise UndeclaredNeedError(
                f"Step data {need.value!r} was read but not declared; "
                f"add Need.{need.name} to the instrument's needs"
            )

    def grads(self) -> list[tuple[str, Tensor]]:
        """(name, p.grad) for every tracked parameter with a gradient."""
        self.require(Need.GRAD)
        return [(n, p.grad) for n, p in self.params if p.grad is not None]

    def param_data(self) -> list[tuple[str, Tensor]]:
        """(name, p.detach()) of every tracked parameter, before the optimizer step."""
        self.require(Need.PARAMS)
        return [(n, p.detach()) for n, p in self.params]
