"""Instrument declarations are true: names, modules, registry, needs, presets."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest
import torch

from glasscockpit.agent import always
from glasscockpit.agent.instruments import ALL, BY_NAME, PRESETS, Instrument
from tests.agent import problems
from tests.agent.harness import run_step

FOLDER = Path(__file__).resolve().parents[2] / "agent" / "instruments"


def test_names_unique_and_module_named_after_instrument() -> None:
    names = [cls.name for cls in ALL]
    assert len(set(names)) == len(names)
    for cls in ALL:
        assert cls.__module__.endswith("." + cls.name), cls


def test_every_module_in_the_folder_is_registered() -> None:
    modules = {m.name for m in pkgutil.iter_modules([str(FOLDER)])} - {"base"}
    assert modules == {cls.name for cls in ALL}


def test_presets_have_cockpits_membership_as_far_as_present() -> None:
    # Cockpit's configurations (instruments.md §1.5) plus lr, see docs/deviations.md.
    cockpit = {
        "economy": {
            "alpha", "distance", "grad_hist_1d", "grad_norm", "inner_test",
            "loss", "norm_test", "ortho_test", "update_size", "lr",
        },
    }  # fmt: skip
    cockpit["business"] = cockpit["economy"] | {"tic_diag", "hess_trace"}
    cockpit["full"] = cockpit["business"] | {"hess_max_ev", "grad_hist_2d"}
    for preset, members in cockpit.items():
        assert {c.name for c in PRESETS[preset]} == members & set(BY_NAME), preset
    hand_only = {"mean_gsnr", "cabs", "early_stopping", "tic_trace", "time"}
    assert not hand_only & {c.name for c in PRESETS["full"]}


def _comparable(x: object) -> object:
    if isinstance(x, dict):
        return {k: _comparable(v) for k, v in x.items()}
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return x


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_only_declared_needs_give_the_same_reading(
    cls: type[Instrument], torch_threads: None
) -> None:
    # Alone, the step serves only this instrument's needs (and StepView refuses
    # the rest); next to every other instrument, the engine serves all needs.
    if cls.name == "time":
        pytest.skip("a clock reading differs between two runs by design")
    problem = problems.BY_NAME["mlp"]
    alone = run_step(problem, [cls(schedule=always)])[cls.name]
    others = [c(schedule=always) for c in ALL if c is not cls]
    together = run_step(problem, [cls(schedule=always), *others])[cls.name]
    assert _comparable(alone) == _comparable(together)
