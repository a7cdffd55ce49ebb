"""Per-sample instruments on transformers, residual BN nets, custom and tied modules.

Every per-sample instrument of the ``full`` configuration is compared with a
brute-force reference: one forward/backward per sample (a sample is a sequence
for the sequence models) and, for the curvature instruments, the exact GGN
diagonal from per-sample Jacobians (these models are not piecewise linear, so
the GGN, which the instruments use, differs from the Hessian).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import urllib.request
from typing import Any

import pytest
import torch
from torch import nn

from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.engine import HookEngine, func_rule
from glasscockpit.agent.engine import stats as stats_module
from glasscockpit.agent.engine.func_rule import FuncRule
from glasscockpit.agent.instruments import BY_NAME, PRESETS
from glasscockpit.agent.instruments.base import Phase
from glasscockpit.agent.lifecycle.needs import RECORDED
from glasscockpit.protocol import Readings
from tests.agent.harness import make_on_device, run_step
from tests.agent.models import (
    BROADCAST,
    CAUSAL_LM,
    CUSTOM,
    ENCODER,
    FUNCTIONAL_TIE,
    MODELS,
    PADDED,
    PADDED_VMAP,
    RES_CNN,
    RES_CNN_TRAIN,
    CausalLM,
    DropoutEncoder,
    Gated,
    token_cross_entropy,
)
from tests.agent.problems import BY_NAME as SIMPLE
from tests.agent.problems import Problem, make_id
from tests.agent.reference import REFERENCES, Data
from tests.agent.test_instruments import RTOL, assert_reading, variance_conditioning
from tests.conftest import free_port

#: The per-sample (and curvature) instruments of the ``full`` configuration.
#: (Alpha's per-sample slopes are tested in test_any_model_curvature.py.)
PER_SAMPLE = sorted(
    c.name for c in PRESETS["full"] if c.needs & RECORDED and not c.two_step
)


def ggn_diag(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Exact GGN diagonal of the mean cross-entropy, from per-sample Jacobians.

    Outputs ``[B, C]`` or token logits ``[B, T, V]`` (mean over all ``B·T``
    tokens): every output row is one softmax with its own Hessian block.
    """
    ps = list(model.parameters())
    total = torch.zeros(sum(p.numel() for p in ps), dtype=torch.float64)
    rows = 0
    for i in range(x.shape[0]):
        z = model(x[i : i + 1])[0]
        z = z.reshape(-1, z.shape[-1])  # [tokens, classes]
        for row in z:
            jac = torch.stack(
                [
                    torch.cat(
                        [
                            g.reshape(-1)
                            for g in torch.autograd.grad(row[c], ps, retain_graph=True)
                        ]
                    )
                    for c in range(row.shape[0])
                ]
            ).double()  # [C, D]
            p = torch.softmax(row.detach().double(), 0)
            hz = torch.diag(p) - torch.outer(p, p)
            total += (jac * (hz @ jac)).sum(0)
            rows += 1
    total /= rows
    return list(total.split([p.numel() for p in ps]))


def collect_any(problem: Problem, seed: int = 0, lr: float = 0.1) -> Data:
    """Per-sample gradients by a loop; GGN diagonal where the output is [B, C]."""
    torch.set_num_threads(1)
    model, x, y = problem.make(seed)
    params = list(model.named_parameters())  # tied tensors appear once
    names, ps = [n for n, _ in params], [p for _, p in params]
    per: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for i in range(x.shape[0]):
        loss_i = problem.loss_fn(model(x[i : i + 1]), y[i : i + 1])
        for n, g in zip(names, torch.autograd.grad(loss_i, ps), strict=True):
            per[n].append(g.double())
    loss = problem.loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, ps)
    curvature = (
        ggn_diag(model, x)
        if problem.loss_fn in (torch.nn.functional.cross_entropy, token_cross_entropy)
        else [torch.full(p.shape, float("nan"), dtype=torch.float64) for p in ps]
    )
    return Data(
        names=names,
        theta={n: p.detach().double() for n, p in params},
        per_sample={n: torch.stack(v) for n, v in per.items()},
        grad={n: g.double() for n, g in zip(names, grads, strict=True)},
        hess_diag={
            n: h.reshape(p.shape) for (n, p), h in zip(params, curvature, strict=True)
        },
        loss=float(loss.detach()),
        lrs=dict.fromkeys(names, lr),
    )


