"""HessMaxEV and HessTrace against explicit Hessians of tiny seeded models."""

from __future__ import annotations

from collections.abc import Callable

import backpack
import pytest
import torch
from backpack.extensions import BatchGrad
from torch import nn

from glasscockpit.agent import Cockpit, always, every
from glasscockpit.agent.curvature.hessian_products import HessianOperator, lanczos_top
from glasscockpit.agent.instruments import Alpha, HessMaxEV, HessTrace
from tests.agent.harness import one_step
from tests.agent.reference_curvature import (
    PROBLEMS,
    as_float_dict,
    block_traces,
    hessian,
    hutchinson_same_probes,
    model_at,
    train,
)

STEPS = 3
#: torch warns about BackPACK's hooks on a first layer whose input needs no grad.
BACKPACK_HOOK_WARNING = "ignore:Full backward hook is firing:UserWarning"


def _spectral(h: torch.Tensor) -> tuple[float, float]:
    ev = torch.linalg.eigvalsh(h)
    return float(ev[-1]), float(ev.abs().max())


@pytest.mark.parametrize("problem", PROBLEMS, ids=repr)
def test_hess_max_ev_matches_eigvalsh(problem, torch_threads):
    inst = HessMaxEV(schedule=every(1), rtol=1e-4)
    cockpit, trace, model = train(problem, "sgd", [inst], steps=STEPS)
    got = cockpit.readings
    for t in range(STEPS):
        lam, rho = _spectral(hessian(model_at(model, trace.thetas[t]), problem, t))
        # Stated tolerance: the top Ritz pair's residual ≤ rtol · ρ (ρ = spectral
        # radius); the Ritz value error is at most that residual. Float32
        # Hessian-vector products add ~1e-6 ρ.
        assert abs(got[t]["hess_max_ev"] - lam) <= 1e-4 * rho + 1e-5 * rho


