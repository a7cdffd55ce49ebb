"""The overhead budget thins default schedules; explicit schedules stay as given."""

from __future__ import annotations

import math
import time
from typing import ClassVar

import pytest
import torch
from torch import nn

from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.instruments import Instrument
from glasscockpit.agent.instruments.base import Cost
from glasscockpit.agent.lifecycle.budget import allocate, nice_stride
from glasscockpit.agent.lifecycle.config import AgentConfig
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.schedules import auto, describe, every, log_spaced
from glasscockpit.protocol import Kind, PanelSpec

SLEEP = 0.05  # seconds: ≥ 5× any plain step of the tiny model below, even loaded


class Sleepy(Instrument):
    """An instrument whose compute costs a known, large amount of time."""

    name = "sleepy"
    needs: ClassVar[frozenset[Need]] = frozenset()
    cost = Cost.EXPENSIVE
    kind = Kind.SCALAR
    panel = PanelSpec(title="sleepy")

    def compute(self, step):  # type: ignore[no-untyped-def]
        time.sleep(SLEEP)
        return torch.tensor(float(step.step))


def test_nice_strides_round_up_to_1_2_5():
    assert [nice_stride(x) for x in (0.3, 1, 1.01, 2, 2.5, 7, 10, 11, 4999)] == [
        1,
        1,
        2,
        2,
        5,
        10,
        10,
        20,
        5000,
    ]
    assert nice_stride(math.inf) == nice_stride(1e12) == 10**6


def test_allocation_keeps_the_sum_within_budget_and_cheap_ones_every_step():
    costs = {"loss": 0.01, "norm": 0.02, "tests": 3.0, "hist": 30.0}
    strides = allocate(costs, budget=1.0)
    assert strides["loss"] == strides["norm"] == 1
    # What is left (0.97) is split equally between the two expensive ones.
    assert strides["tests"] == pytest.approx(3.0 / 0.485)
    assert strides["hist"] == pytest.approx(30.0 / 0.485)
    assert sum(c / strides[k] for k, c in costs.items()) == pytest.approx(1.0)
    # Rounding strides up to nice values only lowers the spend.
    nice = {k: nice_stride(v) for k, v in strides.items()}
    assert sum(c / nice[k] for k, c in costs.items()) <= 1.0
    assert allocate({"a": 1.0}, budget=0.0) == {"a": math.inf}


def test_auto_schedule_follows_its_cadence_until_a_stride_is_set():
    sched = auto(every(10), warmup=10)
    assert [s for s in range(30) if sched(s)] == [0, 10, 20]
    sched.stride = 5  # from the end of the warm-up on
    assert [s for s in range(30) if sched(s)] == [0, 10, 15, 20, 25]
    assert describe(sched) == "auto: every 10, then within the overhead budget"


def _train(cockpit: Cockpit, steps: int) -> list[int]:
    torch.manual_seed(0)
    model = cockpit.model
    x, y = torch.randn(32, 20), torch.randint(0, 4, (32,))
    opt = cockpit.optimizer
    assert opt is not None
    for step in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        with cockpit.step(step, loss=loss):
            loss.backward()
        opt.step()
    cockpit.close()
    return sorted(cockpit.readings)


def _model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def test_costly_default_instrument_is_thinned_explicit_one_is_not(torch_threads):
    model, opt = _model()
    sleepy, pinned = Sleepy(), Sleepy(schedule=every(50), label="pinned")
    cockpit = Cockpit(
        model, opt, server=None, run="t", instruments=["loss", sleepy, pinned]
    )
    _train(cockpit, 200)
    got = cockpit.readings
    tracked = [s for s, r in got.items() if "sleepy" in r]
    # Warm-up: the log-spaced cadence (steps 0-9); then 50 ms against a step of
    # well under 10 ms and a 5 % budget: a stride of at least 100.
    assert tracked[:10] == list(range(10))
    assert isinstance(sleepy.schedule, auto) and sleepy.schedule.stride is not None
    assert sleepy.schedule.stride >= 100
    assert all(s % sleepy.schedule.stride == 0 for s in tracked[10:])
    # The explicit schedule is never touched, even though it costs as much.
    assert [s for s, r in got.items() if "sleepy:pinned" in r] == [0, 50, 100, 150]
    # The cheap loss is thinned far less than the costly instrument.
    loss = cockpit.instruments[0].schedule
    assert isinstance(loss, auto) and loss.stride is not None
    assert loss.stride * 10 <= sleepy.schedule.stride


def test_budget_none_keeps_fixed_cadences(torch_threads):
    model, opt = _model()
    cockpit = Cockpit(
        model, opt, server=None, run="t", instruments=["loss", Sleepy()], budget=None
    )
    _train(cockpit, 40)
    readings = cockpit.readings
    assert sorted(readings) == list(range(40))  # loss: every step
    sleepy = [s for s in range(40) if log_spaced()(s)]  # its cost's cadence
    assert [s for s, r in readings.items() if "sleepy" in r] == sleepy


def test_every_step_schedules_are_left_alone(torch_threads):
    model, opt = _model()
    cockpit = Cockpit(
        model, opt, server=None, run="t", instruments=[Sleepy(schedule=always)]
    )
    assert cockpit._budget is None  # nothing to steer
    assert _train(cockpit, 3) == [0, 1, 2]


@pytest.mark.parametrize(
    ("raw", "want"), [("", 0.05), ("0.1", 0.1), ("none", None), ("0", None)]
)
def test_budget_from_the_environment(monkeypatch, raw, want):
    monkeypatch.setenv("GLASSCOCKPIT_BUDGET", raw)
    assert AgentConfig.from_env().budget == want


@pytest.mark.parametrize("raw", ["-1", "fast"])
def test_bad_budget_in_the_environment_is_a_clear_error(monkeypatch, raw):
    monkeypatch.setenv("GLASSCOCKPIT_BUDGET", raw)
    with pytest.raises(ValueError, match="GLASSCOCKPIT_BUDGET"):
        AgentConfig.from_env()
