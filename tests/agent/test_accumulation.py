"""Gradient accumulation: one tracked step over several forward passes.

The micro-batches are different samples: a step of ``F`` micro-batches of ``B``
samples, the loss their mean, reads like one step on the ``F·B`` samples at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.instruments import BY_NAME
from glasscockpit.protocol import Readings
from tests.agent.models import CAUSAL_LM
from tests.agent.problems import BY_NAME as PROBLEMS
from tests.agent.problems import Problem

#: Per-sample instruments, Alpha and the cheap ones.
NAMES = [
    "norm_test",
    "inner_test",
    "ortho_test",
    "mean_gsnr",
    "early_stopping",
    "cabs",
    "grad_hist_1d",
    "grad_hist_2d",
    "alpha",
    "grad_norm",
]
#: float32 sums over micro-batches in another order than over the whole batch.
RTOL = 1e-5
#: GSNR and EB divide by ``mean g_n² − g²``, which cancels in float32 where all
#: samples agree (tests/agent/test_instruments.py, ``variance_conditioning``).
RTOL_VARIANCE = 1e-3


def sample_losses(out: Tensor, y: Tensor) -> Tensor:
    logits = out.transpose(1, 2) if out.dim() == 3 else out
    per = F.cross_entropy(logits, y, reduction="none")
    return per.reshape(per.shape[0], -1).mean(1)


Trainer = Callable[
    [Cockpit, nn.Module, torch.optim.Optimizer, Tensor, Tensor, int], None
]


def whole(cockpit, model, opt, x, y, step) -> None:
    opt.zero_grad()
    losses = sample_losses(model(x), y)
    with cockpit.step(step, loss=losses.mean(), losses=losses):
        losses.mean().backward()
    opt.step()


def forwards_first(cockpit, model, opt, x, y, step) -> None:
    # Both forward passes, then one backward per micro-batch in the step.
    opt.zero_grad()
    parts = [
        sample_losses(model(xs), ys)
        for xs, ys in zip(x.chunk(2), y.chunk(2), strict=True)
    ]
    losses = torch.cat(parts)
    with cockpit.step(step, loss=losses.mean(), losses=losses):
        for part in parts:
            (part.mean() / 2).backward()
    opt.step()


def interleaved(cockpit, model, opt, x, y, step) -> None:
    # Forward, backward, forward, backward, all inside the step.
    opt.zero_grad()
    with cockpit.step(step):
        for xs, ys in zip(x.chunk(2), y.chunk(2), strict=True):
            (sample_losses(model(xs), ys).mean() / 2).backward()
    opt.step()


def train(problem: Problem, names: list[str], how: Trainer, steps: int = 3):
    model, x, y = problem.make()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    insts = [BY_NAME[n](schedule=always) for n in names]
    cockpit = Cockpit(model, opt, server=None, instruments=insts, budget=None)
    for step in range(steps):
        how(cockpit, model, opt, x, y, step)
    cockpit.close()
    frames = cockpit.transport.frames  # type: ignore[attr-defined]
    errors = [f.errors for f in frames if isinstance(f, Readings) and f.errors]
    return cockpit.readings, errors


def assert_same(got: Any, want: Any, where: str, rtol: float = RTOL) -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k}]", rtol)
    elif want is None:
        assert got is None, where
    elif isinstance(want, Tensor):
        if where.endswith("[counts]"):
            assert torch.equal(got, want), where
        else:
            torch.testing.assert_close(got, want, rtol=rtol, atol=1e-9)
    else:
        assert got == pytest.approx(want, rel=rtol, abs=1e-9), where


def rtol_of(name: str) -> float:
    return RTOL_VARIANCE if name in ("mean_gsnr", "early_stopping") else RTOL


@pytest.mark.parametrize("problem", [PROBLEMS["mlp"], PROBLEMS["cnn"]], ids=str)
def test_micro_batches_read_like_the_whole_batch(problem, torch_threads) -> None:
    problem = _even(problem)
    want, errors = train(problem, NAMES, whole)
    assert errors == []
    got, errors = train(problem, NAMES, forwards_first)
    assert errors == []
    for step in range(2):  # alpha's last step needs the next one
        for name in NAMES:
            where = f"{step} {name}"
            assert_same(got[step][name], want[step][name], where, rtol_of(name))


def test_micro_batches_with_a_backward_after_each_forward(torch_threads) -> None:
    problem = _even(PROBLEMS["mlp"])
    # No loss before the forward passes: no Alpha, no CABS.
    names = [n for n in NAMES if n not in ("alpha", "cabs")]
    want, _ = train(problem, names, whole)
    got, errors = train(problem, names, interleaved)
    assert errors == []
    for name in names:
        assert_same(got[0][name], want[0][name], name, rtol_of(name))


def test_token_level_micro_batches_read_like_the_whole_batch(torch_threads) -> None:
    # (GSNR over two samples is ill-conditioned: left to the tests above.)
    names = ["norm_test", "inner_test", "ortho_test", "alpha"]
    want, _ = train(_even(CAUSAL_LM), names, whole)
    got, errors = train(_even(CAUSAL_LM), names, forwards_first)
    assert errors == []
    # Two sequences: per-layer values of a bias whose two samples nearly agree
    # cancel in float32 (the mean gradient is summed in another order); the
    # network's totals and Alpha are well conditioned.
    for name in names:
        g, w = got[0][name], want[0][name]
        g, w = (g["total"], w["total"]) if isinstance(w, dict) else (g, w)
        assert g == pytest.approx(w, rel=1e-4), name


def test_unequal_micro_batches_and_tic_are_undefined_with_the_reason(
    torch_threads,
) -> None:
    problem = PROBLEMS["mlp"]  # 8 samples

    def uneven(cockpit, model, opt, x, y, step) -> None:
        opt.zero_grad()
        parts = [sample_losses(model(x[:5]), y[:5]), sample_losses(model(x[5:]), y[5:])]
        loss = torch.cat(parts).mean()
        with cockpit.step(step, loss=loss):
            loss.backward()
        opt.step()

    readings, errors = train(problem, ["norm_test"], uneven, steps=2)
    assert readings[0]["norm_test"] is None
    assert "micro-batches" in errors[0]["norm_test"]
    # The GGN diagonal is computed from one forward pass's output: undefined.
    readings, errors = train(problem, ["tic_diag"], forwards_first, steps=2)
    assert readings[0]["tic_diag"] is None
    assert "2 forward passes" in errors[0]["tic_diag"]


def _even(problem: Problem) -> Problem:
    """``problem`` with an even batch (two equal micro-batches)."""
    model, x, y = problem.make()
    if x.shape[0] % 2 == 0:
        return problem

    def build() -> tuple[nn.Module, Tensor, Tensor]:
        model, x, y = problem.build()
        return model, x[:-1], y[:-1]

    return Problem(problem.name, build, problem.loss_fn)


def test_a_validation_forward_in_grad_mode_is_no_micro_batch(torch_threads) -> None:
    # model(x_val) between steps without torch.no_grad: recorded (the engine is
    # armed for the next step), never backpropagated, not part of the loss.
    problem = PROBLEMS["mlp"]
    names = ["norm_test", "tic_diag", "alpha"]

    def with_validation(cockpit, model, opt, x, y, step) -> None:
        model(x.flip(0) + 1.0)  # a "validation" batch, graph built and dropped
        whole(cockpit, model, opt, x, y, step)

    want, _ = train(problem, names, whole)
    got, errors = train(problem, names, with_validation)
    assert errors == []
    for step in range(2):
        for name in names:
            assert_same(got[step][name], want[step][name], name)