class _Quadratic(nn.Module):
    """θ with loss ½θᵀAθ + bᵀθ: a saddle whose most negative eigenvalue dominates."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        q, _ = torch.linalg.qr(torch.randn(6, 6))
        self.a = q @ torch.diag(torch.tensor([-5.0, -1.0, 0.5, 1.0, 2.0, 3.0])) @ q.T
        self.theta = nn.Parameter(torch.randn(6))

    def forward(self) -> torch.Tensor:
        return 0.5 * self.theta @ self.a @ self.theta + self.theta.sum()


def test_hess_max_ev_is_largest_algebraic_not_largest_magnitude():
    model = _Quadratic()
    cockpit = Cockpit(
        model,
        None,
        server=None,
        budget=None,
        instruments=[HessMaxEV(schedule=always)],
        fail_mode="raise",
    )
    loss = model()
    with cockpit.step(0, loss=loss):
        loss.backward()
    # Power iteration (Cockpit) would report -5, the eigenvalue of largest |λ|.
    assert cockpit.readings[0]["hess_max_ev"] == pytest.approx(3.0, abs=5e-4)


def test_hess_max_ev_negative_spectrum_keeps_sign():
    model = _Quadratic()
    model.a = -model.a.abs().diag().diag() - torch.eye(6)  # eigenvalues all < 0
    cockpit = Cockpit(
        model,
        None,
        server=None,
        budget=None,
        instruments=[HessMaxEV(schedule=always)],
        fail_mode="raise",
    )
    loss = model()
    with cockpit.step(0, loss=loss):
        loss.backward()
    expected = float(torch.linalg.eigvalsh(model.a)[-1])
    assert expected < 0
    assert cockpit.readings[0]["hess_max_ev"] == pytest.approx(expected, rel=1e-4)


def test_lanczos_reports_non_convergence_within_max_iter():
    torch.manual_seed(0)
    h = torch.diag(torch.linspace(1.0, 1.001, 200)).double()
    top = lanczos_top(lambda v: h @ v, torch.ones(200, dtype=torch.float64), 1e-12, 3)
    assert not top.converged and top.matvecs == 3
    assert top.value <= 1.001 + 1e-12


@pytest.mark.parametrize("problem", PROBLEMS, ids=repr)
def test_hess_trace_equals_mean_of_its_probes(problem, torch_threads):
    inst = HessTrace(schedule=every(1), method="hutchinson", probes=5, seed=7)
    cockpit, trace, model = train(problem, "momentum", [inst], steps=STEPS)
    got = cockpit.readings
    for t in range(STEPS):
        h = hessian(model_at(model, trace.thetas[t]), problem, t)
        # The private generator continues across steps: draw the earlier probes.
        ref = hutchinson_same_probes(model, h, 5 * (t + 1), seed=7)
        ref_t = hutchinson_same_probes(model, h, 5 * t, seed=7) if t else None
        reading = as_float_dict(got[t]["hess_trace"])
        assert reading.keys() == {*ref.keys()}
        expected = _last_probes(ref, ref_t, t, 5)
        for key, value in expected.items():
            # float32 HVPs summed in float64; rtol 1e-4 plus a floor at the scale.
            assert reading[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def _last_probes(ref, ref_before, t, k):
    """Mean over probes t·k .. (t+1)·k − 1 from means over the first n probes."""
    if ref_before is None:
        return ref
    out = {}
    for key in ref:
        if key == "stderr":
            continue
        out[key] = (ref[key] * (t + 1) * k - ref_before[key] * t * k) / k
    return out


def test_hess_trace_is_unbiased_within_its_stderr(torch_threads):
    problem = PROBLEMS[1]
    inst = HessTrace(probes=400, seed=1)
    cockpit, trace, model = train(problem, None, [inst], steps=1)
    h = hessian(model_at(model, trace.thetas[0]), problem, 0)
    exact = block_traces(model, h)
    reading = as_float_dict(cockpit.readings[0]["hess_trace"])
    assert abs(reading["total"] - exact["total"]) <= 4 * reading["stderr"]
    assert reading["stderr"] > 0


def test_two_instances_with_different_settings_coexist(torch_threads):
    problem = PROBLEMS[1]
    insts = [
        HessTrace(label="k3", probes=3, seed=1),
        HessTrace(label="k8", probes=8, seed=2),
        HessMaxEV(label="loose", rtol=1e-2),
        HessMaxEV(label="tight", rtol=1e-6),
    ]
    cockpit, trace, model = train(problem, "adam", insts, steps=1)
    r = cockpit.readings[0]
    h = hessian(model_at(model, trace.thetas[0]), problem, 0)
    lam, rho = _spectral(h)
    assert r["hess_max_ev:tight"] == pytest.approx(lam, abs=2e-5 * rho)
    assert abs(r["hess_max_ev:loose"] - lam) <= 1e-2 * rho
    for inst, probes, seed in ((insts[0], 3, 1), (insts[1], 8, 2)):
        ref = hutchinson_same_probes(model, h, probes, seed)
        assert as_float_dict(r[inst.key])["total"] == pytest.approx(
            ref["total"], rel=1e-4
        )


def test_curvature_leaves_global_rng_and_user_gradients_untouched(torch_threads):
    problem = PROBLEMS[2]
    model = problem.make_model()
    twin = problem.make_model()
    cockpit = Cockpit(
        model,
        None,
        server=None,
        budget=None,
        instruments=[HessMaxEV(), HessTrace(probes=4)],
        fail_mode="raise",
    )
    x, y = problem.make_batch(0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    loss = problem.sample_losses(model(x), y).mean()
    with cockpit.step(0, loss=loss) as tracked:
        loss.backward()
    assert tracked
    assert torch.equal(torch.get_rng_state(), before)
    problem.sample_losses(twin(x), y).mean().backward()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    assert "hess_max_ev" in cockpit.readings[0]


def test_untracked_steps_differentiate_nothing_extra(torch_threads):
    problem = PROBLEMS[1]
    model = problem.make_model()
    cockpit = Cockpit(
        model,
        None,
        server=None,
        budget=None,
        instruments=[HessMaxEV(schedule=every(2)), HessTrace(schedule=every(2))],
    )
    calls = []
    for step in range(3):
        x, y = problem.make_batch(step)
        loss = problem.sample_losses(model(x), y).mean()
        count = [0]
        loss.register_hook(lambda g, c=count: c.__setitem__(0, c[0] + 1))
        with cockpit.step(step, loss=loss):
            loss.backward()
        calls.append(count[0])
    # Step 1 is untracked: only the user's backward passes through the loss.
    assert calls[1] == 1
    assert calls[0] > 1 and calls[2] > 1


def test_hessian_operator_is_symmetric_and_exact(torch_threads):
    problem = PROBLEMS[2]
    model = problem.make_model()
    x, y = problem.make_batch(0)
    loss = problem.sample_losses(model(x), y).mean()
    op = HessianOperator(loss, list(model.parameters()))
    h = hessian(model, problem, 0)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(op.numel, generator=g)
    w = torch.randn(op.numel, generator=g)
    hv = op.flat_matvec(v).double()
    assert torch.allclose(hv, h @ v.double(), rtol=1e-4, atol=1e-6 * h.abs().max())
    assert float(w.double() @ hv) == pytest.approx(
        float(v.double() @ op.flat_matvec(w).double()), rel=1e-4
    )


@pytest.mark.filterwarnings(BACKPACK_HOOK_WARNING)
@pytest.mark.parametrize("problem", PROBLEMS, ids=repr)
def test_hess_trace_is_exact_with_backpack(problem, torch_threads):
    insts = [HessTrace(schedule=every(1)), HessTrace(label="e", method="exact")]
    cockpit, trace, model = train(problem, "sgd", insts, steps=2, extend=True)
    for t in range(2):
        h = hessian(model_at(model, trace.thetas[t]), problem, t)
        expected = block_traces(model, h)
        reading = cockpit.readings[t]["hess_trace"]
        assert reading["stderr"] is None  # exact: no sampling error
        got = as_float_dict(reading)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            # float32 BackPACK against a float64 Hessian: rtol 1e-4.
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert as_float_dict(cockpit.readings[0]["hess_trace:e"]) == pytest.approx(
        as_float_dict(cockpit.readings[0]["hess_trace"]), rel=1e-6
    )


def test_hess_trace_exact_fails_clearly_without_backpack(torch_threads):
    with pytest.raises(RuntimeError, match="extend the model and the loss module"):
        train(PROBLEMS[1], "sgd", [HessTrace(method="exact")], steps=1)


@pytest.mark.filterwarnings(BACKPACK_HOOK_WARNING)
def test_backpack_pass_leaves_user_gradients_untouched(torch_threads):
    problem = PROBLEMS[2]
    cockpit, trace, model = train(
        problem, None, [HessTrace(), HessMaxEV()], steps=1, extend=True, close=False
    )
    twin = model_at(problem.make_model(), trace.thetas[0])
    x, y = problem.make_batch(0)
    problem.loss_module()(twin(x), y).backward()
    for g, q in zip(trace.grads[0], twin.parameters(), strict=True):
        assert torch.allclose(g, q.grad, rtol=1e-6, atol=1e-8)
    cockpit.close()


def _issue_models():
    mlp = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    cnn = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2048, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    return {"mlp": (mlp, (128, 1, 28, 28)), "cnn": (cnn, (64, 3, 32, 32))}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_hess_max_ev_default_tolerance_on_issue_models(name, torch_threads):
    """Default rtol 1e-3 against a Lanczos run converged to residual 1e-9."""
    torch.manual_seed(0)
    model, shape = _issue_models()[name]
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
    loss = nn.functional.cross_entropy(model(x), y)
    op = HessianOperator(loss, list(model.parameters()))
    g = torch.Generator().manual_seed(1)
    ref = lanczos_top(op.flat_matvec, torch.randn(op.numel, generator=g), 1e-9, 300)
    assert ref.converged
    cockpit = Cockpit(
        model,
        None,
        server=None,
        budget=None,
        instruments=[HessMaxEV()],
        fail_mode="raise",
    )
    with cockpit.step(0, loss=loss):
        loss.backward()
    assert cockpit.readings[0]["hess_max_ev"] == pytest.approx(ref.value, rel=1e-3)


@pytest.mark.filterwarnings(BACKPACK_HOOK_WARNING)
def test_entry_passes_keep_backpack_io_for_later_backpack_passes(torch_threads):
    """Our extra backward passes must not free BackPACK's stored module IO."""
    problem = PROBLEMS[1]
    insts = [
        Alpha(schedule=every(1)),
        HessMaxEV(schedule=every(1)),
        HessTrace(schedule=every(1), method="exact"),
    ]
    cockpit, trace, model = train(problem, "sgd", insts, steps=2, extend=True)
    h = hessian(model_at(model, trace.thetas[0]), problem, 0)
    assert cockpit.readings[0]["hess_trace"]["total"] == pytest.approx(
        block_traces(model, h)["total"], rel=1e-4
    )
    # The user's own BackPACK extension in their backward still works.
    model = backpack.extend(problem.make_model())
    loss_module = backpack.extend(problem.loss_module())
    cockpit = Cockpit(
        model,
        None,
        server=None,
        budget=None,
        instruments=[HessMaxEV()],
        fail_mode="raise",
    )
    x, y = problem.make_batch(0)
    loss = loss_module(model(x), y)
    with cockpit.step(0, loss=loss), backpack.backpack(BatchGrad()):
        loss.backward()
    assert all(p.grad_batch.shape[0] == x.shape[0] for p in model.parameters())


