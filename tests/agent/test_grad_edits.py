"""Edits of ``.grad`` inside ``cockpit.step`` (clipping) and wrapped optimizers.

The instruments read the gradient as backpropagated: a loop that clips inside the
step reads exactly like the same loop without clipping on that step.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.environment.backprop_grads import MISSED
from glasscockpit.agent.instruments import BY_NAME, PRESETS
from glasscockpit.protocol import Readings
from tests.agent.problems import BY_NAME as PROBLEMS

#: Readings of the applied update (the clipped one) and Alpha, whose second
#: half reads the next step's gradient along it, legitimately differ.
OF_THE_UPDATE = {"update_size", "alpha"}


def train(
    clip: float | None,
    names: list[str],
    steps: int = 2,
    problem: str = "mlp",
    clip_from: int = 0,
) -> tuple[dict[int, dict[str, Any]], list[dict[str, str]]]:
    model, x, y = PROBLEMS[problem].make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    insts = [BY_NAME[n](schedule=always) for n in names]
    cockpit = Cockpit(model, opt, server=None, instruments=insts, budget=None)
    for step in range(steps):
        opt.zero_grad()
        out = model(x)
        losses = F.cross_entropy(out, y, reduction="none")
        loss = losses.mean()
        with cockpit.step(step, loss=loss, losses=losses):
            loss.backward()
            if clip is not None and step >= clip_from:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    cockpit.close()
    frames = cockpit.transport.frames  # type: ignore[attr-defined]
    errors = [f.errors for f in frames if isinstance(f, Readings) and f.errors]
    return cockpit.readings, errors


def assert_same(got: Any, want: Any, where: str) -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k}]")
    elif isinstance(want, Tensor):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=where)
    else:
        assert got == want, where


@pytest.mark.parametrize("problem", ["mlp", "cnn"])
def test_clipping_inside_the_step_reads_like_no_clipping(problem, torch_threads):
    names = [c.name for c in PRESETS["full"]]
    want, want_errors = train(None, names, problem=problem)
    got, errors = train(0.01, names, problem=problem)  # clips hard: every step
    assert errors == want_errors
    for name in names:
        if name not in OF_THE_UPDATE:
            assert_same(got[0][name], want[0][name], name)
            assert got[0][name] is not None, name
    # What clipping changes is the update (the clipped step is shorter).
    assert got[0]["update_size"]["total"] < want[0]["update_size"]["total"]


def test_grad_norm_is_the_norm_clip_grad_norm_returns(torch_threads) -> None:
    model, x, y = PROBLEMS["mlp"].make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cockpit = Cockpit(model, opt, server=None, instruments=["grad_norm"])
    loss = F.cross_entropy(model(x), y)
    with cockpit.step(0, loss=loss):
        loss.backward()
        before = nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
    # The loop's own gradient is left clipped.
    after = torch.stack([p.grad.norm() for p in model.parameters()]).norm()
    assert float(after) == pytest.approx(1e-3, rel=1e-4)
    cockpit.close()
    assert float(cockpit.readings[0]["grad_norm"]["total"]) == pytest.approx(
        float(before), rel=1e-6
    )
    assert "as backpropagated" in cockpit.hello.meta["gradients"]


def test_a_loop_that_starts_clipping_late_is_read_with_a_note(torch_threads):
    # No edit on the first steps: later steps keep no copy. The first edit is
    # read as edited, with the reason; from then on copies are kept again.
    names = ["grad_norm", "norm_test"]
    want, _ = train(None, names, steps=4)
    got, errors = train(1e-3, names, steps=4, clip_from=2)
    notes = [e for e in errors if MISSED in e.values()]
    assert len(notes) == 1 and set(notes[0]) == set(names)
    clipped = float(got[2]["grad_norm"]["total"])
    assert clipped == pytest.approx(1e-3, rel=1e-4)
    # Step 3 clips again and is read as backpropagated: the unclipped norm is
    # far larger than the clip (its exact value depends on the clipped updates).
    assert float(got[3]["grad_norm"]["total"]) > 100 * clipped
    for step in (0, 1):
        assert_same(got[step], want[step], str(step))


def test_unscale_inside_the_step_reads_like_the_plain_loop(torch_threads) -> None:
    def run(edit: bool) -> dict[str, Any]:
        model, x, y = PROBLEMS["mlp"].make()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        cockpit = Cockpit(
            model, opt, server=None, instruments=["grad_norm", "norm_test"],
            scaler=scaler, budget=None, fail_mode="raise",
        )  # fmt: skip
        loss = F.cross_entropy(model(x), y)
        with cockpit.step(0, loss=loss):
            scaler.scale(loss).backward()
            if edit:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
        scaler.step(opt)
        scaler.update()
        cockpit.close()
        return cockpit.readings[0]

    plain, clipped = run(False), run(True)
    for name in ("grad_norm", "norm_test"):
        for k, v in plain[name].items():
            torch.testing.assert_close(clipped[name][k], v, rtol=1e-6, atol=0)


class Wrapper:
    """A wrapper that keeps the optimizer as ``.optimizer`` (as Accelerate does)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def step(self) -> None:
        self.optimizer.step()


def test_a_wrapped_optimizer_is_read_through(torch_threads) -> None:
    model, x, y = PROBLEMS["mlp"].make()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    wrapped = Wrapper(Wrapper(inner))
    cockpit = Cockpit(
        model, wrapped, server=None, instruments=["lr", "update_size"], budget=None
    )
    assert cockpit.optimizer is inner
    loss = F.cross_entropy(model(x), y)
    with cockpit.step(0, loss=loss):
        loss.backward()
    wrapped.step()  # the after-step hook is the inner optimizer's
    cockpit.close()
    assert cockpit.readings[0]["lr"]["total"] == pytest.approx(0.1)
    assert float(cockpit.readings[0]["update_size"]["total"]) > 0
    assert cockpit.hello.meta["optimizer"] == "SGD"


def test_a_replaced_grad_is_read_as_backpropagated_without_a_copy(torch_threads):
    # After unedited steps no copy is kept; a .grad replaced by another tensor
    # (not changed in place) leaves the backpropagated one to read.
    def run(replace: bool) -> tuple[dict[int, dict[str, Any]], list[Any]]:
        model, x, y = PROBLEMS["mlp"].make()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        cockpit = Cockpit(
            model, opt, server=None, instruments=["grad_norm"], budget=None
        )
        for step in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            with cockpit.step(step, loss=loss):
                loss.backward()
                if replace and step == 2:
                    for p in model.parameters():
                        p.grad = p.grad * 0.0
            opt.step()
        cockpit.close()
        return cockpit.readings, cockpit.transport.frames  # type: ignore[attr-defined]

    want, _ = run(False)
    got, frames = run(True)
    assert not [f for f in frames if isinstance(f, Readings) and f.errors]
    assert float(got[2]["grad_norm"]["total"]) == float(want[2]["grad_norm"]["total"])
    assert float(got[2]["grad_norm"]["total"]) > 0
