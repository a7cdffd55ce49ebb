"""Distance, UpdateSize, Alpha and Time against parameter snapshots and loops."""

from __future__ import annotations

import json
import math
import time
import urllib.request

import pytest
import torch

from glasscockpit.agent import Cockpit, every
from glasscockpit.agent.curvature.alpha_fit import (
    SampleJacobian,
    orthonormal_basis,
    orthonormal_rows,
    predict_update,
    update_directions,
    update_in_span,
)
from glasscockpit.agent.instruments import (
    Alpha,
    Distance,
    InnerTest,
    OrthoTest,
    Time,
    UpdateSize,
)
from glasscockpit.agent.instruments.base import Phase
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.protocol import Readings
from glasscockpit.server.store import TOTAL, RunStore
from tests.agent.reference_curvature import (
    OPTIMIZERS,
    PROBLEMS,
    Problem,
    alpha_reference,
    as_float_dict,
    norms,
    per_sample_grads,
    train,
)
from tests.conftest import free_port
from tests.server.harness import live_server

STEPS = 4


def _assert_per_layer(got, expected):
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        # float32 parameters; norms of float32 differences, rtol 1e-4.
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-7), key


@pytest.mark.parametrize("problem", PROBLEMS, ids=repr)
def test_distance_matches_snapshots(problem, torch_threads):
    cockpit, trace, model = train(problem, "momentum", [Distance()], steps=STEPS)
    for t in range(STEPS):
        expected = norms(model, trace.thetas[t] - trace.thetas[0])
        _assert_per_layer(as_float_dict(cockpit.readings[t]["distance"]), expected)


def test_distance_starts_where_the_cockpit_was_attached(torch_threads):
    """No KeyError when the step counter does not start at 0 (resumed runs)."""
    problem = PROBLEMS[0]
    model = problem.make_model()
    theta0 = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cockpit = Cockpit(
        model,
        opt,
        server=None,
        budget=None,
        instruments=[Distance()],
        fail_mode="raise",
    )
    for step in (5, 6):
        theta = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        x, y = problem.make_batch(step)
        loss = problem.sample_losses(model(x), y).mean()
        with cockpit.step(step, loss=loss):
            loss.backward()
        opt.step()
    cockpit.close()
    expected = math.sqrt(
        sum(float((a - b).pow(2).sum()) for a, b in zip(theta, theta0, strict=True))
    )
    assert expected > 0
    assert cockpit.readings[5]["distance"]["total"] == 0.0
    assert cockpit.readings[6]["distance"]["total"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("optimizer", [*OPTIMIZERS, None])
@pytest.mark.parametrize("problem", PROBLEMS, ids=repr)
def test_update_size_matches_snapshots_including_last_step(
    problem, optimizer, torch_threads
):
    cockpit, trace, model = train(problem, optimizer, [UpdateSize()], steps=STEPS)
    got = cockpit.readings
    assert sorted(got) == list(range(STEPS))
    for t in range(STEPS):  # the last step's value comes at close()
        expected = norms(model, trace.thetas[t + 1] - trace.thetas[t])
        _assert_per_layer(as_float_dict(got[t]["update_size"]), expected)


def test_update_size_is_read_right_after_optimizer_step(torch_threads):
    """The optimizer post-hook, not the next step, finishes the reading."""
    problem = PROBLEMS[1]
    model = problem.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cockpit = Cockpit(
        model,
        opt,
        server=None,
        budget=None,
        instruments=[UpdateSize()],
        fail_mode="raise",
    )
    x, y = problem.make_batch(0)
    loss = problem.sample_losses(model(x), y).mean()
    before = [p.detach().clone() for p in model.parameters()]
    with cockpit.step(0, loss=loss):
        loss.backward()
    assert "update_size" not in cockpit.readings.get(0, {})
    opt.step()
    update = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]
    with torch.no_grad():  # a change after the step must not count
        for p in model.parameters():
            p.add_(1.0)
    expected = math.sqrt(sum(float(d.pow(2).sum()) for d in update))
    assert cockpit.readings[0]["update_size"]["total"] == pytest.approx(
        expected, rel=1e-4
    )


