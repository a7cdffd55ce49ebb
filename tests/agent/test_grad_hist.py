"""The histograms' counting shortcuts against binning every built per-sample value.

The reference comparisons of test_instruments.py check the readings against
brute-force per-sample gradients; these tests check that the shortcuts (rank-one
counting of ``nn.Linear`` weights, per-row joint counts) give exactly the counts
of binning the values the engine builds, also where values sit on bin edges, are
zero, tiny, huge or negative, where the sorted-search arguments matter most.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from glasscockpit.agent import always
from glasscockpit.agent.engine import HookEngine, StepStats
from glasscockpit.agent.engine.stats import Outer, Scaled, Sparse
from glasscockpit.agent.instruments import (
    GradHist1d,
    GradHist2d,
    NormTest,
    grad_hist_1d,
)
from glasscockpit.agent.instruments.base import count_into
from glasscockpit.agent.instruments.grad_hist_1d import (
    Rule,
    histc_bins,
    outer_counts,
    outer_fast,
    span_counts,
    thresholds,
)
from glasscockpit.agent.instruments.grad_hist_2d import centre_bins, outer_counts_2d
from tests.agent.harness import run_step
from tests.agent.models import ENCODER
from tests.agent.problems import Problem

RULES_1D = {
    "cockpit": (-2.0, 2.0, 100),
    "skewed": (-0.1, 0.3, 7),
    "one_bin": (-1.0, 1.0, 1),
}


def rule_1d(case: str) -> tuple[Rule, int]:
    lo, hi, n = RULES_1D[case]
    return functools.partial(histc_bins, lo=lo, hi=hi, n=n), n


def factors(case: str, seed: int) -> Outer:
    """Rank-one factors [B, out], [B, in] that stress the search."""
    g = torch.Generator().manual_seed(seed)
    n, out, width = (int(t) for t in torch.randint(1, 24, (3,), generator=g))
    scale = 10 ** float(torch.empty(1).uniform_(-3, 1, generator=g))
    u = torch.randn(n, out, generator=g) * scale
    v = torch.randn(n, width, generator=g)
    if case == "relu":  # zero inputs, dead units
        v = v.clamp(min=0)
        u[:, : out // 2] = 0
    elif case == "grid":  # products exactly on edges of the Cockpit rule
        u = torch.randint(-8, 9, (n, out), generator=g).float() / 8
        v = torch.randint(-8, 9, (n, width), generator=g).float() / 25
    elif case == "tiny":  # products next to 0, signed zeros
        v = v * 1e-30
        v[0, 0] = -0.0
    elif case == "huge":  # products overflow to ±inf
        u = u * 1e30
        v = v * 1e20
    return Outer(u, v)


def built_counts(outer: Outer, rule: Rule, bins: int) -> Tensor:
    built = outer.u[:, :, None] * outer.v[:, None, :]
    return torch.bincount(rule(built).reshape(-1), minlength=bins)


@pytest.mark.parametrize("rule_case", sorted(RULES_1D))
@pytest.mark.parametrize("case", ["normal", "relu", "grid", "tiny", "huge"])
def test_outer_counts_equal_binning_every_product(rule_case: str, case: str) -> None:
    rule, bins = rule_1d(rule_case)
    edges = thresholds(rule, bins)
    for seed in range(20):
        outer = factors(case, seed)
        want = built_counts(outer, rule, bins)
        assert torch.equal(outer_counts([outer], rule, edges, bins), want), seed


def test_outer_counts_of_several_layers_at_once() -> None:
    # Layers of different widths and batch sizes share one padded search.
    rule, bins = rule_1d("cockpit")
    edges = thresholds(rule, bins)
    cases = ["normal", "relu", "grid", "tiny", "huge"]
    for seed in range(10):
        outers = [factors(case, 100 * seed + i) for i, case in enumerate(cases)]
        want = sum(built_counts(o, rule, bins) for o in outers)
        assert torch.equal(outer_counts(outers, rule, edges, bins), want), seed


@pytest.mark.parametrize("widths", [[1], [2], [16], [16, 1, 5], [3, 17]])
def test_outer_counts_at_power_of_two_widths(widths: list[int]) -> None:
    # The sorted rows are padded to a power of two: none, or all but one entry.
    rule, bins = rule_1d("cockpit")
    edges = thresholds(rule, bins)
    g = torch.Generator().manual_seed(len(widths))
    for seed in range(10):
        outers = [
            Outer(
                torch.randn(4, 7, generator=g) * 10 ** (seed % 4 - 2),
                torch.randn(4, w, generator=g),
            )
            for w in widths
        ]
        want = sum(built_counts(o, rule, bins) for o in outers)
        assert torch.equal(outer_counts(outers, rule, edges, bins), want), seed


@pytest.mark.parametrize("small", [False, True], ids=["default", "small_groups"])
def test_outer_counts_of_wide_rows(
    small: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Wide rows spanning a few bins are searched, rows spanning many are built;
    # small groups split the lookups and the built rows into many parts.
    if small:
        monkeypatch.setattr(grad_hist_1d, "LOOKUPS", 7)
        monkeypatch.setattr(grad_hist_1d, "BUILT", 600)
    rule, bins = rule_1d("cockpit")
    edges = thresholds(rule, bins)
    g = torch.Generator().manual_seed(7)
    for seed in range(5):
        outers = []
        for width, scale in ((300, 0.02), (300, 0.3), (70, 3.0), (5, 0.1)):
            u = torch.randn(6, 9, generator=g) * scale * (seed + 1)
            v = torch.randn(6, width, generator=g)
            if seed % 2:
                v = v.clamp(min=0)
            outers.append(Outer(u, v))
        want = sum(built_counts(o, rule, bins) for o in outers)
        assert torch.equal(outer_counts(outers, rule, edges, bins), want), seed


@pytest.mark.parametrize("rule_case", sorted(RULES_1D))
def test_thresholds_are_the_first_value_of_each_bin(rule_case: str) -> None:
    rule, bins = rule_1d(rule_case)
    v = thresholds(rule, bins)
    below = torch.nextafter(v, torch.tensor(float("-inf")))
    k = torch.arange(1, bins, dtype=torch.int32)
    assert bool((rule(v.clone()) >= k).all())
    assert bool((rule(below) < k).all())


def adversarial(edges: Tensor, case: str, seed: int) -> Tensor:
    """Float32 values at and next to the thresholds ``V_k``, spanning few or many bins.

    Values in a run of bins ``k0 .. k1`` (``k1 − k0 + 1`` the case's span): every
    interior edge ``V_k`` and the float just below it, the run's extreme values
    and values between; then what the comparisons must not miscount: signed
    zeros, values beyond the range and infinities, NaN.
    """
    g = torch.Generator().manual_seed(seed)
    inf = torch.tensor(math.inf)
    bins = edges.numel() + 1

    def pick(top: int) -> int:
        return int(torch.randint(0, max(1, top + 1), (1,), generator=g))

    span = {"one": 1, "two": 2, "three": 3, "many": bins}.get(case, 1 + pick(2))
    span = min(span, bins)
    k0 = pick(bins - span)
    if case == "zeros":  # the run around 0
        zero = int(torch.searchsorted(edges, torch.zeros(1), right=True))
        k0 = max(0, min(zero - pick(span - 1), bins - span))
    elif case == "outside":  # the run at one end of the range
        k0 = 0 if seed % 2 else bins - span
    k1 = k0 + span - 1
    # Bins k0 .. k1 are [lo, hi]: from V_{k0} (or below V_1) to the float below
    # V_{k1 + 1} (or above V_{n − 1}).
    first, last = (float(edges[0]), float(edges[-1])) if bins > 1 else (0.0, 0.0)
    lo = float(edges[k0 - 1]) if k0 >= 1 else first - 1
    hi = float(torch.nextafter(edges[k1], -inf)) if k1 < bins - 1 else last + 1
    inner = edges[k0:k1]  # V_{k0 + 1} .. V_{k1} and the floats below them
    inside = torch.rand(200, dtype=torch.float64, generator=g) * (hi - lo) + lo
    values = torch.cat(
        [
            torch.tensor([lo, hi]),
            inner,
            torch.nextafter(inner, -inf),
            inside.float().clamp(lo, hi),
        ]
    )
    if case == "equal":
        values = torch.full((1 + pick(40),), lo if seed % 2 else hi)
    if case == "zeros":
        values = torch.cat([values, torch.tensor([-0.0, 0.0, -0.0])])
    elif case == "outside":  # beyond the range: clamped into the end bin
        far = torch.tensor([1e3, 3e38, math.inf])
        values = torch.cat([values, -far if k0 == 0 else far])
    elif case == "nan":
        values = torch.cat([values, torch.tensor([math.nan])])
    return values[torch.randperm(values.numel(), generator=g)]


@pytest.mark.parametrize("rule_case", sorted(RULES_1D))
@pytest.mark.parametrize(
    "case", ["equal", "one", "two", "three", "many", "zeros", "outside", "nan"]
)
def test_span_counts_equal_binning_every_value(rule_case: str, case: str) -> None:
    rule, bins = rule_1d(rule_case)
    edges = thresholds(rule, bins)
    for seed in range(15):
        values = adversarial(edges, case, seed)
        want = torch.bincount(rule(values.clone()), minlength=bins + 1)
        spanned = int(rule(values.max().reshape(1)) - rule(values.min().reshape(1)))
        for max_span in (0, 1, 2, 3, bins):
            got = [0] * bins
            counted = span_counts(got, values, edges.tolist(), max_span)
            if case == "nan" or spanned > max_span:
                assert not counted, (seed, max_span)
                assert not any(got)
            else:
                assert counted, (seed, max_span)
                assert got == want[:bins].tolist(), seed
                assert int(want[bins]) == 0


@pytest.mark.parametrize("scale", [32.0, 48.0, 0.3])
@pytest.mark.parametrize("case", ["one", "two", "many", "zeros", "outside"])
def test_span_counts_of_scaled_values(scale: float, case: str) -> None:
    # Kept values y count as fl(y · scale) against the thresholds of
    # y ↦ rule(fl(y · scale)), whatever the rounding of the product.
    rule, bins = rule_1d("cockpit")
    scaled = thresholds(lambda y: rule(y.mul_(scale)), bins)
    for seed in range(10):
        values = adversarial(scaled, case, seed)
        want = torch.bincount(rule(values * scale), minlength=bins + 1)
        got = [0] * bins
        assert span_counts(got, values, scaled.tolist(), bins)
        assert got == want[:bins].tolist(), seed


def test_span_counts_of_shapes_and_views() -> None:
    # Non-contiguous and empty chunks; counts add to what is already there.
    rule, bins = rule_1d("cockpit")
    edges = thresholds(rule, bins)
    g = torch.Generator().manual_seed(3)
    values = (torch.randn(6, 5, 9, generator=g) * 0.05).transpose(0, 2)[:, ::2]
    got = [1] * bins
    assert span_counts(got, values, edges.tolist())
    assert span_counts(got, values[:0], edges.tolist())
    want = torch.bincount(rule(values.clone()).reshape(-1), minlength=bins) + 1
    assert got == want.tolist()


@pytest.mark.parametrize("case", ["normal", "relu", "grid", "tiny", "huge"])
def test_outer_joint_counts_equal_binning_every_pair(case: str) -> None:
    ng, nt = 40, 50
    rule = functools.partial(centre_bins, n=ng, lo=-1.0, hi=1.0, nan=ng)
    for seed in range(20):
        outer = factors(case, seed)
        theta = torch.randn(outer.u.shape[1], outer.v.shape[1]) * 0.5
        theta.view(-1)[seed % theta.numel()] = float("nan")
        tb = centre_bins(theta.clone(), nt, -2.0, 2.0, nan=ng * nt)
        want = torch.zeros(2 * ng * nt + 1, dtype=torch.int64)
        built = outer.u[:, :, None] * outer.v[:, None, :]
        count_into(want, torch.add(tb, rule(built), alpha=nt))
        got = outer_counts_2d(outer, rule, tb, (ng, nt), rows=5)
        assert torch.equal(got[: ng * nt], want[: ng * nt]), seed
        assert int(got[ng * nt :].sum()) == int(want[ng * nt :].sum()), seed


def _mlp() -> tuple[nn.Module, Tensor, Tensor]:
    model = nn.Sequential(
        nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 9), nn.ReLU(), nn.Linear(9, 4)
    )
    return model, torch.randn(16, 12), torch.randint(0, 4, (16,))


def step_stats(problem: Problem) -> StepStats:
    model, x, y = problem.make()
    engine = HookEngine(model, list(model.named_parameters()))
    engine.arm()
    problem.loss_fn(model(x), y).backward()
    return StepStats(engine)


def test_factored_weights_are_the_built_per_sample_gradients(
    torch_threads: None,
) -> None:
    stats = step_stats(Problem("mlp", _mlp, F.cross_entropy))
    built = {name: g for name, _, g in stats.batch_grads()}
    factored = {name: g for name, _, g in stats.batch_grads_factored()}
    assert set(built) == set(factored)
    outers = 0
    for name, g in factored.items():
        if isinstance(g, Outer):
            outers += 1
            assert outer_fast(g)
            g = torch.cat(list(g.chunks(40)))
        assert torch.equal(g, built[name]), name
    assert outers == 3


def test_kept_per_sample_gradients_come_as_scaled_views(torch_threads: None) -> None:
    # Gradients kept for other statistics (sequence layers) come unbuilt with
    # ``views``; built, they are exactly what ``batch_grads`` yields.
    stats = step_stats(ENCODER)
    stats.batch_l2()  # keeps the per-sample gradients of the sequence layers
    built = [(name, g) for name, _, g in stats.batch_grads(100)]
    views = list(stats.batch_grads_factored(100, sparse=False, views=True))
    plain = [g for _, _, g in stats.batch_grads_factored(100)]
    scaled = [(n, g) for n, _, g in views if isinstance(g, Scaled)]
    assert len(scaled) >= 4
    assert not any(isinstance(g, Scaled) for g in plain)
    by_name: dict[str, list[Tensor]] = {}
    for name, g in built:
        by_name.setdefault(name, []).append(g)
    for name, g in scaled:
        assert g.scale == ENCODER.make()[1].shape[0]
        assert any(torch.equal(g.built(), b) for b in by_name[name]), name


def test_sparse_embedding_rows_are_the_built_per_sample_gradients(
    torch_threads: None,
) -> None:
    stats = step_stats(ENCODER)
    built = {name: g for name, _, g in stats.batch_grads()}
    sparse = 0
    for name, _, g in stats.batch_grads_factored(sparse=True):
        if not isinstance(g, Sparse):
            continue
        sparse += 1
        # The same values, bit for bit, and exact +0.0 everywhere else.
        want = built[name].reshape(-1)
        nonzero = want[want != 0]
        got = g.values.reshape(-1)
        assert torch.equal(got[got != 0].sort().values, nonzero.sort().values), name
        assert g.zeros + g.values.numel() == want.numel()
        assert int((want == 0).sum()) == g.zeros + int((got == 0).sum())
        assert not torch.signbit(want[want == 0]).any()
    assert sparse == 2  # token and position embeddings


@pytest.mark.parametrize(
    ("cls", "model", "span", "kept"),
    [
        (GradHist1d, "mlp", 16, False),
        (GradHist2d, "mlp", 16, False),
        (GradHist1d, "encoder", 16, False),
        (GradHist1d, "encoder", 4, False),
        (GradHist1d, "encoder", 16, True),
        (GradHist1d, "encoder", 4, True),
        (GradHist2d, "encoder", 16, True),
    ],
    ids=lambda c: c.name if isinstance(c, type) else str(c),
)
def test_histograms_count_the_built_values(
    cls: type[GradHist1d] | type[GradHist2d],
    model: str,
    span: int,
    kept: bool,
    torch_threads: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Non-default ranges put many values on several edges and in the clamps.
    # With ``span`` 4 and 21 bins over (−1, 1), the encoder's chunks span 2 to
    # 12 bins: one reading counts some by comparisons and bins the others.
    monkeypatch.setattr(grad_hist_1d, "MAX_SPAN", span)
    problem = Problem("mlp", _mlp, F.cross_entropy) if model == "mlp" else ENCODER
    # NormTest, computed first, has the sequence layers' gradients kept: then
    # counted from ``Scaled`` views.
    others = [NormTest(schedule=always)] if kept else []
    if cls is GradHist1d:
        bins, range_ = (13, (-0.05, 0.02)) if span > 4 else (21, (-1.0, 1.0))
        inst: GradHist1d | GradHist2d = GradHist1d(
            schedule=always, bins=bins, range=range_
        )
    else:
        inst = GradHist2d(
            schedule=always, bins=(9, 7), range=((-0.03, 0.05), (-0.3, 0.2))
        )
    got = run_step(problem, [*others, inst])[inst.name]
    stats = step_stats(problem)
    if isinstance(inst, GradHist1d):
        (lo, hi), n = inst.range, inst.bins
        want = torch.zeros(n + 1, dtype=torch.int64)
        for _, _, g in stats.batch_grads():
            count_into(want, histc_bins(g, lo, hi, n))
        assert torch.equal(got["counts"], want[:n].double())
    else:
        (ng, nt), ((glo, ghi), (tlo, thi)) = inst.bins, inst.range
        want = torch.zeros(2 * ng * nt + 1, dtype=torch.int64)
        for _, theta, g in stats.batch_grads():
            tb = centre_bins(theta.clone(), nt, tlo, thi, nan=ng * nt)
            count_into(want, torch.add(tb, centre_bins(g, ng, glo, ghi, ng), alpha=nt))
        assert torch.equal(got["counts"], want[: ng * nt].double().reshape(ng, nt))
    model_, x, _ = problem.make()
    assert float(got["counts"].sum()) == sum(
        p.numel() * x.shape[0] for p in model_.parameters()
    )


def test_nan_gradients_are_counted_not_binned(torch_threads: None) -> None:
    def build() -> tuple[nn.Module, Tensor, Tensor]:
        model, x, y = _mlp()
        x[3, 5] = float("nan")  # sample 3's gradients are NaN in every layer
        return model, x, y

    problem = Problem("nan", build, F.cross_entropy)
    got = run_step(problem, [GradHist1d(schedule=always)])["grad_hist_1d"]
    stats = step_stats(problem)
    nan = sum(int(g.isnan().sum()) for _, _, g in stats.batch_grads())
    assert nan > 0
    assert float(got["nan"]) == nan
    total = sum(g.numel() for _, _, g in stats.batch_grads())
    assert float(got["counts"].sum()) == total - nan