reference_data = functools.cache(collect_any)


def run_full(problem: Problem, instruments: Any = None) -> tuple[Cockpit, Readings]:
    """One tracked step with ``fail_mode="disable"``: readings and errors.

    By default the per-sample instruments of ``full`` plus loss and grad_norm
    (the step-size and curvature instruments have tests of their own).
    """
    if instruments is None:
        instruments = [*PER_SAMPLE, "loss", "grad_norm"]
    model, x, y = make_on_device(problem)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cockpit = Cockpit(
        model,
        opt,
        server=None,
        run="t",
        instruments=instruments,
        fail_mode="disable",
        budget=None,  # the step is tracked whatever the overhead budget says
    )
    loss = problem.loss_fn(model(x), y)
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    frames = [f for f in cockpit.transport.frames if isinstance(f, Readings)]  # type: ignore[attr-defined]
    return cockpit, frames[0]


def _tie_found_at_first_step(problem: Problem, name: str) -> bool:
    # Curvature passes run before the check that finds the functional tie:
    # TIC reads None at step 0 and is served from step 1 on (tested below).
    return name.startswith("tic_") and problem is FUNCTIONAL_TIE


def second_step(problem: Problem, inst: Any) -> Any:
    """``inst``'s reading at step 1 of two steps at the same parameters."""
    model, x, y = make_on_device(problem)
    cockpit = Cockpit(model, None, server=None, run="t", instruments=[inst])
    for step in range(2):
        model.zero_grad()
        loss = problem.loss_fn(model(x), y)
        with cockpit.step(step, loss=loss):
            loss.backward()
    cockpit.close()
    return cockpit.readings[1][inst.name]


@pytest.mark.parametrize("problem", MODELS, ids=make_id)
@pytest.mark.parametrize("name", PER_SAMPLE)
def test_matches_reference(name: str, problem: Problem, torch_threads: None) -> None:
    inst = BY_NAME[name](schedule=always)
    if _tie_found_at_first_step(problem, name):
        got = second_step(problem, inst)
    else:
        got = run_step(problem, [inst])[name]
    data = reference_data(problem)
    want = REFERENCES[name](data, inst)
    if name.startswith("grad_hist"):
        assert_counts_close(got.pop("counts"), want.pop("counts"), data, inst)
    rtol = RTOL
    if name in ("mean_gsnr", "early_stopping"):
        rtol = max(
            RTOL, 4 * torch.finfo(torch.float32).eps * variance_conditioning(data)
        )
    assert_reading(got, want, name, rtol)


def assert_counts_close(got: Any, want: Any, data: Data, inst: Any) -> None:
    """Equal totals; moved counts only for values within round-off of a bin edge.

    Some per-sample gradient entries are zero in exact arithmetic (attention's
    key bias: softmax ignores a shift) and ±1e-10 in float32, on the edge at 0.
    """
    assert float(got.sum()) == float(want.sum())
    g = data.flat(data.per_sample, True)
    if inst.name == "grad_hist_1d":
        (lo, hi), bins = inst.range, inst.bins
        near = _near_edges(g, lo, hi, bins)
    else:
        ((glo, ghi), (tlo, thi)), (ng, nt) = inst.range, inst.bins
        theta = data.flat(data.theta).expand_as(g)
        near = _near_edges(g, glo, ghi, ng) | _near_edges(theta, tlo, thi, nt)
    moved = float((got.double() - want.double()).abs().sum())
    assert moved <= 2 * int(near.sum()), (moved, int(near.sum()))


def _near_edges(v: torch.Tensor, lo: float, hi: float, bins: int) -> torch.Tensor:
    pos = (v - lo) / (hi - lo) * bins
    return (pos - pos.round()).abs() * (hi - lo) / bins < 1e-6


def engine_of(problem: Problem) -> HookEngine:
    model, _, _ = problem.make()
    return HookEngine(model, list(model.named_parameters()))


