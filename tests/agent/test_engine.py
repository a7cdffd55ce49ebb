"""Engine behaviour and Cockpit's fixed defects, each with its own test."""

from __future__ import annotations

import gc
import logging
import weakref

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from glasscockpit.agent import Cockpit, always, every
from glasscockpit.agent.engine import HookEngine, rules
from glasscockpit.agent.engine.rules import ConvRule
from glasscockpit.agent.instruments import (
    CABS,
    EarlyStopping,
    GradHist1d,
    GradHist2d,
    InnerTest,
    MeanGSNR,
    NormTest,
    OrthoTest,
    TICDiag,
)
from tests.agent.harness import run_step
from tests.agent.problems import BY_NAME, Problem
from tests.agent.reference import (
    cabs,
    collect,
    early_stopping,
    grad_hist_1d,
    grad_hist_2d,
    norm_test,
    tic_diag,
)
from tests.agent.test_instruments import RTOL, assert_reading

MLP, CNN = BY_NAME["mlp"], BY_NAME["cnn"]
TESTS = [NormTest, InnerTest, OrthoTest]


@pytest.mark.parametrize("problem", [MLP, CNN], ids=str)
def test_gradient_tests_split_the_variance(problem: Problem, torch_threads: None):
    got = run_step(problem, [c(schedule=always) for c in TESTS])
    for key in got["norm_test"]:
        norm, inner, ortho = (got[c.name][key] for c in TESTS)
        assert norm**2 == pytest.approx(inner**2 + ortho**2, rel=1e-4), key


def _single_sample() -> tuple[nn.Module, Tensor, Tensor]:
    return nn.Linear(4, 3), torch.randn(1, 4), torch.tensor([1])


def test_batch_of_one_is_undefined_not_nan(torch_threads: None):
    problem = Problem("b1", _single_sample, F.cross_entropy)
    classes = [*TESTS, MeanGSNR, EarlyStopping, CABS]
    got = run_step(problem, [c(schedule=always) for c in classes])
    for cls in classes:
        assert all(v is None for v in got[cls.name].values()), cls.name


def test_zero_gradient_is_undefined(torch_threads: None):
    problem = Problem("zero", MLP.build, lambda z, y: 0.0 * F.cross_entropy(z, y))
    got = run_step(problem, [c(schedule=always) for c in TESTS])
    for cls in TESTS:
        assert all(v is None for v in got[cls.name].values()), cls.name


def _loop(cockpit: Cockpit, problem: Problem, steps: list[int], pre: bool = False):
    model, x, y = problem.make()
    tracked = []
    for step in steps:
        if pre:  # context opened before the forward pass
            with cockpit.step(step) as on:
                loss = problem.loss_fn(model(x), y)
                loss.backward()
        else:
            loss = problem.loss_fn(model(x), y)
            with cockpit.step(step, loss=loss) as on:
                loss.backward()
        tracked.append(on)
        model.zero_grad()
    return model


def test_untracked_steps_record_nothing(torch_threads: None):
    model, x, y = MLP.make()
    cockpit = Cockpit(
        model, None, server=None, instruments=[NormTest(schedule=every(3))]
    )
    assert cockpit.engine is not None
    seen = []
    for step in range(6):
        loss = F.cross_entropy(model(x), y)
        seen.append(cockpit.engine.recorded)
        with cockpit.step(step, loss=loss):
            loss.backward()
        model.zero_grad()
    cockpit.close()
    assert seen == [True, False, False, True, False, False]
    assert sorted(cockpit.readings) == [0, 3]


def test_context_before_forward_matches_reference(torch_threads: None):
    model, x, y = MLP.make()
    cockpit = Cockpit(
        model,
        None,
        server=None,
        instruments=[NormTest(schedule=lambda s: s == 7)],
        fail_mode="raise",
    )
    loss = F.cross_entropy(model(x), y)  # step 6, untracked, engine not armed
    loss.backward()
    model.zero_grad()
    with cockpit.step(7):
        F.cross_entropy(model(x), y).backward()
    cockpit.close()
    want = norm_test(collect(MLP), None)
    assert_reading(cockpit.readings[7]["norm_test"], want, "norm_test")


