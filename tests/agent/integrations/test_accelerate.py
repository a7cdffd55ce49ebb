"""The Accelerate helper reads like the hand-written loop on the same data and seed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from glasscockpit.agent.integrations.accelerate import attach, micro_batch
from tests.agent.integrations.loop import (
    NAMES,
    assert_readings_equal,
    hand_written,
    instruments,
    readings_and_errors,
)

accelerate = pytest.importorskip("accelerate")
STEPS = 3


@pytest.fixture(autouse=True)
def fresh_state() -> Iterator[None]:
    """Accelerate keeps its settings in process-wide singletons."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))


def data(batches: int) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batches * 8, 10, generator=g)
    y = torch.randint(0, 3, (batches * 8,), generator=g)
    return list(zip(x.split(8), y.split(8), strict=True))


def loss_fn(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    losses = F.cross_entropy(model(x), y, reduction="none")
    return losses.mean(), losses


def reference(batches, accumulate: int = 1, clip: float | None = 0.01):
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return hand_written(model, opt, batches, loss_fn, accumulate=accumulate, clip=clip)


def test_accelerate_loop_reads_like_the_hand_written_loop(torch_threads) -> None:
    batches = data(STEPS)
    accelerator = accelerate.Accelerator(cpu=True)
    model = net()
    model, opt = accelerator.prepare(
        model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    )
    # What a Trainer callback receives, and what crashed Cockpit before.
    assert type(opt).__name__ == "AcceleratedOptimizer"
    cockpit = attach(
        accelerator, model, opt, server=None, instruments=instruments(), budget=None
    )
    for step, (x, y) in enumerate(batches):
        loss, losses = loss_fn(model, x, y)
        with cockpit.step(step, loss=loss, losses=losses):
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 0.01)
        opt.step()
        opt.zero_grad()
    cockpit.close()
    got, errors = readings_and_errors(cockpit)
    want, want_errors = reference(batches)
    assert errors == want_errors == []
    assert_readings_equal(got, want, range(STEPS - 1))
    assert_readings_equal(got, want, [STEPS - 1], [n for n in NAMES if n != "alpha"])
    assert cockpit.hello.meta["config"]["mixed_precision"] == "no"
    assert cockpit.hello.meta["optimizer"] == "SGD"


def test_micro_batches_read_like_the_hand_written_accumulation(torch_threads):
    batches = data(2 * STEPS)
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = net()
    model, opt = accelerator.prepare(
        model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    )
    cockpit = attach(
        accelerator, model, opt, server=None, instruments=instruments(), budget=None
    )
    for x, y in batches:
        with accelerator.accumulate(model):
            loss, losses = loss_fn(model, x, y)
            with micro_batch(cockpit, accelerator, loss, losses):
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 0.01)
            opt.step()
            opt.zero_grad()
    cockpit.close()
    got, errors = readings_and_errors(cockpit)
    want, want_errors = reference(batches, accumulate=2)
    assert errors == want_errors == []
    assert_readings_equal(got, want, range(STEPS - 1))
    assert cockpit.hello.meta["config"]["gradient_accumulation_steps"] == 2


def test_bf16_mixed_precision_reads_like_autocast(torch_threads) -> None:
    batches = data(STEPS)
    accelerator = accelerate.Accelerator(cpu=True, mixed_precision="bf16")
    model = net()
    model, opt = accelerator.prepare(
        model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    )
    names = ["loss", "grad_norm", "norm_test", "inner_test", "grad_hist_1d"]
    cockpit = attach(
        accelerator, model, opt, server=None, instruments=instruments(names),
        budget=None,
    )  # fmt: skip
    for step, (x, y) in enumerate(batches):
        loss, losses = loss_fn(model, x, y)
        with cockpit.step(step, loss=loss, losses=losses):
            accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
    cockpit.close()
    got, errors = readings_and_errors(cockpit)

    def autocast_loss(m: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
        losses = F.cross_entropy(out.float(), y, reduction="none")
        return losses.mean(), losses

    plain = net()
    want, want_errors = hand_written(
        plain, torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9), batches,
        autocast_loss, names=names,
    )  # fmt: skip
    assert errors == want_errors == []
    assert cockpit.hello.meta["config"]["mixed_precision"] == "bf16"
    assert_readings_equal(got, want, range(STEPS), names)
