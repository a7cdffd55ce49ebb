"""Curvature estimates state their error, and the stated error is right.

On a tiny tanh network (its Hessian is not its GGN, so neither is exact for
the other) the exact Hessian and GGN are computed by brute force; the
estimators must be unbiased and their stated 95 % intervals must cover the
exact value at their nominal rate. Tolerances: N seeded repetitions give a
coverage with binomial standard deviation sqrt(0.95·0.05/N) (1.3 % at N = 300);
the bounds below are 3 of those around 95 %, widened by 1 % for the Student-t
approximation of a non-normal probe distribution.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

import glasscockpit.agent.curvature.ggn_diagonal as ggn_module
from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.curvature.hessian_products import (
    MIN_PROBES,
    HessianOperator,
    hutchinson,
    t95,
)
from glasscockpit.agent.engine import HookEngine, diag_ggn
from glasscockpit.agent.instruments import HessTrace
from glasscockpit.agent.lifecycle.schedules import auto, log_spaced
from glasscockpit.protocol import Readings


def _problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    return model, torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))


def _exact_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    params = list(model.parameters())
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    total = 0.0
    for p, g in zip(params, grads, strict=True):
        flat = g.reshape(-1)
        for i in range(flat.numel()):
            (row,) = torch.autograd.grad(flat[i], p, retain_graph=True)
            total += float(row.reshape(-1)[i])
    return total


def test_hutchinson_is_unbiased_and_its_interval_covers_at_95_percent() -> None:
    model, x, y = _problem()
    exact = _exact_trace(model, x, y)
    op = HessianOperator(F.cross_entropy(model(x), y), list(model.parameters()))
    reps, probes, totals, covered = 300, 10, [], 0
    for seed in range(reps):
        gens = {torch.device("cpu"): torch.Generator().manual_seed(seed)}
        est = hutchinson(op, probes, gens)
        assert est.stderr is not None and est.probes == probes
        total, se = float(est.total), float(est.stderr)
        totals.append(total)
        covered += abs(total - exact) <= t95(probes - 1) * se
    mean = torch.tensor(totals).mean()
    spread = torch.tensor(totals).std() / reps**0.5
    assert abs(float(mean) - exact) <= 4 * float(spread)  # unbiased
    assert 0.90 <= covered / reps <= 0.99


def test_hutchinson_with_a_time_allowance_keeps_min_probes_at_least() -> None:
    model, x, y = _problem()
    op = HessianOperator(F.cross_entropy(model(x), y), list(model.parameters()))
    gens = {torch.device("cpu"): torch.Generator().manual_seed(0)}
    assert hutchinson(op, 20, gens, seconds=0.0).probes == MIN_PROBES
    assert hutchinson(op, 20, gens, seconds=60.0).probes == 20


def _ggn_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    engine = HookEngine(model, list(model.named_parameters()))
    engine.arm()
    ggn = diag_ggn(engine, F.cross_entropy(model(x), y))
    engine.remove()
    return float(sum(v.sum() for v in ggn.values()))


def test_monte_carlo_ggn_states_an_error_that_covers_the_exact_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, x, y = _problem()
    exact = _ggn_trace(model, x, y)
    monkeypatch.setattr(ggn_module, "MAX_PASSES", 1)
    monkeypatch.setattr(ggn_module, "MC_DRAWS", 8)
    engine = HookEngine(model, list(model.named_parameters()))
    engine.arm()
    loss = F.cross_entropy(model(x), y)
    reps, covered, means = 300, 0, []
    pattern = re.compile(r"its trace (\S+), standard error over the draws (\S+)")
    for _ in range(reps):
        notes: list[str] = []
        got = diag_ggn(engine, loss, notes)
        match = pattern.search(notes[-1])
        assert match is not None, notes
        stated, se = float(match[1]), float(match[2])
        total = float(sum(v.sum() for v in got.values()))
        assert stated == pytest.approx(total, rel=1e-3)
        means.append(total)
        covered += abs(total - exact) <= t95(8 - 1) * se
    spread = torch.tensor(means).std() / reps**0.5
    assert abs(float(torch.tensor(means).mean()) - exact) <= 4 * float(spread)
    assert 0.90 <= covered / reps <= 0.99


def test_an_allowance_too_small_for_the_exact_ggn_samples_and_says_why() -> None:
    # 40 classes: 40 passes for the exact diagonal, more than twice the floor.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 40))
    x, y = torch.randn(7, 5), torch.randint(0, 40, (7,))
    engine = HookEngine(model, list(model.named_parameters()))
    engine.arm()
    notes: list[str] = []
    diag_ggn(engine, F.cross_entropy(model(x), y), notes, seconds=0.0)
    floor = ggn_module.MC_DRAWS_MIN
    assert notes[-1].startswith(
        f"estimate: Monte-Carlo GGN diagonal from {floor} sampled"
    )
    assert "against the allowance of 0 s" in notes[-1]
    notes.clear()
    diag_ggn(engine, F.cross_entropy(model(x), y), notes, seconds=60.0)
    assert notes == []  # 40 passes fit: exact, no note


def test_an_exact_ggn_as_cheap_as_the_estimate_is_taken_whatever_the_allowance():
    model, x, y = _problem()  # 3 classes: 3 passes, fewer than the floor's draws
    engine = HookEngine(model, list(model.named_parameters()))
    engine.arm()
    notes: list[str] = []
    diag_ggn(engine, F.cross_entropy(model(x), y), notes, seconds=0.0)
    assert notes == []


def test_hess_trace_on_a_budget_reads_its_estimator_and_interval() -> None:
    model, x, y = _problem()
    sched = auto(log_spaced())
    sched.governed, sched.stride, sched.allowance = True, 1, 0.0
    inst = HessTrace(schedule=sched, method="hutchinson")
    cockpit = Cockpit(model, None, server=None, run="t", instruments=[inst])
    loss = F.cross_entropy(model(x), y)
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    frame = next(f for f in cockpit.transport.frames if isinstance(f, Readings))  # type: ignore[attr-defined]
    note = frame.errors["hess_trace"]
    assert note.startswith(f"estimate: Hutchinson trace from {MIN_PROBES} Rademacher")
    assert "95 % interval" in note
    assert cockpit.readings[0]["hess_trace"]["stderr"] > 0
    # An explicit schedule has no allowance: the configured 20 probes.
    inst = HessTrace(schedule=always, method="hutchinson")
    cockpit = Cockpit(model, None, server=None, run="t", instruments=[inst])
    loss = F.cross_entropy(model(x), y)
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    frame = next(f for f in cockpit.transport.frames if isinstance(f, Readings))  # type: ignore[attr-defined]
    assert "from 20 Rademacher probes" in frame.errors["hess_trace"]


def test_hess_max_ev_on_a_budget_stops_early_and_states_its_residual() -> None:
    from glasscockpit.agent.instruments import HessMaxEV

    model, x, y = _problem()
    sched = auto(log_spaced())
    sched.governed, sched.stride, sched.allowance = True, 1, 0.0
    inst = HessMaxEV(schedule=sched, rtol=1e-12)
    cockpit = Cockpit(model, None, server=None, run="t", instruments=[inst])
    loss = F.cross_entropy(model(x), y)
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    frame = next(f for f in cockpit.transport.frames if isinstance(f, Readings))  # type: ignore[attr-defined]
    note = frame.errors["hess_max_ev"]
    assert note.startswith(
        f"estimate: Lanczos stopped by the overhead budget after {inst.last_matvecs}"
    )
    # The stated residual bounds the distance to an eigenvalue of the Hessian,
    # and a budget never stops Lanczos before that is within 10 % of the reading.
    resid = float(re.search(r"within (\S+)·", note)[1])  # type: ignore[index]
    assert resid <= 0.1
    params = list(model.parameters())
    flat = torch.cat([p.reshape(-1) for p in params])

    def loss_of(v: torch.Tensor) -> torch.Tensor:
        parts, i = [], 0
        for p in params:
            parts.append(v[i : i + p.numel()].reshape(p.shape))
            i += p.numel()
        out = torch.func.functional_call(
            model,
            dict(zip([n for n, _ in model.named_parameters()], parts, strict=True)),
            (x,),
        )
        return F.cross_entropy(out, y)

    hess = torch.autograd.functional.hessian(loss_of, flat.detach())
    evals = torch.linalg.eigvalsh(hess)
    value = cockpit.readings[0]["hess_max_ev"]
    gap = float((evals - value).abs().min())
    assert gap <= resid * abs(value) * 1.01 + 1e-12