def _reduced(none: torch.Tensor, reduce: str, rows: int) -> torch.Tensor:
    """Per-element (per-token) losses reduced to a scalar the ways users write it."""
    if reduce == "mean_of_means":  # per-sample (per-sequence) means, then a mean
        return none.reshape(rows, -1).mean(1).mean()
    if reduce == "sum_over_n":
        return none.sum() / none.numel()
    return none.mean() if reduce == "mean" else none.sum()


def _tic_totals(
    model: nn.Module, loss_of: Callable[[], torch.Tensor]
) -> dict[str, float]:
    """TIC (diagonal and trace) totals of one step whose loss ``loss_of`` builds."""
    from glasscockpit.agent.instruments import BY_NAME

    names = ("tic_diag", "tic_trace")
    insts = [BY_NAME[n](schedule=every(1)) for n in names]
    cockpit = Cockpit(
        model, None, server=None, budget=None, instruments=insts, fail_mode="raise"
    )
    loss = loss_of()  # the forward pass after the Cockpit: recorded
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    return {n: cockpit.readings[0][n]["total"] for n in names}


@pytest.mark.parametrize("reduce", ["mean", "sum", "mean_of_means", "sum_over_n"])
@pytest.mark.parametrize("tokens", [False, True])
def test_tic_reads_the_mean_of_per_sample_losses_like_the_mean_loss(
    reduce, tokens, torch_threads
):
    # loss = cross_entropy(out, y, reduction="none").mean() is the mean loss:
    # the GGN diagonal (hence TIC) must be the same as for reduction="mean".
    def tic(per_sample: bool) -> dict[str, float]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4))
        shape = (6, 3, 5) if tokens else (6, 5)
        x = torch.randn(shape)
        y = torch.randint(0, 4, shape[:-1]).reshape(-1)

        def loss_of() -> torch.Tensor:
            out = model(x).reshape(-1, 4)
            if not per_sample:
                kind = "sum" if reduce == "sum" else "mean"
                return nn.functional.cross_entropy(out, y, reduction=kind)
            none = nn.functional.cross_entropy(out, y, reduction="none")
            if tokens:  # per sequence, as Alpha wants them: a view of the tokens'
                none = none.reshape(6, 3)
            return _reduced(none, reduce, 6)

        return _tic_totals(model, loss_of)

    want, got = tic(False), tic(True)
    assert got == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("reduce", ["mean", "sum", "mean_of_means", "sum_over_n"])