def test_unrecorded_step_is_reported_and_instrument_kept(torch_threads, caplog):
    model, x, y = MLP.make()
    cockpit = Cockpit(
        model, None, server=None, instruments=[NormTest(schedule=every(2))]
    )
    with caplog.at_level(logging.WARNING, logger="glasscockpit.agent"):
        for step in (0, 2, 4):  # not armed for step 2: 1 was expected next
            loss = F.cross_entropy(model(x), y)
            with cockpit.step(step, loss=loss):
                loss.backward()
            model.zero_grad()
    cockpit.close()
    frames = [f for f in cockpit.transport.frames if hasattr(f, "errors")]
    errors = {f.step: f.errors for f in frames if f.errors}
    assert "not recorded" in errors[2]["norm_test"]
    assert cockpit.readings[2]["norm_test"] is None
    assert cockpit.readings[4]["norm_test"] is None  # 4 followed 2, also unarmed
    assert "norm_test" not in cockpit.disabled
    assert sum("not recorded" in r.message for r in caplog.records) == 1


def test_two_instances_with_different_settings_coexist(torch_threads: None):
    a = GradHist1d(schedule=always, label="narrow", bins=10, range=(-0.1, 0.1))
    b = GradHist1d(schedule=always, label="wide", bins=20)
    got = run_step(MLP, [a, b])
    assert got["grad_hist_1d:narrow"]["counts"].shape == (10,)
    assert got["grad_hist_1d:wide"]["counts"].shape == (20,)
    total = sum(p.numel() for p in MLP.make()[0].parameters()) * 8
    assert got["grad_hist_1d:narrow"]["counts"].sum() == total


@pytest.mark.parametrize("problem", [MLP, CNN], ids=str)
def test_histograms_in_sample_chunks_match_reference(problem: Problem, torch_threads):
    insts = [
        GradHist1d(schedule=always, chunk=50),
        GradHist2d(schedule=always, chunk=1),
    ]
    got = run_step(problem, insts)
    data = collect(problem)
    assert_reading(got["grad_hist_1d"], grad_hist_1d(data, insts[0]), "h1")
    assert_reading(got["grad_hist_2d"], grad_hist_2d(data, insts[1]), "h2")


def test_histograms_count_nan_apart(torch_threads: None):
    def build() -> tuple[nn.Module, Tensor, Tensor]:
        model, x, y = MLP.build()
        x[2, 0] = float("nan")  # sample 2's gradients become NaN
        return model, x, y

    problem = Problem("nan", build, F.cross_entropy)
    got = run_step(problem, [GradHist1d(schedule=always), GradHist2d(schedule=always)])
    per_sample = sum(p.numel() for p in MLP.make()[0].parameters())
    for name in ("grad_hist_1d", "grad_hist_2d"):
        assert got[name]["nan"] == per_sample, name
        assert got[name]["counts"].sum() == 7 * per_sample, name


def test_uncovered_module_is_reported(torch_threads: None):
    class Noisy(nn.Module):  # raw parameter and dropout: no rule, no re-run
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(5))
            self.drop = nn.Dropout(0.5)

        def forward(self, x: Tensor) -> Tensor:
            return self.drop(x) * self.scale

    def build() -> tuple[nn.Module, Tensor, Tensor]:
        model = nn.Sequential(nn.Linear(6, 5), Noisy(), nn.Linear(5, 3)).eval()
        return model, torch.randn(4, 6), torch.randint(0, 3, (4,))

    model, x, y = build()
    cockpit = Cockpit(model, None, server=None, instruments=[NormTest(schedule=always)])
    assert cockpit.hello.meta["coverage"]["1.scale"].startswith("not covered")
    loss = F.cross_entropy(model(x), y)
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    got = cockpit.readings[0]["norm_test"]
    assert "1.scale" not in got and "0.weight" in got  # the others are computed
    frame = [f for f in cockpit.transport.frames if getattr(f, "errors", None)][0]
    assert "1.scale" in frame.errors["norm_test"]
    assert frame.errors["norm_test"].startswith("partial:")


