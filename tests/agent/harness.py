"""Run instruments through a real Cockpit on one training step of a problem."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F  # noqa: N812 - torch convention

from glasscockpit.agent import Cockpit
from glasscockpit.agent.instruments import Instrument
from tests.agent.problems import Problem

#: Where the agent runs in reference tests; references stay on the CPU in float64.
#: ``GLASSCOCKPIT_TEST_DEVICE=cuda pytest tests/agent`` on a GPU machine (tests that
#: build their own models still run on the CPU).
DEVICE = torch.device(os.environ.get("GLASSCOCKPIT_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda":  # cuDNN in float32 as on the CPU, not TF32 (~1e-3)
    torch.backends.cudnn.allow_tf32 = False


def make_on_device(
    problem: Problem, seed: int = 0
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """``problem.make(seed)`` built on the CPU (same numbers), moved to ``DEVICE``."""
    model, x, y = problem.make(seed)
    return model.to(DEVICE), x.to(DEVICE), y.to(DEVICE)


def run_step(
    problem: Problem,
    instruments: list[Instrument],
    seed: int = 0,
    optimizer: str = "sgd",
    lr: float = 0.1,
) -> dict[str, Any]:
    """Readings of ``instruments`` at step 0 (``fail_mode="raise"``)."""
    model, x, y = make_on_device(problem, seed)
    opt = make_optimizer(model, optimizer, lr)
    # The fixed cadences track every instrument at step 0; an overhead budget
    # would first measure costs (agent/lifecycle/budget.py).
    cockpit = Cockpit(
        model,
        opt,
        server=None,
        run="t",
        instruments=instruments,
        fail_mode="raise",
        budget=None,
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


def train_steps(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    instruments: list[Instrument],
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
) -> Cockpit:
    """``steps`` optimizer steps on ``batch(step)`` with per-sample losses, closed.

    The Cockpit gets ``model`` as given (wrapped or not) and no overhead budget;
    no instrument may have failed.
    """
    cockpit = Cockpit(model, opt, server=None, instruments=instruments, budget=None)
    for step in range(steps):
        x, y = batch(step)
        opt.zero_grad()
        losses = F.cross_entropy(model(x), y, reduction="none")
        with cockpit.step(step, loss=losses.mean(), losses=losses):
            losses.mean().backward()
        opt.step()
    cockpit.close()
    assert cockpit.disabled == {}
    return cockpit


def one_step(
    model: torch.nn.Module,
    instruments: list[Instrument],
    loss_of: Callable[[], torch.Tensor],
) -> tuple[dict[str, Any], dict[str, str]]:
    """Readings of step 0 (no optimizer) and the errors/notes of its frames.

    ``loss_of`` runs the forward pass after the Cockpit is attached (recorded).
    An instrument that fails reads None with its reason in the errors.
    """
    cockpit = Cockpit(model, None, server=None, instruments=instruments)
    loss = loss_of()
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    errors: dict[str, str] = {}
    for frame in cockpit.transport.frames:  # type: ignore[attr-defined]
        errors.update(getattr(frame, "errors", {}))
    return cockpit.readings[0], errors
