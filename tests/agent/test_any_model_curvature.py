"""Hessian and step-size instruments on the issue-7 models, against explicit Hessians.

HessTrace (Hutchinson), HessMaxEV (Lanczos) and Alpha differentiate through the
backward graph of the user's forward pass; fused attention kernels have no
derivative of their backward, so the cockpit runs exactly those forward passes
under the math kernel (``agent/curvature/double_backward_kernels.py``).
References: the explicit Hessian
of the mean loss by ``torch.autograd.functional.hessian`` in float64, and
per-sample gradients by a loop (a sample is a sequence for the sequence models).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F  # noqa: N812
from torch.nn.attention import SDPBackend, sdpa_kernel

from glasscockpit.agent import Cockpit, always, every
from glasscockpit.agent.curvature import ggn_diagonal as engine_curvature
from glasscockpit.agent.engine import HookEngine, diag_ggn
from glasscockpit.agent.instruments import (
    Alpha,
    HessMaxEV,
    HessTrace,
    Instrument,
    TICDiag,
)
from glasscockpit.protocol import Readings
from tests.agent.models import (
    CAUSAL_LM,
    CUSTOM,
    ENCODER,
    RES_CNN,
    RES_CNN_TRAIN,
    SEQ,
    VOCAB,
)
from tests.agent.problems import BY_NAME as SIMPLE
from tests.agent.problems import Problem, make_id
from tests.agent.reference_curvature import Trace, alpha_reference

FLASH = "ScaledDotProductFlashAttentionForCpuBackward0"


class SdpaLM(nn.Module):
    """GPT-style block written by hand: raw q/k/v/o parameters, ``F.sdpa`` causal."""

    def __init__(self, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(VOCAB, d)
        self.qkv = nn.Parameter(torch.randn(d, 3 * d) / d**0.5)
        self.o = nn.Parameter(torch.randn(d, d) / d**0.5)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.tok(ids)
        b, t, d = h.shape
        q, k, v = (h @ self.qkv).split(d, dim=-1)

        def split(z: Tensor) -> Tensor:
            return z.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)
        return self.head(h + a.transpose(1, 2).reshape(b, t, d) @ self.o)


def _sdpa_lm() -> tuple[nn.Module, Tensor, Tensor]:
    ids = torch.randint(0, VOCAB, (3, SEQ + 1))
    return SdpaLM(), ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


SDPA_LM = Problem("sdpa_lm", _sdpa_lm, CAUSAL_LM.loss_fn)
#: The four models of issue 7 (BatchNorm in eval and train mode) and F.sdpa.
MODELS = (ENCODER, CAUSAL_LM, RES_CNN, RES_CNN_TRAIN, CUSTOM, SDPA_LM)


def sample_losses(out: Tensor, y: Tensor) -> Tensor:
    """[B]: each sample's mean cross-entropy (over its tokens for [B, T, V])."""
    if out.dim() == 3:
        return F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1)
    return F.cross_entropy(out, y, reduction="none")


