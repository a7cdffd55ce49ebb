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
from glasscockpit.agent.lifecycle.budget import OverheadBudget, allocate, nice_stride
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
    # No dense warm-up: one probe step once the plain step is known (step 2 on),
    # then 50 ms against a step of well under 10 ms and a 5 % budget: a stride
    # of at least 100.
    assert tracked[0] >= 2
    assert isinstance(sleepy.schedule, auto) and sleepy.schedule.stride is not None
    assert sleepy.schedule.stride >= 100
    stride, offset = sleepy.schedule.stride, sleepy.schedule.offset
    assert all(s % stride == offset for s in tracked[1:])
    assert len(tracked) <= 4
    # The explicit schedule is never touched, even though it costs as much.
    assert [s for s, r in got.items() if "sleepy:pinned" in r] == [0, 50, 100, 150]
    # The cheap loss runs from step 0 and is thinned far less.
    loss = cockpit.instruments[0].schedule
    assert 0 in got and "loss" in got[0]
    assert isinstance(loss, auto) and loss.stride is not None
    assert loss.stride * 10 <= sleepy.schedule.stride


def test_unmeasured_instruments_are_probed_one_per_step_after_step_1(torch_threads):
    model, opt = _model()
    a, b = Sleepy(label="a"), Sleepy(label="b")
    cockpit = Cockpit(model, opt, server=None, run="t", instruments=["loss", a, b])
    _train(cockpit, 12)
    got = cockpit.readings
    steps_a = [s for s, r in got.items() if "sleepy:a" in r]
    steps_b = [s for s, r in got.items() if "sleepy:b" in r]
    assert steps_a and steps_b
    assert min(steps_a + steps_b) >= 2  # the first two steps: no costly work
    assert not set(steps_a) & set(steps_b)  # never two unknown costs at once
    for sched in (a.schedule, b.schedule):  # each probe had the step's room
        assert isinstance(sched, auto) and sched.allowance is not None


def test_costly_instruments_are_placed_on_different_steps():
    a, b, c = auto(log_spaced()), auto(log_spaced()), auto(every(1))
    budget = OverheadBudget(1.0, {"a": a, "b": b, "c": c}, cap=3.0)
    budget._plain.extend([0.01] * 3)  # plain step 10 ms: 20 ms of room a step
    budget.costs.update({"a": 0.015, "b": 0.015, "c": 0.001})
    budget._dirty = True
    budget.update(5)
    assert a.stride is not None and b.stride is not None
    both = [s for s in range(1000) if a(s) and b(s)]
    assert both == []  # 30 ms together: more than the room of one step
    assert a(0) or b(0)
    # Each gets the room less what shares its steps; the cheap one stays at 0.
    assert c.offset == 0 and c.stride == 1
    assert a.allowance == pytest.approx(0.02 - 0.001)
    # Nothing is probed: every instrument is measured.
    assert a.probe is None and b.probe is None


def test_probe_waits_for_a_step_free_of_costly_instruments():
    a, b = auto(log_spaced()), auto(log_spaced())
    budget = OverheadBudget(0.05, {"a": a, "b": b}, cap=3.0)
    budget._plain.extend([0.01] * 3)
    budget.costs["a"] = 0.05
    budget._dirty = True
    budget.update(10)
    assert a.stride is not None
    a.offset = 10 % a.stride  # a is due at the next step
    budget._probes.clear()
    b.probe = None
    budget.update(10)
    assert b.probe is not None and b.probe > 10 and not a(b.probe)
    assert b.allowance == pytest.approx(0.02)


def test_cap_must_exceed_one_plain_step():
    with pytest.raises(ValueError, match="cap"):
        OverheadBudget(0.05, {}, cap=1.0)


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


def test_no_regular_reading_within_a_stride_of_the_probe():
    a, b = auto(log_spaced()), auto(log_spaced())
    budget = OverheadBudget(1.0, {"a": a, "b": b}, cap=3.0)
    budget._plain.extend([0.01] * 3)
    a.probe = 4
    budget.costs.update({"a": 0.5, "b": 0.5})
    budget._dirty = True
    budget.update(5)
    assert a.stride is not None and a.stride > 4
    steps = [s for s in range(3 * a.stride) if a(s)]
    # The probe, then the offset's progression from one stride after it on.
    assert steps[0] == 4
    assert all(s >= 4 + a.stride for s in steps[1:])
    assert all(s % a.stride == a.offset for s in steps[1:])