def test_tic_reads_reduced_per_element_squared_errors_like_mse_loss(
    reduce, torch_threads
):
    # mse_loss(out, y, reduction="none") reduced per sample and then over the
    # batch (Alpha's per-sample losses) is the mean (or sum) squared error: the
    # same GGN diagonal, hence the same TIC and Hessian trace.
    def tic(per_sample: bool) -> dict[str, float]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
        x, y = torch.randn(6, 5), torch.randn(6, 3)

        def loss_of() -> torch.Tensor:
            if not per_sample:
                kind = "sum" if reduce == "sum" else "mean"
                return nn.functional.mse_loss(model(x), y, reduction=kind)
            none = nn.functional.mse_loss(model(x), y, reduction="none")
            return _reduced(none, reduce, 6)

        return _tic_totals(model, loss_of)

    want, got = tic(False), tic(True)
    assert got == pytest.approx(want, rel=1e-6)


def _seed(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _onehot(y: torch.Tensor) -> torch.Tensor:
    return nn.functional.one_hot(y, 3).float()


#: Losses whose GGN the engine factors, each with the weights users give them:
#: (model output, class targets) -> scalar loss. The model is piecewise linear,
#: so the GGN diagonal is the Hessian diagonal the reference computes.
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bce": lambda z, y: nn.functional.binary_cross_entropy_with_logits(z, _onehot(y)),
    "bce_weights": lambda z, y: nn.functional.binary_cross_entropy_with_logits(
        z,
        _onehot(y),
        weight=torch.tensor([0.5, 1.0, 2.0]),
        pos_weight=torch.tensor([3.0, 1.0, 0.25]),
        reduction="sum",
    ),
    "bce_squeezed": lambda z, y: nn.functional.binary_cross_entropy_with_logits(
        z[:, 1], (y == 1).float()
    ),
    "huber": lambda z, y: nn.functional.huber_loss(z, 2 * _onehot(y), delta=0.7),
    "smooth_l1": lambda z, y: nn.functional.smooth_l1_loss(z, _onehot(y), beta=0.5),
    "huber_flat": lambda z, y: nn.functional.huber_loss(z, 9 * _onehot(y), delta=1e-6),
    "mse_unequal": lambda z, y: (
        nn.functional.mse_loss(z, _onehot(y), reduction="none")
        * torch.tensor([1.0, 2.0, 0.5])
    ).mean(),
    "ce_soft_targets": lambda z, y: nn.functional.cross_entropy(
        z, 0.7 * _onehot(y) + 0.1 * torch.rand(len(y), 3, generator=_seed(1))
    ),
    "kl_distillation": lambda z, y: nn.functional.kl_div(
        nn.functional.log_softmax(z, 1),
        (0.6 * _onehot(y) + torch.rand(len(y), 3, generator=_seed(2))).softmax(1),
        reduction="batchmean",
    ),
    "ce_mixup_two_calls": lambda z, y: (
        0.7 * nn.functional.cross_entropy(z, y)
        + 0.3 * nn.functional.cross_entropy(z, y.roll(1))
    ),
    "ce_temperature": lambda z, y: nn.functional.cross_entropy(z / 1.7, y),
    "kl_temperature": lambda z, y: (
        4.0
        * nn.functional.kl_div(
            nn.functional.log_softmax(z / 2.0, 1),
            (0.6 * _onehot(y) + torch.rand(len(y), 3, generator=_seed(3))).softmax(1),
            reduction="batchmean",
        )
    ),
    "bce_scaled": lambda z, y: nn.functional.binary_cross_entropy_with_logits(
        2.5 * z, _onehot(y)
    ),
    "ce_class_weights": lambda z, y: nn.functional.cross_entropy(
        z, y, weight=torch.tensor([0.2, 1.0, 3.0])
    ),
    "ce_unequal": lambda z, y: (
        (
            nn.functional.cross_entropy(z, y, reduction="none")
            * torch.linspace(0.5, 2.0, len(y))
        ).sum()
        / 4
    ),
    "ce_masked": lambda z, y: (
        (
            nn.functional.cross_entropy(z, y, reduction="none")
            * torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
        ).sum()
        / 5
    ),
}


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_ggn_of_weighted_and_elementwise_losses_is_exact(kind, torch_threads):
    # Per-element curvature (BCE with logits, Huber, smooth L1) and any
    # non-negative weights (class weights, masks, unequal reduction weights) go
    # into the factors: HessTrace (exact, from the GGN) and TIC match the
    # explicit Hessian diagonal and per-sample contributions to the gradient.
    from glasscockpit.agent.instruments import BY_NAME

    loss_fn = LOSSES[kind]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    x, y = torch.randn(7, 5), torch.tensor([0, 1, 2, 1, 0, 2, 1])
    insts = [HessTrace(schedule=every(1)), BY_NAME["tic_diag"](schedule=every(1))]
    cockpit = Cockpit(
        model, None, server=None, budget=None, instruments=insts, fail_mode="raise"
    )
    loss = loss_fn(model(x), y)
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    got = cockpit.readings[0]

    params = list(model.parameters())
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    diag = torch.stack(
        [
            torch.cat(
                [
                    r.reshape(-1)
                    for r in torch.autograd.grad(flat[k], params, retain_graph=True)
                ]
            )[k]
            for k in range(flat.numel())
        ]
    ).double()
    # Sample n's contribution to the gradient: the loss with the other rows of
    # the output held constant (every loss term depends on one row).
    per = []
    for n in range(len(x)):
        out = model(x)
        rows = torch.arange(len(x))[:, None] == n
        held = torch.where(rows, out, out.detach())
        per.append(
            torch.cat(
                [g.reshape(-1) for g in torch.autograd.grad(loss_fn(held, y), params)]
            )
        )
    contrib = torch.stack(per).double()  # ĝ_n
    assert got["hess_trace"]["stderr"] is None  # exact: the GGN, not Hutchinson
    assert got["hess_trace"]["total"] == pytest.approx(
        float(diag.sum()), rel=1e-4, abs=1e-7
    )
    eps = 1e-7 * float(diag.abs().mean())
    want = float((len(x) * contrib.square().sum(0) / (diag + eps)).sum())
    if float(diag.abs().max()) == 0.0:  # every residual beyond δ: no curvature
        assert float(got["hess_trace"]["total"]) == 0.0
        return
    assert got["tic_diag"]["total"] == pytest.approx(want, rel=1e-4)