def explicit_hessian(
    problem: Problem, model: nn.Module, x: Tensor, y: Tensor
) -> Tensor:
    """[D, D] Hessian of the mean loss in float64, parameters in tracked order."""
    m = copy.deepcopy(model).double()
    named = list(m.named_parameters())  # a tied tensor appears once
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    xx = x.double() if x.is_floating_point() else x
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss_of(flat: Tensor) -> Tensor:
        parts = flat.split([s.numel() for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return problem.loss_fn(functional_call(m, params, (xx,)), y)

    with sdpa_kernel([SDPBackend.MATH]):  # the reference differentiates twice too
        h: Tensor = torch.autograd.functional.hessian(loss_of, flat0)
    return h


def probe_traces(
    model: nn.Module, h: Tensor, probes: int, gen: torch.Generator
) -> Tensor:
    """[k, L] vᵀHv per parameter block for the next probes HessTrace draws.

    ``gen`` is seeded like HessTrace's and kept over its steps.
    """
    shapes = [p.shape for p in model.parameters()]
    rows = []
    for _ in range(probes):
        v = [torch.randint(0, 2, s, generator=gen).double() * 2 - 1 for s in shapes]
        flat = torch.cat([t.reshape(-1) for t in v])
        hv = (h @ flat).split([s.numel() for s in shapes])
        rows.append(
            torch.stack([(a.reshape(-1) @ b) for a, b in zip(v, hv, strict=True)])
        )
    return torch.stack(rows)


def graph_names(t: Tensor) -> set[str]:
    """Class names of every autograd node behind ``t``."""
    seen: set[int] = set()
    names: set[str] = set()
    stack = [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        names.add(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    return names


def _train(
    problem: Problem, instruments: list[Instrument], steps: int
) -> Iterator[tuple[int, nn.Module, Tensor, Tensor, Tensor, Tensor]]:
    """Yields (step, model, x, y, out, loss) before each tracked backward."""
    model, x, y = problem.make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cockpit = Cockpit(
        model, opt, server=None, run="t", instruments=instruments, fail_mode="raise"
    )
    for step in range(steps):
        opt.zero_grad()
        out = model(x)
        loss = problem.loss_fn(out, y)
        yield step, model, x, y, out, loss
        with cockpit.step(step, loss=loss, losses=sample_losses(out, y)):
            loss.backward()
        opt.step()
    cockpit.close()
    _train.readings = cockpit.readings  # type: ignore[attr-defined]


@pytest.mark.parametrize("problem", MODELS, ids=make_id)
def test_hessian_instruments_match_explicit_hessian(
    problem: Problem, torch_threads: None
) -> None:
    probes = 6
    trace = HessTrace(schedule=always, method="hutchinson", probes=probes)
    top = HessMaxEV(schedule=always, rtol=1e-4)
    hessians = []
    for _, model, x, y, _, _ in _train(problem, [trace, top], steps=2):
        hessians.append((explicit_hessian(problem, model, x, y), copy.deepcopy(model)))
    readings = _train.readings  # type: ignore[attr-defined]
    gen = torch.Generator().manual_seed(0)
    for step, (h, model) in enumerate(hessians):
        got = readings[step]
        ev = torch.linalg.eigvalsh(h)
        lam, rho = float(ev[-1]), float(ev.abs().max())
        # HessMaxEV's stated tolerance: residual ≤ rtol·ρ bounds the Ritz value's
        # error; float32 Hessian-vector products add ~1e-5 ρ on these models.
        assert abs(got["hess_max_ev"] - lam) <= 1e-4 * rho + 1e-5 * rho, (step, lam)
        # Same probes on the explicit Hessian: equal up to float32 products.
        rows = probe_traces(model, h, probes, gen)
        names = [n for n, _ in model.named_parameters()]
        scale = float(rows.abs().sum(1).max())
        for i, n in enumerate(names):
            want = float(rows[:, i].mean())
            assert abs(got["hess_trace"][n] - want) <= 1e-5 * scale, (step, n)
        total = got["hess_trace"]["total"]
        assert abs(total - float(rows.sum(1).mean())) <= 1e-5 * scale
        assert got["hess_trace"]["stderr"] == pytest.approx(
            float(rows.sum(1).std() / probes**0.5), rel=1e-3
        )
        # And the estimate is where its standard error says the trace is.
        assert abs(total - float(h.trace())) <= 4 * got["hess_trace"]["stderr"]


def per_sample_grads(
    problem: Problem, model: nn.Module, x: Tensor, y: Tensor
) -> Tensor:
    """[B, D] gradients of each sequence's (image's) own loss, by a loop."""
    ps = list(model.parameters())
    rows = []
    for i in range(x.shape[0]):
        g = torch.autograd.grad(problem.loss_fn(model(x[i : i + 1]), y[i : i + 1]), ps)
        rows.append(torch.cat([t.reshape(-1) for t in g]).double())
    return torch.stack(rows)


@pytest.mark.parametrize(
    "problem", [p for p in MODELS if p is not RES_CNN_TRAIN], ids=make_id
)
def test_alpha_matches_per_sample_reference(
    problem: Problem, torch_threads: None
) -> None:
    steps = 3
    ref = Trace()
    # References on a twin without the cockpit's hooks (they would record).
    twin = problem.make()[0]
    for _, model, x, y, out, _ in _train(problem, [Alpha(schedule=always)], steps):
        twin.load_state_dict(model.state_dict())
        ref.thetas.append(
            torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
        )
        ref.losses.append(sample_losses(out, y).detach().double())
        ref.sample_grads.append(per_sample_grads(problem, twin, x, y))
    ref.thetas.append(
        torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    )
    got = _train.readings  # type: ignore[attr-defined]
    for t in range(steps - 1):
        assert got[t]["alpha"] == pytest.approx(
            alpha_reference(ref, t), rel=1e-4, abs=1e-5
        )


def test_alpha_is_undefined_under_train_mode_batchnorm(torch_threads: None) -> None:
    model, x, y = RES_CNN_TRAIN.make()
    cockpit = Cockpit(
        model, None, server=None, run="t", instruments=[Alpha(schedule=always)]
    )
    for step in range(2):
        out = model(x)
        loss = F.cross_entropy(out, y)
        with cockpit.step(step, loss=loss, losses=sample_losses(out, y)):
            loss.backward()
    cockpit.close()
    frames = cockpit.transport.frames  # type: ignore[attr-defined]
    errors = [f.errors.get("alpha", "") for f in frames if hasattr(f, "errors")]
    # Every train-mode BatchNorm is named.
    assert any("BatchNorm 'bn', 'block.b1'" in e and "train mode" in e for e in errors)
    assert all(r.get("alpha") is None for r in cockpit.readings.values())
    assert "alpha" not in cockpit.disabled


@pytest.mark.parametrize("problem", [ENCODER, SDPA_LM], ids=make_id)
@pytest.mark.parametrize(
    ("make", "twice"),
    [
        # Alpha's slopes come from the hook engine: no second derivative.
        (lambda: Alpha(schedule=every(3)), set()),
        (lambda: HessMaxEV(schedule=every(2)), {0, 2, 4}),
        (lambda: HessTrace(schedule=every(3), probes=2), {0, 3}),
    ],
    ids=["alpha", "hess_max_ev", "hess_trace"],
)
def test_math_kernel_only_on_steps_that_differentiate_twice(
    problem: Problem, make, twice: set[int], torch_threads: None
) -> None:
    inst = make()
    math_steps = set()
    for step, *_, loss in _train(problem, [inst], steps=5):
        names = graph_names(loss)
        if FLASH not in names:
            assert "SafeSoftmaxBackward0" in names  # attention by the math kernel
            math_steps.add(step)
        # The fused kernels are enabled again outside those forward passes.
        assert torch.backends.cuda.flash_sdp_enabled()
    assert math_steps == twice
    readings = _train.readings  # type: ignore[attr-defined]
    due = [s for s in range(5) if inst.is_due(s)]
    assert all(readings[s][inst.name] is not None for s in due)


# -- exact GGN diagonal of token-level losses (TIC on sequence models) ----------------
def _token_losses() -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    v = VOCAB
    return {
        "flat": lambda z, y: F.cross_entropy(z.reshape(-1, v), y.reshape(-1)),
        "b_v_t": lambda z, y: F.cross_entropy(z.transpose(1, 2), y),
        "ignore_index": lambda z, y: F.cross_entropy(
            z.reshape(-1, v), y.reshape(-1), ignore_index=0
        ),
        "sliced": lambda z, y: F.cross_entropy(
            z[:, 1:].reshape(-1, v), y[:, 1:].reshape(-1)
        ),
        "sum": lambda z, y: F.cross_entropy(
            z.reshape(-1, v), y.reshape(-1), reduction="sum"
        ),
        "float64": lambda z, y: F.cross_entropy(
            z.double().reshape(-1, v), y.reshape(-1)
        ),
    }


def ggn_of_output(model: nn.Module, x: Tensor, y: Tensor, loss_fn) -> list[Tensor]:
    """diag(Jᵀ H_z J) with J = ∂z/∂θ [N, D] and H_z the loss Hessian [N, N]."""
    ps = list(model.parameters())
    z = model(x)
    rows = [
        torch.cat(
            [g.reshape(-1) for g in torch.autograd.grad(e, ps, retain_graph=True)]
        )
        for e in z.reshape(-1)
    ]
    jac = torch.stack(rows).double()
    h_z = torch.autograd.functional.hessian(
        lambda out: loss_fn(out.view_as(z), y), z.detach().double().reshape(-1)
    )
    diag = (jac * (h_z @ jac)).sum(0)
    return list(diag.split([p.numel() for p in ps]))


@pytest.mark.parametrize("layout", sorted(_token_losses()))
def test_token_level_ggn_diagonal_is_exact(layout: str, torch_threads: None) -> None:
    loss_fn = _token_losses()[layout]
    model, x, y = CAUSAL_LM.make()
    y[0, 2:4] = 0  # a few targets equal to the ignored index
    engine = HookEngine(model, list(model.named_parameters()))
    engine.arm()
    got = diag_ggn(engine, loss_fn(model(x), y))
    want = ggn_of_output(model, x, y, loss_fn)
    scale = max(float(w.abs().max()) for w in want)
    for (n, _), w in zip(model.named_parameters(), want, strict=True):
        err = float((got[n].double().reshape(-1) - w).abs().max())
        assert err <= 1e-5 * scale, (n, err, scale)


def test_math_kernel_is_left_when_the_forward_raises(torch_threads: None) -> None:
    class Failing(SdpaLM):
        fail = False

        def forward(self, ids: Tensor) -> Tensor:
            out = super().forward(ids)
            if self.fail:
                raise RuntimeError("boom")
            return out

    model = Failing()
    cockpit = Cockpit(model, None, server=None, instruments=[HessMaxEV()])
    seen: list[bool] = []
    model.tok.register_forward_hook(
        lambda *_: seen.append(torch.backends.cuda.flash_sdp_enabled())
    )
    model.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        model(torch.zeros(2, SEQ, dtype=torch.long))
    assert seen == [False]  # inside: the math kernel only (first forward)
    assert torch.backends.cuda.flash_sdp_enabled()  # left on the way out
    cockpit.close()
    model.fail = False
    model(torch.zeros(2, SEQ, dtype=torch.long))  # hooks removed: fused kernel
    assert seen == [False, True]


@pytest.mark.parametrize("problem", [CAUSAL_LM, ENCODER, SIMPLE["mse"]], ids=make_id)
def test_monte_carlo_ggn_diagonal_is_unbiased(
    problem: Problem, torch_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Beyond MAX_PASSES the engine samples passes; their mean is the exact
    # diagonal: every parameter block within 4 standard errors of 300 draws.
    model, x, y = problem.make()
    engine = HookEngine(model, list(model.named_parameters()))
    engine.arm()
    loss = problem.loss_fn(model(x), y)
    exact = diag_ggn(engine, loss)
    monkeypatch.setattr(engine_curvature, "MAX_PASSES", 1)
    monkeypatch.setattr(engine_curvature, "MC_DRAWS", 1)
    notes: list[str] = []
    draws = [diag_ggn(engine, loss, notes) for _ in range(300)]
    assert notes[0].startswith("estimate: Monte-Carlo GGN diagonal from 1 sampled")
    for name, want in exact.items():
        blocks = torch.stack([d[name].double().sum() for d in draws])
        se = float(blocks.std() / len(draws) ** 0.5)
        tol = 4 * se + 1e-5 * abs(float(want.sum()))  # some blocks are exact
        assert abs(float(blocks.mean()) - float(want.sum())) <= tol, name
    # And per entry, across the whole model (entries are noisier than blocks).
    flat = torch.stack([torch.cat([d[n].reshape(-1) for n in exact]) for d in draws])
    want = torch.cat([v.reshape(-1) for v in exact.values()])
    se = flat.double().std(0) / len(draws) ** 0.5
    err = (flat.double().mean(0) - want.double()).abs()
    # Entries that are zero up to round-off (attention's key bias) get an
    # absolute floor of 1e-6 of the mean entry.
    floor = 1e-6 * float(want.double().abs().mean())
    inside = err <= 4 * se + 1e-5 * want.double().abs() + floor
    assert float(inside.double().mean()) >= 0.99


def test_tic_on_a_large_vocabulary_reads_an_estimate_with_a_note(
    torch_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_curvature, "MAX_PASSES", 10)
    model, x, y = CAUSAL_LM.make()
    inst = TICDiag(schedule=always)
    cockpit = Cockpit(model, None, server=None, run="t", instruments=[inst])
    loss = CAUSAL_LM.loss_fn(model(x), y)
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    frame = next(f for f in cockpit.transport.frames if isinstance(f, Readings))  # type: ignore[attr-defined]
    assert frame.errors["tic_diag"].startswith(
        f"estimate: Monte-Carlo GGN diagonal from {engine_curvature.MC_DRAWS} "
        f"sampled passes (the exact one needs {SEQ * VOCAB} > MAX_PASSES = 10)"
    )
    assert cockpit.readings[0]["tic_diag"]["total"] > 0