@pytest.mark.parametrize("optimizer", [*OPTIMIZERS, None])
@pytest.mark.parametrize("problem", PROBLEMS, ids=repr)
def test_alpha_matches_reference(problem, optimizer, torch_threads):
    cockpit, trace, _ = train(problem, optimizer, [Alpha(schedule=every(1))], STEPS)
    got = cockpit.readings
    for t in range(STEPS - 1):
        # α is a ratio of fitted coefficients; float32 gradients give ~1e-6, so
        # rtol 1e-4 with an absolute floor for α near 0.
        assert got[t]["alpha"] == pytest.approx(
            alpha_reference(trace, t), rel=1e-4, abs=1e-5
        ), t
    # No later batch exists for the last step: α is undefined, not missing.
    assert got[STEPS - 1]["alpha"] is None


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_alpha_follows_clipping_and_schedules(optimizer, torch_threads):
    """Global-norm clipping and LR changes keep SGD's update in the basis."""
    problem = PROBLEMS[1]
    cockpit, trace, _ = train(
        problem,
        optimizer,
        [Alpha(schedule=every(1))],
        STEPS,
        clip=0.05,
        scheduler=True,
    )
    got = cockpit.readings
    for t in range(STEPS - 1):
        assert got[t]["alpha"] == pytest.approx(
            alpha_reference(trace, t), rel=1e-4, abs=1e-5
        ), t


class _ShadowSGD(torch.optim.SGD):
    """SGD under another type: Alpha predicts its update with a shadow copy."""


#: SGD variants whose update Alpha takes from the span of g, momentum and θ.
SGD_VARIANTS = {
    "nesterov": {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    "dampening": {"lr": 0.05, "momentum": 0.9, "dampening": 0.5},
    "weight_decay": {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.1},
    "maximize": {"lr": 0.02, "maximize": True, "weight_decay": 0.01},
    "groups": {"lr": 0.05, "momentum": 0.9},
    "foreach": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "foreach": True},
    "fused": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1, "fused": True},
}


def _sgd(cls, variant, params):
    kwargs = SGD_VARIANTS[variant]
    if variant == "groups":  # a second group: its own rate and weight decay
        groups = [
            {"params": params[:1]},
            {"params": params[1:], "lr": 0.2, "weight_decay": 0.05},
        ]
        return cls(groups, **kwargs)
    return cls(params, **kwargs)