def test_tic_refuses_negative_loss_weights_with_the_reason(torch_threads):
    from glasscockpit.agent.instruments import BY_NAME

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    weights = torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0, 1.0])

    def loss_of() -> torch.Tensor:
        none = nn.functional.cross_entropy(model(x), y, reduction="none")
        return (none * weights).mean()

    got, errors = one_step(model, [BY_NAME["tic_trace"](schedule=every(1))], loss_of)
    assert got["tic_trace"] is None
    assert "negative or non-finite weights" in errors["tic_trace"]


def test_tic_masks_zero_weights_like_ignore_index(torch_threads):
    # A zero weight leaves a token out, as ignore_index does.
    from glasscockpit.agent.instruments import BY_NAME

    def run(weights: torch.Tensor, ignore: bool) -> object:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4))
        x, y = torch.randn(6, 5), torch.randint(0, 4, (6,))
        if ignore:
            y[weights == 0] = -100
        inst = BY_NAME["tic_trace"](schedule=every(1))
        cockpit = Cockpit(model, None, server=None, budget=None, instruments=[inst])
        none = nn.functional.cross_entropy(model(x), y, reduction="none")
        loss = (none * weights).sum() / 4 if not ignore else none.sum() / 4
        with cockpit.step(0, loss=loss):
            loss.backward()
        cockpit.close()
        return cockpit.readings[0]["tic_trace"]

    mask = torch.tensor([1.0, 0, 1, 1, 0, 1])
    masked, ignored = run(mask, ignore=False), run(mask, ignore=True)
    assert masked is not None and ignored is not None
    assert masked["total"] == pytest.approx(ignored["total"], rel=1e-6)


