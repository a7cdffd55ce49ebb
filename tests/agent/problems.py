"""Tiny seeded problems for instrument tests: model, batch and loss, on CPU."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812


@dataclass(frozen=True)
class Problem:
    """A model, one batch and a mean-reduced loss built from a seed."""

    name: str
    build: Callable[[], tuple[nn.Module, Tensor, Tensor]]
    loss_fn: Callable[[Tensor, Tensor], Tensor]

    def make(self, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
        """Fresh model and batch, identical for equal seeds."""
        torch.manual_seed(seed)
        return self.build()

    def __str__(self) -> str:
        return self.name


def _linear() -> tuple[nn.Module, Tensor, Tensor]:
    return nn.Linear(10, 5), torch.randn(6, 10), torch.randint(0, 5, (6,))


def _mlp() -> tuple[nn.Module, Tensor, Tensor]:
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 5))
    return model, torch.randn(8, 10), torch.randint(0, 5, (8,))


def _cnn() -> tuple[nn.Module, Tensor, Tensor]:
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4, 4),
    )
    return model, torch.randn(5, 2, 8, 8), torch.randint(0, 4, (5,))


def _conv1d() -> tuple[nn.Module, Tensor, Tensor]:
    model = nn.Sequential(
        nn.Conv1d(3, 4, 3, padding=1, groups=1),
        nn.ReLU(),
        nn.Conv1d(4, 4, 2, stride=2, groups=2),
        nn.Flatten(),
        nn.Linear(12, 3),
    )
    return model, torch.randn(6, 3, 6), torch.randint(0, 3, (6,))


def _regression() -> tuple[nn.Module, Tensor, Tensor]:
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    return model, torch.randn(7, 6), torch.randn(7, 3)


PROBLEMS: tuple[Problem, ...] = (
    Problem("linear", _linear, F.cross_entropy),
    Problem("mlp", _mlp, F.cross_entropy),
    Problem("cnn", _cnn, F.cross_entropy),
    Problem("conv1d", _conv1d, F.cross_entropy),
    Problem("mse", _regression, F.mse_loss),
)


def make_id(problem: Problem) -> str:
    """Readable test id."""
    return problem.name


BY_NAME: dict[str, Problem] = {p.name: p for p in PROBLEMS}