def test_tied_weights_are_served_by_the_model_fallback(torch_threads: None):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x) @ self.fc.weight  # weight also used outside fc

    def build() -> tuple[nn.Module, Tensor, Tensor]:
        return Tied(), torch.randn(5, 4), torch.randint(0, 4, (5,))

    problem = Problem("tied", build, F.cross_entropy)
    got = run_step(problem, [NormTest(schedule=always)])
    assert_reading(got["norm_test"], norm_test(collect(problem), None), "norm_test")


def _reused() -> tuple[nn.Module, Tensor, Tensor]:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(5, 5), nn.Linear(5, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(torch.tanh(self.a(torch.relu(self.a(x)))))

    return Twice(), torch.randn(6, 5), torch.randint(0, 3, (6,))


def test_module_called_twice_matches_reference(torch_threads: None):
    problem = Problem("twice", _reused, F.cross_entropy)
    classes = [NormTest, InnerTest, MeanGSNR]
    got = run_step(problem, [c(schedule=always) for c in classes])
    data = collect(problem)
    assert_reading(got["norm_test"], norm_test(data, None), "norm_test")


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_cabs_and_early_stopping_with_any_optimizer(optimizer: str, torch_threads):
    lr = 0.01
    got = run_step(
        MLP,
        [CABS(schedule=always), EarlyStopping(schedule=always)],
        optimizer=optimizer,
        lr=lr,
    )
    data = collect(MLP, lr=lr)
    assert_reading(got["cabs"], cabs(data, None), "cabs")
    want = early_stopping(data, EarlyStopping())
    assert_reading(got["early_stopping"], want, "eb", rtol=1e-3)


def _scaled(factor: float) -> Problem:
    return Problem("scaled", MLP.build, lambda z, y: factor * F.cross_entropy(z, y))


def test_relative_epsilon_makes_gsnr_and_eb_scale_free(torch_threads: None):
    insts = lambda: [MeanGSNR(schedule=always), EarlyStopping(schedule=always)]  # noqa: E731
    small, big = run_step(_scaled(1e-4), insts()), run_step(_scaled(1e2), insts())
    for name in ("mean_gsnr", "early_stopping"):
        assert small[name]["total"] == pytest.approx(big[name]["total"], rel=1e-3)
    # Cockpit's absolute epsilon: the same gradients read differently when scaled.
    absolute = lambda: [MeanGSNR(schedule=always, relative=False)]  # noqa: E731
    a, b = run_step(_scaled(1e-4), absolute()), run_step(_scaled(1e2), absolute())
    assert a["mean_gsnr"]["total"] < 0.5 * b["mean_gsnr"]["total"]


def _inplace() -> tuple[nn.Module, Tensor, Tensor]:
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(inplace=True), nn.Linear(5, 3))
    return model, torch.randn(5, 6), torch.randint(0, 3, (5,))


def test_tic_with_outputs_modified_in_place(torch_threads: None):
    # ReLU(inplace=True) rewrites the first Linear's output: the curvature passes
    # must fall back from differentiating w.r.t. recorded outputs to tensor hooks.
    problem = Problem("inplace", _inplace, F.cross_entropy)
    inst = TICDiag(schedule=always)
    got = run_step(problem, [inst, NormTest(schedule=always)])
    data = collect(problem)
    assert_reading(got["tic_diag"], tic_diag(data, inst), "tic_diag")
    assert_reading(got["norm_test"], norm_test(data, None), "norm_test")


def test_tic_uses_exact_curvature_for_mse(torch_threads: None):
    got = run_step(BY_NAME["mse"], [TICDiag(schedule=always)])
    assert got["tic_diag"]["total"] > 0


