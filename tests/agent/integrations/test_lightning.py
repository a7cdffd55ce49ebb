"""The Lightning callback reads like the hand-written loop on the same data and seed."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader, TensorDataset

from glasscockpit.agent.instruments import PRESETS
from glasscockpit.agent.integrations.lightning import callback_class
from tests.agent.integrations.loop import (
    CURVATURE,
    NAMES,
    assert_readings_equal,
    epoch_metrics,
    hand_written,
    instruments,
    readings_and_errors,
)

pl = pytest.importorskip("pytorch_lightning")
pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
GlasscockpitCallback = callback_class("pytorch_lightning")

STEPS = 3


def loss_fn(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    losses = F.cross_entropy(model(x), y, reduction="none")
    return losses.mean(), losses


class Module(pl.LightningModule):
    def __init__(self, net: nn.Module, via_forward: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters({"lr": 0.1, "width": 16})
        self.net = net
        #: ``self(x)`` in training_step, else ``self.net(x)`` (the module's own
        #: forward never runs: the callback tells the engine of micro-batches).
        self.via_forward = via_forward

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        loss, losses = loss_fn(self if self.via_forward else self.net, *batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return {"loss": loss, "losses": losses}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self.net(x)
        self.log("val_loss", F.cross_entropy(out, y))
        self.log("val_acc", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def data(batches: int, size: int = 8) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batches * size, 10, generator=g)
    y = torch.randint(0, 3, (batches * size,), generator=g)
    return list(zip(x.split(size), y.split(size), strict=True))


def loader(batches: list[tuple[Tensor, Tensor]]) -> DataLoader[Any]:
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return DataLoader(TensorDataset(x, y), batch_size=batches[0][0].shape[0])


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))


class Plain(nn.Module):
    """The hand-written loop's model: the same net, under the same names."""

    def __init__(self) -> None:
        super().__init__()
        self.net = net()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def fit(
    batches,
    accumulate: int = 1,
    clip: float | None = None,
    names=NAMES,
    via_forward: bool = False,
    **trainer: Any,
):
    model = net()
    callback = GlasscockpitCallback(
        run="pl", server=None, instruments=instruments(names), budget=None
    )
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    t = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=clip,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer,
    )
    t.fit(Module(model, via_forward), loader(batches), loader(batches[:2]))
    return callback.cockpit, readings_and_errors(callback.cockpit)


@pytest.mark.parametrize(
    ("accumulate", "clip"), [(1, None), (1, 0.01), (2, 0.01)], ids=str
)
def test_lightning_reads_like_the_hand_written_loop(accumulate, clip, torch_threads):
    batches = data(STEPS * accumulate)
    model = Plain()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    want, want_errors = hand_written(
        model, opt, batches, loss_fn, accumulate=accumulate, clip=clip
    )
    cockpit, (got, errors) = fit(batches, accumulate, clip)
    assert errors == want_errors == []
    # Alpha's reading of the last step needs a next one.
    assert_readings_equal(got, want, range(STEPS - 1))
    assert_readings_equal(got, want, [STEPS - 1], [n for n in NAMES if n != "alpha"])
    config = cockpit.hello.meta["config"]
    assert config["accumulate_grad_batches"] == accumulate
    assert config["optimizer"] == "SGD"
    assert config["hparams"] == {"lr": 0.1, "width": 16}
    # Validation and training metrics became epoch metrics at the last step.
    logged = epoch_metrics(cockpit)
    assert set(logged) == {"epoch_loss", "epoch_accuracy"}
    assert set(logged["epoch_loss"]) == {"valid", "train"}
    assert 0.0 <= logged["epoch_accuracy"]["valid"] <= 1.0


def test_without_accumulation_curvature_reads_like_the_loop(torch_threads) -> None:
    # The step opens at the backward with the loss graph; TIC's GGN passes
    # start at the module's output (training_step calls self(x)).
    names = [c.name for c in PRESETS["full"]]
    batches = data(STEPS)
    model = Plain()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    want, want_errors = hand_written(model, opt, batches, loss_fn, names=names)
    _, (got, errors) = fit(batches, names=names, via_forward=True)
    assert errors == want_errors  # notes on the estimates
    assert_readings_equal(got, want, range(STEPS - 1), sorted(CURVATURE))


def test_with_accumulation_curvature_says_why_it_reads_nothing(torch_threads):
    _, (readings, errors) = fit(data(4), 2, names=sorted(CURVATURE))
    for name in CURVATURE:
        assert readings[0].get(name) is None
        assert "loss" in errors[0][name], errors[0][name]


def test_bf16_mixed_reads_like_autocast(torch_threads) -> None:
    names = ["loss", "grad_norm", "norm_test", "inner_test", "grad_hist_1d"]

    def autocast_loss(model: nn.Module, x: Tensor, y: Tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_fn(model, x, y)

    batches = data(STEPS)
    model = Plain()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    want, _ = hand_written(model, opt, batches, autocast_loss, names=names)
    cockpit, (got, errors) = fit(batches, precision="bf16-mixed")
    assert errors == []
    assert cockpit.hello.meta["config"]["precision"] == "bf16-mixed"
    assert_readings_equal(got, want, range(STEPS), names)


def test_a_lightning_run_reaches_a_live_server_with_its_config(torch_threads):
    """Real uvicorn + websocket: the run, its config and its epoch metrics."""
    import json
    import urllib.request

    from tests.conftest import free_port
    from tests.server.harness import live_server

    with live_server(free_port()) as server:
        callback = GlasscockpitCallback(run="pl-live", server=server.ws)
        t = pl.Trainer(
            accelerator="cpu", max_epochs=1, callbacks=[callback], logger=False,
            enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0,
        )  # fmt: skip
        batches = data(STEPS)
        t.fit(Module(net()), loader(batches), loader(batches[:1]))
        assert callback.cockpit.stats.dropped == 0
        with urllib.request.urlopen(f"{server.http}/v1/runs/pl-live", timeout=5) as r:
            run = json.loads(r.read())
        assert run["meta"]["config"]["hparams"] == {"lr": 0.1, "width": 16}
        assert run["status"] == "finished"
        base = f"{server.http}/v1/runs/pl-live/series"
        with urllib.request.urlopen(f"{base}/grad_norm", timeout=5) as r:
            assert json.loads(r.read())["step"] == list(range(STEPS))
        with urllib.request.urlopen(f"{base}/epoch_loss?key=valid", timeout=5) as r:
            assert json.loads(r.read())["step"] == [STEPS]


def test_cockpit_reads_through_a_lightning_optimizer(torch_threads) -> None:
    from glasscockpit.agent import Cockpit

    model = Plain()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    wrapped = pl.core.optimizer.LightningOptimizer(inner)
    cockpit = Cockpit(
        model, wrapped, server=None, instruments=["lr", "update_size"], budget=None
    )
    # Lightning's wrapper is an initialised copy of the optimizer sharing its
    # groups, state and hooks: either is the one the step updates.
    assert cockpit.optimizer.param_groups is inner.param_groups
    loss = loss_fn(model, *data(1)[0])[0]
    with cockpit.step(0, loss=loss):
        loss.backward()
    inner.step()  # Lightning steps the inner optimizer: the after-step hook runs
    assert float(cockpit.readings[0]["update_size"]["total"]) > 0  # before close
    cockpit.close()