@pytest.mark.parametrize("problem", ["linear", "mlp", "cnn", "conv1d", "mse"], ids=str)
def test_hess_trace_is_exact_from_the_ggn_on_piecewise_linear_sequentials(
    problem, torch_threads
):
    # ReLU/max-pool nn.Sequential models: Hessian diagonal = GGN diagonal, which
    # the hook engine computes exactly; no backpack.extend, no sampling error.
    from tests.agent.harness import run_step
    from tests.agent.problems import BY_NAME as SIMPLE
    from tests.agent.reference import collect

    got = run_step(SIMPLE[problem], [HessTrace(schedule=every(1))])["hess_trace"]
    data = collect(SIMPLE[problem])
    assert got["stderr"] is None
    want = {n: float(h.sum()) for n, h in data.hess_diag.items()}
    for name, value in want.items():
        # float32 GGN passes against float64 Hessian rows: rtol 1e-4.
        assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert got["total"] == pytest.approx(sum(want.values()), rel=1e-4, abs=1e-6)


def test_hess_trace_samples_where_the_ggn_is_not_the_hessian(torch_threads):
    # Tanh between the layers: the GGN misses the activation's curvature.
    cockpit, _, _ = train(PROBLEMS[1], "sgd", [HessTrace(schedule=every(1))], steps=1)
    assert cockpit.readings[0]["hess_trace"]["stderr"] is not None
    from glasscockpit.agent.engine.piecewise import not_piecewise_linear

    assert "Tanh" in (not_piecewise_linear(PROBLEMS[1].make_model()) or "")
    bn = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    assert "train mode" in (not_piecewise_linear(bn) or "")
    assert not_piecewise_linear(bn.eval()) is None