def test_log_sends_epoch_metrics(torch_threads: None):
    model, _, _ = MLP.make()
    cockpit = Cockpit(model, None, server=None, instruments=["loss"])
    cockpit.log(3, train_loss=0.5, valid_loss=0.7, valid_accuracy=0.9)
    with pytest.raises(ValueError, match="Unknown metric"):
        cockpit.log(3, accuracy=1.0)
    cockpit.close()
    names = [spec.name for spec in cockpit.hello.instruments]
    assert {"epoch_loss", "epoch_accuracy"} <= set(names)
    assert cockpit.readings[3]["epoch_loss"] == {"train": 0.5, "valid": 0.7}
    assert cockpit.readings[3]["epoch_accuracy"] == {"valid": 0.9}
    assert RTOL > 0


CONVS = [
    nn.Conv2d(3, 8, 3, padding=1),
    nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2),
    nn.Conv2d(2, 4, 5, stride=3, bias=False),
    nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2),
    nn.Conv1d(3, 5, 4, dilation=2),
]


@pytest.mark.parametrize("conv", CONVS, ids=repr)
def test_both_conv_weight_paths_are_per_sample_gradients(
    conv: nn.Conv1d | nn.Conv2d, torch_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    x = torch.randn(5, conv.in_channels, 11, 9)
    if isinstance(conv, nn.Conv1d):
        x = x[:, :, 0]
    b = torch.randn_like(conv(x))
    want = torch.stack(
        [
            torch.autograd.grad(conv(x[n : n + 1]), conv.weight, b[n : n + 1])[0]
            for n in range(len(x))
        ]
    )
    rule = ConvRule()
    scale = float(want.abs().max())
    got = [rule.by_unfold(conv, x, b), rule.by_kernel(conv, x, b)]
    with rule.caching():  # the whole batch's windows, kept
        got += [rule.by_unfold(conv, x, b), rule.by_unfold(conv, x, b)]
    monkeypatch.setattr(rules, "UNFOLD_CHUNK", 1)  # one sample at a time
    got.append(rule.by_unfold(conv, x, b))
    for g in got:
        torch.testing.assert_close(g, want, rtol=0, atol=1e-6 * scale)
    # The timed choice between them serves the same values, and is kept.
    torch.testing.assert_close(
        rule.batch_grads(conv, x, b)["weight"], want, rtol=0, atol=1e-6 * scale
    )
    assert len(rule.choice) == 1


def test_cleared_calls_are_freed(torch_threads: None) -> None:
    # Each recorded output's gradient hook refers to its call, which refers to
    # the output: clearing must break that cycle, which the collector cannot see.
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    engine = HookEngine(model, list(model.named_parameters()))
    engine.arm()
    F.cross_entropy(model(torch.randn(5, 4)), torch.tensor([0, 1, 2, 0, 1])).backward()
    call = engine.layers[-1].calls[0]
    assert call.b is not None
    refs = [weakref.ref(t) for t in (call.x, call.b)]
    del call
    engine.arm()  # the next tracked step starts afresh
    gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.parametrize("preset", ["economy", "full"])
def test_tracked_steps_leave_no_reference_cycles(preset, torch_threads):
    # A cycle through a step's statistics (a closure over its StepData, a
    # gradient hook holding its call) keeps per-sample gradients and recorded
    # tensors alive until a full collection, which a torch process runs rarely:
    # memory grew ~1 MiB per tracked step on the benchmark transformer.
    import gc

    from glasscockpit.agent.instruments import PRESETS
    from tests.agent.models import CAUSAL_LM

    model, x, y = CAUSAL_LM.make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    insts = [c(schedule=always) for c in PRESETS[preset]]
    cockpit = Cockpit(model, opt, server=None, instruments=insts, budget=None)

    def step(i: int) -> None:
        opt.zero_grad()
        logits = model(x)
        losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
        with cockpit.step(i, loss=losses.mean(), losses=losses):
            losses.mean().backward()
        opt.step()

    step(0)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for i in range(1, 4):
            step(i)
        gc.collect()
        ours = [
            type(o).__name__
            for o in gc.garbage
            if isinstance(o, Tensor) or type(o).__module__.startswith("glasscockpit")
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    cockpit.close()
    assert ours == []
