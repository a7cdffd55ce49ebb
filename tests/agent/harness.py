"""Run instruments through a real Cockpit on one training step of a problem."""

from __future__ import annotations

from typing import Any

import torch

from glasscockpit.agent import Cockpit
from glasscockpit.agent.instruments import Instrument
from tests.agent.problems import Problem


def run_step(
    problem: Problem,
    instruments: list[Instrument],
    seed: int = 0,
    optimizer: str = "sgd",
    lr: float = 0.1,
) -> dict[str, Any]:
    """Readings of ``instruments`` at step 0 (``fail_mode="raise"``)."""
    model, x, y = problem.make(seed)
    opt = make_optimizer(model, optimizer, lr)
    cockpit = Cockpit(
        model, opt, server=None, run="t", instruments=instruments, fail_mode="raise"
    )
    opt.zero_grad()
    out = model(x)
    loss = problem.loss_fn(out, y)
    losses = None
    try:  # per-sample losses for Alpha, [B]
        per = problem.loss_fn(out, y, reduction="none")  # type: ignore[call-arg]
        losses = per.reshape(per.shape[0], -1).mean(dim=1)
    except TypeError:  # a loss without a reduction argument
        pass
    with cockpit.step(0, loss=loss, losses=losses):
        loss.backward()
    cockpit.close()
    return cockpit.readings[0]


def make_optimizer(
    model: torch.nn.Module, kind: str, lr: float
) -> torch.optim.Optimizer:
    """SGD, SGD with momentum, or Adam."""
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    if kind == "momentum":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    raise ValueError(kind)
