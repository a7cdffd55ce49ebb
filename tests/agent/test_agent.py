"""Cockpit in a real training loop, without a server: readings match torch.autograd."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from glasscockpit.agent import Cockpit, every
from glasscockpit.agent.instruments import GradNorm, Instrument
from glasscockpit.agent.lifecycle.step import UndeclaredNeedError


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 5))
    x, y = torch.randn(6, 10), torch.randint(0, 5, (6,))
    return model, x, y


def test_loss_grad_norm_and_lr_match_autograd(torch_threads):
    model, x, y = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    cockpit = Cockpit(model, opt, server=None, run="t")
    expected = {}
    for step in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        # reference: explicit autograd on a copy of the graph
        grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
        norms = {
            n: g.norm().item()
            for (n, _), g in zip(model.named_parameters(), grads, strict=True)
        }
        norms["total"] = math.sqrt(sum(g.pow(2).sum().item() for g in grads))
        expected[step] = (loss.item(), norms, opt.param_groups[0]["lr"])
        with cockpit.step(step, loss=loss):
            loss.backward()
        opt.step()
        sched.step()
    cockpit.close()
    got = cockpit.readings
    assert sorted(got) == [0, 1, 2]
    for step, (loss, norms, lr) in expected.items():
        assert got[step]["loss"] == pytest.approx(loss, rel=1e-6)
        assert got[step]["grad_norm"].keys() == norms.keys()
        for k, v in norms.items():
            # float32 norms: rtol 1e-5 covers summation-order differences.
            assert got[step]["grad_norm"][k] == pytest.approx(v, rel=1e-5)
        assert got[step]["lr"]["total"] == pytest.approx(lr)


def test_drain_hands_over_frames_once_and_forgets_them(torch_threads):
    # Long in-memory runs (and the benchmarks) drain frames to keep memory flat.
    model, x, y = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cockpit = Cockpit(model, opt, server=None, run="t", instruments=["loss"])
    for step in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        with cockpit.step(step, loss=loss):
            loss.backward()
        if step == 1:
            first = cockpit.transport.drain()  # type: ignore[attr-defined]
    cockpit.close()
    steps = [getattr(f, "step", None) for f in first]
    assert [s for s in steps if s is not None] == [0, 1]
    assert sorted(cockpit.readings) == [2]
    assert cockpit.transport.drain() and not cockpit.transport.drain()  # type: ignore[attr-defined]


def test_untracked_steps_compute_nothing():
    model, x, y = _problem()
    cockpit = Cockpit(
        model, None, server=None, instruments=[GradNorm(schedule=every(3))]
    )
    tracked = []
    for step in range(7):
        loss = nn.functional.cross_entropy(model(x), y)
        with cockpit.step(step, loss=loss) as is_tracked:
            loss.backward()
        tracked.append(is_tracked)
    assert tracked == [True, False, False, True, False, False, True]
    assert sorted(cockpit.readings) == [0, 3, 6]


class _Broken(Instrument):
    name = "broken"
    needs = frozenset()
    cost = GradNorm.cost
    kind = GradNorm.kind
    panel = GradNorm.panel

    def compute(self, step):
        raise ZeroDivisionError("boom")


class _Sneaky(GradNorm):
    needs = frozenset()


def test_failing_instrument_is_disabled_once_and_training_goes_on(caplog):
    model, x, y = _problem()
    cockpit = Cockpit(model, None, server=None, instruments=["loss", _Broken()])
    for step in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        with cockpit.step(step, loss=loss):
            loss.backward()
    assert "broken" in cockpit.disabled
    assert sum("failed and is disabled" in r.message for r in caplog.records) == 1
    assert all("loss" in r for r in cockpit.readings.values())


def test_undeclared_need_fails_in_raise_mode():
    model, x, y = _problem()
    cockpit = Cockpit(
        model, None, server=None, instruments=[_Sneaky()], fail_mode="raise"
    )
    loss = nn.functional.cross_entropy(model(x), y)
    with (
        pytest.raises(UndeclaredNeedError, match="Need.GRAD"),
        cockpit.step(0, loss=loss),
    ):
        loss.backward()


def test_nan_loss_is_recorded_not_raised():
    model, x, y = _problem()
    cockpit = Cockpit(model, None, server=None, instruments=["loss", "grad_norm"])
    loss = nn.functional.cross_entropy(model(x), y) * float("nan")
    with cockpit.step(0, loss=loss):
        loss.backward()
    r = cockpit.readings[0]
    assert math.isnan(r["loss"]) and math.isnan(r["grad_norm"]["total"])


def test_a_nan_step_leaves_every_instrument_on_for_the_next(torch_threads):
    # A NaN input makes one step's numbers non-finite; an instrument that fails
    # on them (Lanczos' eigensolver) reports that step as undefined only.
    from glasscockpit.agent import always
    from glasscockpit.agent.instruments import PRESETS
    from glasscockpit.protocol import Readings

    model, x, y = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    insts = [c(schedule=always) for c in PRESETS["full"]]
    cockpit = Cockpit(model, opt, server=None, run="t", instruments=insts)
    for step in range(3):
        opt.zero_grad()
        xx = x.clone()
        if step == 1:
            xx[0, 0] = float("nan")
        out = model(xx)
        losses = nn.functional.cross_entropy(out, y, reduction="none")
        with cockpit.step(step, loss=losses.mean(), losses=losses):
            losses.mean().backward()
        if step != 1:  # skip the poisoned update, as a NaN guard would
            opt.step()
    cockpit.close()
    assert not cockpit.disabled
    assert math.isnan(cockpit.readings[1]["loss"])
    frames = [f for f in cockpit.transport.frames if isinstance(f, Readings)]  # type: ignore[attr-defined]
    errors = {k: v for f in frames if f.step == 1 for k, v in f.errors.items()}
    assert all(
        v.startswith("non-finite loss or gradients") or "EngineError" in v
        for v in errors.values()
    ), errors
    assert isinstance(cockpit.readings[2]["hess_max_ev"], float)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (
            {"instruments": "first-class"},
            "Unknown instrument 'first-class'. Available presets",
        ),
        ({"run": "../../etc/passwd"}, "Invalid run id"),
        ({"fail_mode": "ignore"}, "fail_mode must be one of"),
        ({"instruments": ["loss", "loss"]}, "share a key"),
        ({"server": "ftp://x"}, "Server URL must start with"),
    ],
)
def test_misuse_fails_fast_with_a_clear_message(kwargs, error):
    model, _, _ = _problem()
    kwargs.setdefault("server", None)
    with pytest.raises(ValueError, match=error):
        Cockpit(model, None, **kwargs)


def test_frozen_model_is_rejected():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad=True"):
        Cockpit(model, None, server=None)
