"""Parity of the step-size and curvature instruments with cockpit-for-pytorch 1.0.2.

Needs the test-only extra ``parity`` (cockpit-for-pytorch==1.0.2, setuptools<81);
skipped without it. Cockpit is run where it is right: plain SGD (its Alpha fast
path predicts the update exactly), extended models (its HessTrace is BackPACK's
exact diagonal). Its HessMaxEV stops early and reads low (instruments.md §2.14),
so only a bound is checked; the deviations have their own tests in
``test_step_size.py`` and ``test_curvature.py``.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.instruments import (
    Alpha,
    Distance,
    HessMaxEV,
    HessTrace,
    UpdateSize,
)
from tests.agent.reference_curvature import PROBLEMS, Problem

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pkg_resources' own deprecation warning
    try:
        import backpack
        import cockpit as original
        from cockpit.utils.schedules import linear
    except ImportError as exc:  # setuptools >= 81 has no pkg_resources
        pytest.skip(
            f"cockpit-for-pytorch is not importable ({exc}); install the "
            "'parity' extra (cockpit-for-pytorch==1.0.2, setuptools<81)",
            allow_module_level=True,
        )

LR = 0.1
STEPS = 4
NAMES = ("Alpha", "Distance", "UpdateSize", "HessTrace", "HessMaxEV")


def _loop(problem: Problem, step_context: Any, model: nn.Module) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_module = backpack.extend(problem.loss_module())
    for step in range(STEPS):
        opt.zero_grad()
        x, y = problem.make_batch(step)
        out = model(x)
        loss = loss_module(out, y)
        losses = problem.sample_losses(out, y)
        step_context(step, loss, losses, opt)
        opt.step()


def run_original(problem: Problem) -> dict[int, dict[str, Any]]:
    model = backpack.extend(problem.make_model())
    quantities = [getattr(original.quantities, n)(linear(1)) for n in NAMES]
    ck = original.Cockpit(model.parameters(), quantities=quantities)

    def step(t: int, loss: Any, losses: Any, opt: Any) -> None:
        info = {
            "batch_size": losses.shape[0],
            "individual_losses": losses,
            "loss": loss,
            "optimizer": opt,
        }
        with ck(t, info=info):
            loss.backward(create_graph=ck.create_graph(t))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _loop(problem, step, model)
    return {int(k): v for k, v in ck.get_output().items()}


def run_ours(problem: Problem) -> tuple[dict[int, dict[str, Any]], list[str]]:
    model = backpack.extend(problem.make_model())
    insts = [
        Alpha(schedule=always),
        Distance(schedule=always),
        UpdateSize(schedule=always),
        HessTrace(schedule=always, method="exact"),
        HessMaxEV(schedule=always, rtol=1e-6),
    ]
    ck = Cockpit(model, None, server=None, instruments=insts, fail_mode="raise")

    def step(t: int, loss: Any, losses: Any, opt: Any) -> None:
        ck.optimizer = opt  # the loop builds the optimizer
        with ck.step(t, loss=loss, losses=losses):
            loss.backward()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _loop(problem, step, model)
        ck.close()
    return ck.readings, [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize("problem", PROBLEMS[1:], ids=repr)
def test_same_numbers_as_cockpit(problem: Problem, torch_threads: None) -> None:
    theirs = run_original(problem)
    ours, names = run_ours(problem)
    for t in range(STEPS - 1):  # Cockpit never finishes its last two-step values
        orig, mine = theirs[t], ours[t]
        assert mine["alpha"] == pytest.approx(orig["Alpha"], rel=1e-4, abs=1e-5), t
        for key, ours_key in (
            ("Distance", "distance"),
            ("UpdateSize", "update_size"),
            ("HessTrace", "hess_trace"),
        ):
            values = [float(v) for v in orig[key]]
            for name, value in zip(names, values, strict=True):
                assert mine[ours_key][name] == pytest.approx(
                    value, rel=1e-4, abs=1e-7
                ), (t, key, name)
            assert mine[ours_key]["total"] == pytest.approx(
                sum(values)
                if key == "HessTrace"
                else sum(v * v for v in values) ** 0.5,
                rel=1e-4,
            )
        # Power iteration from below, stopped at a 1e-3 relative change.
        lam, power = mine["hess_max_ev"], float(orig["HessMaxEV"])
        assert power <= lam * (1 + 1e-5) and power == pytest.approx(lam, rel=2e-2)