def test_rule_only_models_use_the_fast_path() -> None:
    rule_only = (SIMPLE["mlp"], SIMPLE["cnn"], SIMPLE["conv1d"], RES_CNN, ENCODER)
    for problem in rule_only:
        engine = engine_of(problem)
        assert not engine.uncovered
        assert not any(
            isinstance(layer.rule, FuncRule) and layer.names for layer in engine.layers
        ), problem
        assert all("torch.func" not in v for v in engine.coverage.values())


def test_coverage_names_the_engine_of_every_parameter() -> None:
    cov = engine_of(ENCODER).coverage
    assert cov["tok.weight"] == cov["pos.weight"] == "embedding-rule"
    for k in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
        assert cov[f"layer.self_attn.{k}"] == "attention-rule"
    assert cov["layer.norm1.weight"] == "layernorm-rule"
    assert cov["layer.linear1.weight"] == cov["head.bias"] == "linear-rule"
    cov = engine_of(CAUSAL_LM).coverage
    # Raw position parameter: whole-model re-run; the embedding tied to the
    # head: the two rules' per-sample gradients, summed.
    assert cov["pos"].startswith("torch.func (whole model)")
    assert cov["tok.weight"].startswith("tied: embedding-rule + linear-rule")
    cov = engine_of(CUSTOM).coverage
    assert cov["1.w"] == cov["1.gate"] == "torch.func (Gated)"
    assert cov["2.weight"] == "groupnorm-rule"
    assert "batchnorm-rule" in engine_of(RES_CNN).coverage["block.b1.weight"]
    cov = engine_of(PADDED_VMAP).coverage  # add_zero_attn: no exact re-run
    assert (
        cov["attn.in_proj_weight"]
        == cov["attn.out_proj.bias"]
        == ("attention (torch.func)")
    )


def test_hello_meta_reports_coverage_and_tie_found_at_first_step() -> None:
    cockpit, frame = run_full(FUNCTIONAL_TIE, ["norm_test"])
    hello = cockpit.hello.meta["coverage"]
    assert hello["tok.weight"] == "embedding-rule"  # before any step
    assert cockpit.engine is not None
    found = cockpit.engine.coverage["tok.weight"]
    assert found.startswith("torch.func (whole model)") and "tied" in found
    assert frame.values["norm_test"] is not None and not frame.errors


def test_broadcast_positions_move_to_the_model_fallback() -> None:
    cockpit, frame = run_full(BROADCAST, ["norm_test"])
    assert cockpit.hello.meta["coverage"]["pos.weight"] == "embedding-rule"
    assert cockpit.engine is not None
    found = cockpit.engine.coverage["pos.weight"]
    assert found.startswith("torch.func (whole model)")
    assert "same input for every sample" in found
    assert not frame.errors


def test_train_mode_batchnorm_is_undefined_not_wrong() -> None:
    cockpit, frame = run_full(RES_CNN_TRAIN)
    for name in PER_SAMPLE:
        if name in frame.values:
            assert frame.values[name] is None, name
            assert "BatchNorm" in frame.errors[name], name
    assert frame.values["loss"] is not None and frame.values["grad_norm"] is not None
    assert not cockpit.disabled  # reported per step, not switched off


class Noisy(Gated):
    """A custom module with raw parameters and its own dropout: no re-run."""

    def __init__(self) -> None:
        super().__init__(8, 8)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.drop(x))


def _partial() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(nn.Linear(6, 8), Noisy(), nn.GELU(), nn.Linear(8, 3))
    return model.eval(), torch.randn(5, 6), torch.randint(0, 3, (5,))


PARTIAL = Problem("partial", _partial, torch.nn.functional.cross_entropy)