def test_tic_names_a_loss_it_cannot_factor(torch_threads):
    # A focal-style loss is not linear in log-softmax: TIC is undefined with
    # the reason, HessTrace falls back to Hutchinson.
    from glasscockpit.agent.instruments import BY_NAME

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    insts = [BY_NAME["tic_diag"](schedule=every(1)), HessTrace(schedule=every(1))]

    def loss_of() -> torch.Tensor:
        logp = nn.functional.log_softmax(model(x), 1).gather(1, y[:, None])
        return (-((1 - logp.exp()) ** 2) * logp).mean()

    got, errors = one_step(model, insts, loss_of)
    assert got["tic_diag"] is None
    assert "Curvature needs" in errors["tic_diag"]
    assert got["hess_trace"]["stderr"] is not None


def test_a_model_ending_in_log_softmax_reads_like_cross_entropy(torch_threads):
    # nn.LogSoftmax as the last module and nll_loss (PyTorch's MNIST example):
    # the log-softmax belongs to the loss, so TIC and the exact Hessian trace
    # equal those of the logits with cross_entropy.
    from glasscockpit.agent.instruments import BY_NAME

    def run(log_softmax: bool) -> dict:
        torch.manual_seed(0)
        layers = [nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)]
        model = nn.Sequential(*layers, *([nn.LogSoftmax(dim=1)] if log_softmax else []))
        x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
        insts = [HessTrace(schedule=every(1)), BY_NAME["tic_diag"](schedule=every(1))]
        cockpit = Cockpit(
            model, None, server=None, budget=None, instruments=insts, fail_mode="raise"
        )
        out = model(x)
        loss = (
            nn.functional.nll_loss(out, y)
            if log_softmax
            else nn.functional.cross_entropy(out, y)
        )
        with cockpit.step(0, loss=loss):
            loss.backward()
        cockpit.close()
        return cockpit.readings[0]

    inside, outside = run(True), run(False)
    assert inside["hess_trace"]["stderr"] is None  # exact: the GGN
    for name in ("hess_trace", "tic_diag"):
        assert inside[name]["total"] == pytest.approx(outside[name]["total"], rel=1e-6)


def test_a_loss_not_linear_in_the_models_log_probabilities_is_not_exact(torch_threads):
    # MSE on log-probabilities: the GGN of the model output is no Hessian
    # diagonal; HessTrace samples, TIC carries the note.
    from glasscockpit.agent.instruments import BY_NAME

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.LogSoftmax(1))
    x, y = torch.randn(6, 5), torch.randn(6, 3)
    insts = [HessTrace(schedule=every(1)), BY_NAME["tic_diag"](schedule=every(1))]
    got, notes = one_step(model, insts, lambda: nn.functional.mse_loss(model(x), y))
    assert got["hess_trace"]["stderr"] is not None
    assert got["tic_diag"] is not None  # a reading, with a note
    assert "log-probabilities" in notes["tic_diag"]


class _TwoHeads(nn.Module):
    """Returns ``(aux, logits)``: the first tensor is not what the loss uses."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 7), nn.Tanh())
        self.aux = nn.Linear(7, 2)
        self.head = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.aux(h), self.head(h)


def test_curvature_starts_at_the_output_the_loss_is_computed_from(torch_threads):
    # The model returns (aux, logits) and the loss uses the logits: the GGN
    # passes start there, and TIC equals that of the model returning the logits.
    from glasscockpit.agent.instruments import BY_NAME

    def run(both: bool) -> dict:
        torch.manual_seed(0)
        model = _TwoHeads()
        x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))

        def loss_of() -> torch.Tensor:
            out = model(x)
            return nn.functional.cross_entropy(out[1] if both else out, y)

        if not both:  # the same parameters, the head's output returned alone
            model.forward = lambda x: model.head(model.body(x))  # type: ignore[method-assign]
        got, errors = one_step(model, [BY_NAME["tic_diag"](schedule=every(1))], loss_of)
        assert got["tic_diag"] is not None, errors
        return got["tic_diag"]

    both, alone = run(True), run(False)
    assert both["total"] == pytest.approx(alone["total"], rel=1e-6)
    assert set(both) == set(alone)  # the aux head has no gradient: left out