@pytest.mark.parametrize("clip", [None, 0.05])
@pytest.mark.parametrize("variant", SGD_VARIANTS)
def test_alpha_of_sgd_needs_no_shadow_optimizer(
    variant, clip, monkeypatch, torch_threads
):
    """SGD's update is a combination of g, its momentum buffer and θ: the same α
    as with the shadow optimizer's prediction, and as the reference. Unclipped,
    the applied update is the predicted one, bit for bit (``_Start.expected``)."""
    problem = PROBLEMS[2]
    got = {}
    for cls in (torch.optim.SGD, _ShadowSGD):
        monkeypatch.setitem(
            OPTIMIZERS, "variant", lambda ps, c=cls: _sgd(c, variant, ps)
        )
        cockpit, trace, _ = train(
            problem,
            "variant",
            [Alpha(schedule=every(1))],
            STEPS,
            clip=clip,
            scheduler=True,
        )
        got[cls] = [cockpit.readings[t]["alpha"] for t in range(STEPS - 1)]
        for t in range(STEPS - 1):
            assert got[cls][t] == pytest.approx(
                alpha_reference(trace, t), rel=1e-4, abs=1e-5
            ), (cls, t)
    # Two bases of one span: equal up to float32 round-off.
    assert got[torch.optim.SGD] == pytest.approx(got[_ShadowSGD], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("variant", SGD_VARIANTS)
def test_sgd_update_is_predicted_without_a_shadow_optimizer(variant, torch_threads):
    """Bit for bit the shadow's prediction, and in the span of g, the momentum
    buffer and θ up to rounding: before the first step (no buffer yet) and after."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 2))
    params = list(model.parameters())
    opt = _sgd(torch.optim.SGD, variant, params)
    assert update_in_span(opt, params)
    assert not update_in_span(_sgd(_ShadowSGD, variant, params), params)
    for step in range(3):
        grads = [torch.randn_like(p) for p in params]
        shadow = _sgd(_ShadowSGD, variant, params)
        shadow.load_state_dict(opt.state_dict())
        predicted = predict_update(opt, params, grads)
        expected = predict_update(shadow, params, grads)
        for got, want in zip(predicted, expected, strict=True):
            assert torch.equal(got, want), step
        # The prediction comes last (once per parameter group).
        directions = update_directions(opt, params, grads)
        basis = orthonormal_basis(directions[: -len(opt.param_groups)])
        flat = torch.cat([u.reshape(-1) for u in predicted])
        left = flat - basis.T @ (basis @ flat)
        assert float(left.norm()) <= 1e-5 * float(flat.norm()), step
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("cls", [torch.optim.SGD, _ShadowSGD])
def test_alpha_of_sgd_keeps_the_rounding_of_small_updates(
    cls, monkeypatch, torch_threads
):
    """An update far below the parameters' size is rounded by more than
    ``span_rtol`` of it: the predicted update holds that rounding."""
    problem = PROBLEMS[1]
    monkeypatch.setitem(OPTIMIZERS, "tiny", lambda ps: cls(ps, lr=1e-5))
    cockpit, trace, _ = train(problem, "tiny", [Alpha(schedule=every(1))], STEPS)
    for t in range(STEPS - 1):
        d = trace.thetas[t + 1] - trace.thetas[t]
        g = torch.cat([x.reshape(-1) for x in trace.grads[t]]).double()
        g = g / g.norm()
        assert float((d - (d @ g) * g).norm()) > 1e-3 * float(d.norm())
        assert cockpit.readings[t]["alpha"] == pytest.approx(
            alpha_reference(trace, t), rel=1e-4, abs=1e-5
        ), t


def test_sgd_of_mixed_dtypes_is_predicted_by_the_shadow(torch_threads):
    torch.manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(3, dtype=torch.float64)),
        torch.nn.Parameter(torch.randn(2, 3)),
    ]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    grads = [torch.randn_like(p) for p in params]
    expected = predict_update(_ShadowSGD(params, lr=0.1, momentum=0.9), params, grads)
    for got, want in zip(predict_update(opt, params, grads), expected, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orthonormal_rows_span_the_candidates_and_drop_the_dependent(dtype):
    torch.manual_seed(0)
    a, b, c = torch.randn(3, 500, dtype=dtype)
    nearly = a - 0.1 * b  # close to a: kept, its remainder normalised
    candidates = [a, torch.zeros_like(a), nearly, 2 * a - 3 * b, c]
    basis, first, (coef, left) = orthonormal_rows(candidates)
    assert basis.shape == (3, 500)  # zero and a combination dropped
    assert first == pytest.approx(float(a.norm()))
    assert left == 0.0  # c gave the last row
    assert torch.allclose(coef @ basis, c, atol=1e-5)
    _, _, (coef, left) = orthonormal_rows(candidates[:4])
    assert left <= 1e-5  # 2a − 3b: in the span, up to round-off
    assert torch.allclose(coef @ basis[:2], 2 * a - 3 * b, atol=1e-4)
    eye = torch.eye(3, dtype=dtype)
    assert torch.allclose(basis @ basis.T, eye, atol=1e-5)
    for v in candidates:
        left = v - basis.T @ (basis @ v)
        assert float(left.norm()) <= 1e-5 * max(float(v.norm()), 1.0)
    assert orthonormal_rows([torch.zeros(4), a[:4]])[1] == 0.0


def test_sgd_without_every_parameter_keeps_the_prediction():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD([model.weight], lr=0.1)
    assert not update_in_span(opt, list(model.parameters()))


def test_alpha_is_undefined_when_the_update_leaves_the_predicted_span(torch_threads):
    """Adam with clipping rescales g before its non-linear update: no exact α.

    Adam's first step is invariant to the gradient's scale (m̂/√v̂ = sign g up
    to ε), so step 0 stays in the basis and must match the reference.
    """
    problem = PROBLEMS[1]
    cockpit, trace, _ = train(problem, "adam", [Alpha(schedule=every(1))], 4, clip=0.05)
    got = cockpit.readings
    assert got[0]["alpha"] == pytest.approx(alpha_reference(trace, 0), rel=1e-4)
    assert [got[t]["alpha"] for t in (1, 2)] == [None, None]


def test_alpha_on_sparse_schedule_finishes_on_untracked_step(torch_threads):
    problem = PROBLEMS[0]
    cockpit, trace, _ = train(problem, "momentum", [Alpha(schedule=every(3))], steps=5)
    got = cockpit.readings
    assert sorted(k for k, v in got.items() if "alpha" in v) == [0, 3]
    assert got[0]["alpha"] == pytest.approx(
        alpha_reference(trace, 0), rel=1e-4, abs=1e-5
    )
    assert got[3]["alpha"] == pytest.approx(
        alpha_reference(trace, 3), rel=1e-4, abs=1e-5
    )


def test_two_alpha_and_update_size_instances_coexist(torch_threads):
    problem = PROBLEMS[1]
    insts = [
        Alpha(label="every", schedule=every(1)),
        Alpha(label="odd", schedule=every(2, start=1), span_rtol=1e-2),
        UpdateSize(label="a"),
        UpdateSize(label="b", schedule=every(2)),
    ]
    cockpit, trace, model = train(problem, "adam", insts, steps=STEPS)
    got = cockpit.readings
    for t in range(STEPS - 1):
        assert got[t]["alpha:every"] == pytest.approx(
            alpha_reference(trace, t), rel=1e-4, abs=1e-5
        )
        expected = norms(model, trace.thetas[t + 1] - trace.thetas[t])["total"]
        assert got[t]["update_size:a"]["total"] == pytest.approx(expected, rel=1e-4)
    assert got[1]["alpha:odd"] == pytest.approx(got[1]["alpha:every"], rel=1e-6)
    assert "alpha:odd" not in got[0] and "update_size:b" not in got[1]
    assert "update_size:b" in got[2]


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", None])
@pytest.mark.parametrize("problem", PROBLEMS[1:], ids=repr)
def test_alpha_shares_the_gradient_tests_per_sample_pass(
    problem, optimizer, torch_threads
):
    """With SGD, α's first direction is g/‖g‖: its slopes come from ``batch_dot``,
    computed by the gradient tests before it, or by α itself for them after."""
    runs = {
        order: train(problem, optimizer, insts(), STEPS)
        for order, insts in {
            "alone": lambda: [Alpha(schedule=every(1))],
            "after": lambda: [InnerTest(every(1)), Alpha(schedule=every(1))],
            "before": lambda: [Alpha(schedule=every(1)), OrthoTest(every(1))],
        }.items()
    }
    tests = {
        name: train(problem, optimizer, [cls(every(1))], STEPS)[0].readings
        for name, cls in (("inner_test", InnerTest), ("ortho_test", OrthoTest))
    }
    for t in range(STEPS - 1):
        expected = alpha_reference(runs["alone"][1], t)
        for cockpit, _, _ in runs.values():
            got = cockpit.readings[t]["alpha"]
            assert got == pytest.approx(expected, rel=1e-4, abs=1e-5), t
    for t in range(STEPS):
        for order, name in (("after", "inner_test"), ("before", "ortho_test")):
            got = as_float_dict(runs[order][0].readings[t][name])
            # One product for all directions rounds g_n·g unlike a product of
            # its own; the tests' differences of sums amplify it (≈1e-6).
            expected = as_float_dict(tests[name][t][name])
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)


class _Masked(torch.nn.Module):
    """Raw parameters behind dropout (eval mode): no per-sample engine serves them."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(5, 5) / 3)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.drop(x) @ self.w)


UNCOVERED = Problem(
    "uncovered-mlp",
    lambda: _seeded_eval(
        lambda: torch.nn.Sequential(
            torch.nn.Linear(4, 5), _Masked(), torch.nn.Linear(5, 3)
        )
    ),
    PROBLEMS[1].make_batch,
    PROBLEMS[1].sample_losses,
    PROBLEMS[1].loss_module,
)


def _seeded_eval(build):
    torch.manual_seed(0)
    return build().eval()


def test_alpha_uses_per_layer_contractions_when_the_engine_covers_all():
    problem = PROBLEMS[2]  # the CNN
    alpha = Alpha()
    Cockpit(problem.make_model(), None, server=None, budget=None, instruments=[alpha])
    assert alpha.phase is Phase.AFTER_BACKWARD and Need.BATCH_DOT in alpha.needs


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_alpha_falls_back_to_the_loss_graph_for_uncovered_parameters(
    optimizer, torch_threads
):
    alpha = Alpha(schedule=every(1))
    cockpit, trace, _ = train(UNCOVERED, optimizer, [alpha], STEPS)
    assert cockpit.engine is not None and cockpit.engine.uncovered == ["1.w"]
    assert alpha.phase is Phase.BEFORE_BACKWARD and Need.BATCH_DOT not in alpha.needs
    got = cockpit.readings
    for t in range(STEPS - 1):
        assert got[t]["alpha"] == pytest.approx(
            alpha_reference(trace, t), rel=1e-4, abs=1e-5
        ), t


def test_alpha_switches_to_the_graph_when_a_loss_term_hides_samples(torch_threads):
    # A penalty on the parameters belongs to no sample: the first step finds it,
    # its α is undefined with the reason, later steps differentiate the graph.
    problem = PROBLEMS[1]
    model = problem.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    alpha = Alpha(schedule=every(1))
    cockpit = Cockpit(model, opt, server=None, budget=None, instruments=[alpha])
    for step in range(3):
        opt.zero_grad()
        x, y = problem.make_batch(step)
        losses = problem.sample_losses(model(x), y)
        loss = losses.mean() + 1e-2 * model[0].weight.square().sum()
        with cockpit.step(step, loss=loss, losses=losses):
            loss.backward()
        opt.step()
    cockpit.close()
    frames = [f for f in cockpit.transport.frames if isinstance(f, Readings)]  # type: ignore[attr-defined]
    assert "not covered" in [f for f in frames if f.step == 0][0].errors["alpha"]
    assert alpha.phase is Phase.BEFORE_BACKWARD
    assert isinstance(cockpit.readings[1]["alpha"], float)
    assert not cockpit.disabled


def test_alpha_is_undefined_for_a_single_sample(torch_threads):
    problem = PROBLEMS[1]
    model = problem.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cockpit = Cockpit(
        model, opt, server=None, budget=None, instruments=[Alpha(schedule=every(1))]
    )
    for step in range(2):
        opt.zero_grad()
        x, y = problem.make_batch(step)
        losses = problem.sample_losses(model(x[:1]), y[:1])
        with cockpit.step(step, loss=losses.mean(), losses=losses):
            losses.mean().backward()
        opt.step()
    assert cockpit.readings[0]["alpha"] is None  # no variance from one sample
    assert not cockpit.disabled


def test_alpha_without_per_sample_losses_fails_with_instructions():
    problem = PROBLEMS[0]
    model = problem.make_model()
    cockpit = Cockpit(
        model, None, server=None, budget=None, instruments=[Alpha()], fail_mode="raise"
    )
    x, y = problem.make_batch(0)
    loss = problem.sample_losses(model(x), y).mean()
    with (
        pytest.raises(ValueError, match=r"losses=per_sample_losses"),
        cockpit.step(0, loss=loss),
    ):
        loss.backward()


def test_alpha_leaves_rng_gradients_and_optimizer_state_untouched(torch_threads):
    problem = PROBLEMS[2]
    runs = []
    for instruments in ([], [Alpha(schedule=every(1))]):
        model = problem.make_model()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        cockpit = Cockpit(
            model, opt, server=None, budget=None, instruments=instruments or ["loss"]
        )
        torch.manual_seed(5)
        grads = []
        for step in range(3):
            opt.zero_grad()
            x, y = problem.make_batch(step)
            losses = problem.sample_losses(model(x), y)
            with cockpit.step(step, loss=losses.mean(), losses=losses):
                losses.mean().backward()
            grads.append([p.grad.clone() for p in model.parameters()])
            opt.step()
        runs.append((torch.get_rng_state(), grads, list(model.parameters())))
        cockpit.close()
    (rng0, g0, p0), (rng1, g1, p1) = runs
    assert torch.equal(rng0, rng1)
    for a, b in zip(sum(g0, []), sum(g1, []), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(p0, p1, strict=True):  # same trajectory: optimizer state intact
        assert torch.equal(a, b)


def test_time_is_wall_clock_after_backward(torch_threads):
    start = time.time()
    cockpit, _, _ = train(PROBLEMS[0], "sgd", [Time()], steps=3)
    stamps = [cockpit.readings[t]["time"] for t in range(3)]
    assert start <= stamps[0] <= stamps[1] <= stamps[2] <= time.time()


def test_after_step_and_two_step_frames_become_ordered_series(torch_threads):
    """A step's readings in several frames land in per-instrument series."""
    problem = PROBLEMS[1]
    insts = [Alpha(schedule=every(1)), UpdateSize(), Distance()]
    cockpit, _, _ = train(problem, "momentum", insts, steps=STEPS)
    store = RunStore()
    frames = cockpit.transport.frames
    assert sum(isinstance(f, Readings) for f in frames) > STEPS  # several per step
    for frame in frames:
        assert store.ingest(frame)
    run = store.get("ref")
    assert run is not None
    for name in ("alpha", "update_size", "distance"):
        series = run.series[(name, TOTAL)]
        view = series.view()
        steps = list(view.step)
        expected = list(range(STEPS - 1)) if name == "alpha" else list(range(STEPS))
        assert steps == expected, name


@pytest.mark.parametrize("problem", PROBLEMS, ids=repr)
def test_sample_jacobian_matches_per_sample_loop(problem, torch_threads):
    model = problem.make_model()
    params = list(model.parameters())
    expected_rows = per_sample_grads(model, problem, 0)  # [B, D]
    x, y = problem.make_batch(0)
    losses = problem.sample_losses(model(x), y)
    jac = SampleJacobian(losses, params)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        v = [torch.randn(p.shape, generator=g) for p in params]
        flat = torch.cat([t.reshape(-1) for t in v]).double()
        got = jac.project(v).double()
        expected = expected_rows @ flat
        assert torch.allclose(
            got, expected, rtol=1e-4, atol=1e-6 * expected.abs().max()
        )
    assert all(p.grad is None for p in params)  # nothing written to .grad


def test_split_frames_reach_a_live_server_as_ordered_series(torch_threads):
    """Real uvicorn + websocket: after-step and two-step readings per series."""
    problem = PROBLEMS[1]
    model = problem.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with live_server(free_port()) as server:
        cockpit = Cockpit(
            model,
            opt,
            server=server.ws,
            run="curv-live",
            instruments=[Alpha(schedule=every(1)), UpdateSize(), Distance()],
            fail_mode="raise",
        )
        for step in range(STEPS):
            opt.zero_grad()
            x, y = problem.make_batch(step)
            losses = problem.sample_losses(model(x), y)
            with cockpit.step(step, loss=losses.mean(), losses=losses):
                losses.mean().backward()
            opt.step()
        cockpit.close()
        assert cockpit.stats.dropped == 0
        base = f"{server.http}/v1/runs/curv-live/series"
        for name, steps in (
            ("alpha", list(range(STEPS - 1))),  # the last α is undefined
            ("update_size", list(range(STEPS))),
            ("distance", list(range(STEPS))),
        ):
            with urllib.request.urlopen(f"{base}/{name}", timeout=5) as r:
                series = json.loads(r.read())
            assert series["step"] == steps, name
            assert all(isinstance(v, float) for v in series["value"]), name