@pytest.mark.parametrize("name", ["norm_test", "mean_gsnr", "grad_hist_1d"])
def test_uncovered_parameters_are_reported_and_left_out(
    name: str, torch_threads: None
) -> None:
    inst = BY_NAME[name](schedule=always)
    cockpit, frame = run_full(PARTIAL, [inst])
    cov = cockpit.hello.meta["coverage"]
    assert cov["1.w"].startswith("not covered: dropout")
    assert frame.errors[name].startswith("partial: 2 of 6 parameter tensors")
    data = reference_data(PARTIAL)
    covered = [n for n in data.names if not cov[n].startswith("not covered")]
    sub = dataclasses.replace(
        data,
        names=covered,
        per_sample={n: data.per_sample[n] for n in covered},
    )
    got = cockpit.readings[0][name]
    assert_reading(got, REFERENCES[name](sub, inst), name)


class FlatLM(nn.Module):
    """The causal LM with token logits flattened into rows inside ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.lm = CausalLM()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lm(ids)
        return out.reshape(-1, out.shape[-1])


def test_curvature_refuses_outputs_whose_rows_are_tokens(torch_threads: None) -> None:
    def build() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        _, x, y = CAUSAL_LM.build()
        return FlatLM(), x, y

    flat = Problem(
        "flat_lm",
        build,
        lambda z, y: torch.nn.functional.cross_entropy(z, y.reshape(-1)),
    )
    _, frame = run_full(flat, [BY_NAME["tic_diag"](schedule=always)])
    assert frame.values["tic_diag"] is None
    assert "one output row per sample" in frame.errors["tic_diag"]


def test_loss_term_on_a_parameter_is_not_covered(torch_threads: None) -> None:
    # The penalty's gradient belongs to no sample: neither the layer rule nor
    # the whole-model re-run explains .grad, so the parameter is reported.
    model, x, y = SIMPLE["mlp"].make()
    cockpit = Cockpit(
        model,
        None,
        server=None,
        run="t",
        instruments=[BY_NAME["norm_test"](schedule=always)],
    )
    first = model[0].weight
    loss = torch.nn.functional.cross_entropy(model(x), y) + first.square().sum()
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    assert cockpit.engine is not None
    assert cockpit.engine.coverage["0.weight"].startswith("not covered: per-sample")
    got = cockpit.readings[0]["norm_test"]
    assert "0.weight" not in got and "2.weight" in got
    frame = [f for f in cockpit.transport.frames if isinstance(f, Readings)][0]  # type: ignore[attr-defined]
    assert frame.errors["norm_test"].startswith("partial: 1 of 4")


def test_curvature_skips_the_step_that_finds_a_tie(torch_threads: None) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) @ self.fc.weight  # weight also used outside fc

    def build() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        return Tied(), torch.randn(5, 4), torch.randint(0, 4, (5,))

    problem = Problem("tied", build, torch.nn.functional.cross_entropy)
    model, x, y = problem.make()
    inst = BY_NAME["tic_diag"](schedule=always)
    cockpit = Cockpit(model, None, server=None, run="t", instruments=[inst])
    for step in range(2):  # no optimizer: the same parameters at both steps
        model.zero_grad()
        loss = problem.loss_fn(model(x), y)
        with cockpit.step(step, loss=loss):
            loss.backward()
    cockpit.close()
    frames = [f for f in cockpit.transport.frames if isinstance(f, Readings)]  # type: ignore[attr-defined]
    assert frames[0].values["tic_diag"] is None
    assert "used outside their module" in frames[0].errors["tic_diag"]
    want = REFERENCES["tic_diag"](reference_data(problem), inst)
    assert_reading(cockpit.readings[1]["tic_diag"], want, "tic_diag")


def test_server_serves_coverage_and_partial_errors(torch_threads: None) -> None:
    # The dashboard reads run metadata and errors through this REST endpoint.
    model, x, y = PARTIAL.make()
    from tests.server.harness import live_server  # server deps: this test only

    with live_server(free_port()) as s:
        cockpit = Cockpit(
            model,
            None,
            server=s.ws,
            run="coverage-run",
            instruments=[BY_NAME["norm_test"](schedule=always)],
        )
        loss = PARTIAL.loss_fn(model(x), y)
        with cockpit.step(0, loss=loss):
            loss.backward()
        cockpit.close()
        with urllib.request.urlopen(s.http + "/v1/runs/coverage-run", timeout=5) as r:
            detail = json.loads(r.read())
    assert detail["meta"]["coverage"]["0.weight"] == "linear-rule"
    assert detail["meta"]["coverage"]["1.w"].startswith("not covered: dropout")
    assert detail["errors"]["norm_test"].startswith("partial: 2 of 6")


@pytest.mark.parametrize("problem", MODELS, ids=make_id)
def test_uncached_and_chunked_paths_match_reference(
    problem: Problem, torch_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No per-step cache (each statistic from its rule's own reduction, built a
    # few samples at a time) and fallback re-runs in chunks of a few samples:
    # the paths large models take.
    monkeypatch.setattr(stats_module, "CACHE_ELEMENTS", 0)
    monkeypatch.setattr(stats_module, "CHUNK_ELEMENTS", 500)
    monkeypatch.setattr(func_rule, "MAX_ELEMENTS", 64)
    names = ["norm_test", "inner_test", "mean_gsnr", "grad_hist_1d"]
    if not _tie_found_at_first_step(problem, "tic_diag"):
        names.append("tic_diag")
    # A histogram chunk of ~one sample: samples are sliced with their arguments.
    insts = [
        BY_NAME[n](schedule=always, chunk=100)
        if n == "grad_hist_1d"
        else BY_NAME[n](schedule=always)
        for n in names
    ]
    got = run_step(problem, insts)
    data = reference_data(problem)
    for inst in insts:
        want = REFERENCES[inst.name](data, inst)
        reading = got[inst.name]
        if inst.name == "grad_hist_1d":
            assert_counts_close(reading.pop("counts"), want.pop("counts"), data, inst)
        rtol = RTOL
        if inst.name == "mean_gsnr":
            rtol = max(
                rtol, 4 * torch.finfo(torch.float32).eps * variance_conditioning(data)
            )
        assert_reading(reading, want, inst.name, rtol)


@pytest.mark.parametrize("problem", [ENCODER, CAUSAL_LM, PADDED], ids=make_id)
def test_attention_reads_projection_gradients_from_the_users_backward(
    problem: Problem, torch_threads: None
) -> None:
    # Self-attention calls take [∂q ∂k ∂v] and the merged heads from the user's
    # own backward pass; they must equal what re-running the attention gives.
    model, x, y = problem.make()
    engine = HookEngine(model, list(model.named_parameters()))
    engine.arm()
    problem.loss_fn(model(x), y).backward()
    layers = [la for la in engine.layers if la.rule.label == "attention-rule"]
    assert layers
    for layer in layers:
        (call,) = layer.calls
        assert call.b is not None and "qkv_grad" in call.cache
        got = layer.rule.bind(call).batch_grads(layer.module, call.x, call.b)
        rerun = dataclasses.replace(call, cache={})
        want = layer.rule.bind(rerun).batch_grads(layer.module, call.x, call.b)
        assert "attention" in rerun.cache  # the re-run did run
        assert got.keys() == want.keys()
        for k, g in got.items():
            torch.testing.assert_close(g, want[k], rtol=1e-5, atol=1e-7)
        # Another output gradient (a curvature pass, a rescaled b): re-run.
        other = layer.rule.bind(call).batch_grads(layer.module, call.x, 2 * call.b)
        assert "attention" in call.cache
        for k, g in other.items():
            torch.testing.assert_close(g, 2 * want[k], rtol=1e-5, atol=1e-7)


def test_alpha_differentiates_the_graph_when_some_parameters_are_not_covered(
    torch_threads: None,
) -> None:
    # α's slopes along the update need every parameter's per-sample gradient:
    # without them the engine cannot serve it, the loss graph can (references in
    # test_step_size.py::test_alpha_falls_back_to_the_loss_graph_...).
    model, x, y = PARTIAL.make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    alpha = BY_NAME["alpha"](schedule=always)
    cockpit = Cockpit(model, opt, server=None, run="t", instruments=[alpha])
    for step in range(2):
        opt.zero_grad()
        out = model(x)
        losses = torch.nn.functional.cross_entropy(out, y, reduction="none")
        with cockpit.step(step, loss=losses.mean(), losses=losses):
            losses.mean().backward()
        opt.step()
    cockpit.close()
    assert alpha.phase is Phase.BEFORE_BACKWARD
    assert isinstance(cockpit.readings[0]["alpha"], float)
    assert "alpha" not in cockpit.disabled


@pytest.mark.parametrize("path", ["kept", "chunked"])
def test_attention_with_active_dropout_is_served_from_the_users_backward(
    path: str, torch_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No re-run reproduces the dropout masks; the projections' gradients
    # captured in the user's backward went through them. Reference: per-sample
    # gradients from the same forward pass (same masks), one sample at a time.
    # "chunked": nothing kept, the histogram reads a few samples at a time
    # (the captures are sliced for them).
    if path == "chunked":
        monkeypatch.setattr(stats_module, "CACHE_ELEMENTS", 0)
    torch.manual_seed(0)
    model = DropoutEncoder().train()
    x, y = torch.randint(0, 11, (5, 4)), torch.randint(0, 3, (5,))
    names = ("norm_test", "inner_test", "grad_hist_1d", "tic_diag")
    insts = [BY_NAME[n](schedule=always) for n in names]
    if path == "chunked":
        insts[2] = BY_NAME["grad_hist_1d"](schedule=always, chunk=300)
    cockpit = Cockpit(model, None, server=None, instruments=insts, fail_mode="raise")
    losses = nn.functional.cross_entropy(model(x), y, reduction="none")
    loss = losses.mean()
    with cockpit.step(0, loss=loss, losses=losses):
        loss.backward(retain_graph=True)
    cockpit.close()
    params = dict(model.named_parameters())
    rows = [
        torch.autograd.grad(v, list(params.values()), retain_graph=True) for v in losses
    ]
    data = Data(
        names=list(params),
        theta={n: p.detach().double() for n, p in params.items()},
        per_sample={
            n: torch.stack([r[i] for r in rows]).double() for i, n in enumerate(params)
        },
        grad={n: p.grad.detach().double() for n, p in params.items()},
        hess_diag={},
        loss=float(loss.detach()),
        lrs={},
    )
    coverage = cockpit.engine.coverage  # type: ignore[attr-defined]
    assert coverage["layer.self_attn.in_proj_weight"] == "attention-rule"
    got = cockpit.readings[0]
    for name, inst in zip(names[:2], insts, strict=False):
        assert_reading(got[name], REFERENCES[name](data, inst), name)
    want = REFERENCES["grad_hist_1d"](data, insts[2])
    assert_counts_close(got["grad_hist_1d"]["counts"], want["counts"], data, insts[2])
    # The curvature passes backpropagate to the parameters (captures per pass).
    assert got["tic_diag"] is not None and got["tic_diag"]["total"] > 0


def _smoothed(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> Any:
    return nn.functional.cross_entropy(out, y, reduction=reduction, label_smoothing=0.1)


def _smoothed_then_mean(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean"):
    per = _smoothed(out, y, "none")
    return per.mean() if reduction == "mean" else per


def _tanh_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))
    return model, torch.randn(7, 5), torch.randint(0, 4, (7,))


@pytest.mark.parametrize("loss_fn", [_smoothed, _smoothed_then_mean], ids=str)
@pytest.mark.parametrize("name", ["tic_diag", "tic_trace"])
def test_tic_with_label_smoothing_matches_reference(
    name: str, loss_fn: Any, torch_threads: None
) -> None:
    # (1 − ε)·NLL + (ε/C)·Σ_c −log p_c has the plain cross-entropy's Hessian
    # in the logits: the GGN diagonal is the unsmoothed one; the per-sample
    # gradients are those of the smoothed loss.
    problem = Problem("smoothed", _tanh_mlp, loss_fn)
    inst = BY_NAME[name](schedule=always)
    got = run_step(problem, [inst])[name]
    data = collect_any(problem)
    model, x, _ = problem.make()
    data.hess_diag = {
        n: h.reshape(p.shape)
        for (n, p), h in zip(model.named_parameters(), ggn_diag(model, x), strict=True)
    }
    assert_reading(got, REFERENCES[name](data, inst), name)
