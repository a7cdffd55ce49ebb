"""Brute-force references for the step-size and curvature instruments.

Only ``torch.autograd`` and numpy: explicit Hessians on tiny models, per-sample
gradients by a Python loop, parameter snapshots, and Cockpit's α fit written out
with matrix inverses as in its source.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import backpack
import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from glasscockpit.agent import Cockpit
from glasscockpit.agent.instruments import Instrument


# -- problems ---------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """A tiny seeded model, a batch per step and a per-sample loss."""

    name: str
    make_model: Callable[[], nn.Module]
    make_batch: Callable[[int], tuple[Tensor, Tensor]]
    sample_losses: Callable[[Tensor, Tensor], Tensor]  # (output, target) -> [B]
    #: The mean loss as an nn.Module (what BackPACK must extend).
    loss_module: Callable[[], nn.Module]

    def __repr__(self) -> str:
        return self.name


def _batch(shape: tuple[int, ...], classes: int | None, out: int = 3):
    def make(step: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(shape, generator=g)
        if classes is None:
            return x, torch.randn(shape[0], out, generator=g)
        return x, torch.randint(0, classes, (shape[0],), generator=g)

    return make


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return build()

    return make


def _mse(out: Tensor, y: Tensor) -> Tensor:
    return ((out - y) ** 2).mean(dim=1)


def _ce(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out, y, reduction="none")


PROBLEMS = (
    Problem(
        "linreg-mse",
        _seeded(lambda: nn.Linear(4, 3)),
        _batch((6, 4), None),
        _mse,
        nn.MSELoss,
    ),
    Problem(
        "mlp-ce",
        _seeded(lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))),
        _batch((6, 4), 3),
        _ce,
        nn.CrossEntropyLoss,
    ),
    Problem(
        "cnn-ce",
        _seeded(
            lambda: nn.Sequential(
                nn.Conv2d(1, 2, 3),
                nn.Sigmoid(),
                nn.Flatten(),
                nn.Linear(2 * 3 * 3, 3),
            )
        ),
        _batch((5, 1, 5, 5), 3),
        _ce,
        nn.CrossEntropyLoss,
    ),
)

OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
}


# -- curvature ----------------------------------------------------------------------
def hessian(model: nn.Module, problem: Problem, step: int) -> Tensor:
    """The explicit Hessian [D, D] of the mean loss on step's batch, float64."""
    model = copy.deepcopy(model).double()
    x, y = problem.make_batch(step)
    x = x.double()
    y = y.double() if y.is_floating_point() else y
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(flat: Tensor) -> Tensor:
        params, offset = {}, 0
        for n, s in zip(names, shapes, strict=True):
            k = int(np.prod(s))
            params[n] = flat[offset : offset + k].view(s)
            offset += k
        return problem.sample_losses(functional_call(model, params, (x,)), y).mean()

    h: Tensor = torch.autograd.functional.hessian(loss_of, flat0)
    return h


def model_at(model: nn.Module, flat: Tensor) -> nn.Module:
    """A copy of ``model`` with parameters ``flat`` (a ``flat_params`` vector)."""
    out = copy.deepcopy(model)
    offset = 0
    with torch.no_grad():
        for p in out.parameters():
            k = p.numel()
            p.copy_(flat[offset : offset + k].view_as(p))
            offset += k
    return out


def block_traces(model: nn.Module, h: Tensor) -> dict[str, float]:
    """tr of each parameter's diagonal block and "total"."""
    out, offset = {}, 0
    for n, p in model.named_parameters():
        k = p.numel()
        out[n] = float(torch.diagonal(h)[offset : offset + k].sum())
        offset += k
    out["total"] = float(torch.diagonal(h).sum())
    return out


def hutchinson_same_probes(
    model: nn.Module, h: Tensor, probes: int, seed: int
) -> dict[str, float]:
    """mean_k vᵀHv per block with the Rademacher probes a seeded generator gives.

    The probes are drawn per parameter in ``named_parameters`` order, probe by
    probe, the contract of ``HessTrace(seed=...)``.
    """
    g = torch.Generator().manual_seed(seed)
    shapes = [(n, p.shape) for n, p in model.named_parameters()]
    per_probe = []
    for _ in range(probes):
        v = [torch.randint(0, 2, s, generator=g).double() * 2 - 1 for _, s in shapes]
        flat = torch.cat([t.reshape(-1) for t in v])
        hv = h @ flat
        row, offset = {}, 0
        for (n, _), t in zip(shapes, v, strict=True):
            k = t.numel()
            row[n] = float(flat[offset : offset + k] @ hv[offset : offset + k])
            offset += k
        per_probe.append(row)
    out = {n: float(np.mean([r[n] for r in per_probe])) for n, _ in shapes}
    totals = [sum(r.values()) for r in per_probe]
    out["total"] = float(np.mean(totals))
    out["stderr"] = float(np.std(totals, ddof=1) / np.sqrt(probes))
    return out


# -- step size ------------------------------------------------------------------------
def per_sample_grads(model: nn.Module, problem: Problem, step: int) -> Tensor:
    """[B, D] gradients of each sample's loss at the current parameters, float64."""
    x, y = problem.make_batch(step)
    rows = []
    for i in range(x.shape[0]):
        loss = problem.sample_losses(model(x[i : i + 1]), y[i : i + 1]).sum()
        grads = torch.autograd.grad(loss, list(model.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]).double())
    return torch.stack(rows)


def flat_params(model: nn.Module) -> Tensor:
    """θ as one float64 vector."""
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


def norms(model: nn.Module, flat: Tensor) -> dict[str, float]:
    """‖·‖ of each parameter's slice of ``flat`` and "total"."""
    out, offset = {}, 0
    for n, p in model.named_parameters():
        k = p.numel()
        out[n] = float(flat[offset : offset + k].norm())
        offset += k
    out["total"] = float(flat.norm())
    return out


def cockpit_alpha(
    tau: float,
    fs: list[float],
    dfs: list[float],
    fs_var: list[float],
    dfs_var: list[float],
) -> float:
    """Cockpit's ``_fit_quadratic`` + ``_get_alpha``, with numpy inverses."""
    phi = np.array([[1, 0, 0], [1, tau, tau**2], [0, 1, 0], [0, 1, 2 * tau]]).T
    lam = np.diag(np.array(fs_var + dfs_var, dtype=np.float64))
    y = np.array(fs + dfs, dtype=np.float64)
    lam_inv = np.linalg.inv(lam)
    mu = np.linalg.inv(phi @ lam_inv @ phi.T) @ phi @ lam_inv @ y
    if mu[2] < 0:
        return -1.0
    return float(2 * tau / (-mu[1] / mu[2]) - 1)


@dataclass
class Trace:
    """Everything a reference needs from one training run."""

    thetas: list[Tensor] = field(default_factory=list)  # θ_t, t = 0..steps
    losses: list[Tensor] = field(default_factory=list)  # per-sample losses [B]
    sample_grads: list[Tensor] = field(default_factory=list)  # [B, D] at θ_t
    grads: list[list[Tensor]] = field(default_factory=list)  # p.grad after backward


def train(
    problem: Problem,
    optimizer: str | None,
    instruments: list[Instrument],
    steps: int = 4,
    clip: float | None = None,
    scheduler: bool = False,
    close: bool = True,
    extend: bool = False,
) -> tuple[Cockpit, Trace, nn.Module]:
    """Train with a Cockpit (in-memory) and record the brute-force inputs.

    ``extend``: ``backpack.extend`` the model and loss module (BackPACK's user
    contract), and backpropagate the loss module's output.
    """
    model = problem.make_model()
    loss_module = problem.loss_module()
    if extend:
        model = backpack.extend(model)
        loss_module = backpack.extend(loss_module)
    opt = None if optimizer is None else OPTIMIZERS[optimizer](list(model.parameters()))
    sched = (
        torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
        if scheduler and opt is not None
        else None
    )
    # Fixed cadences: every instrument tracks step 0 (no budget measuring first).
    cockpit = Cockpit(
        model,
        opt,
        server=None,
        run="ref",
        instruments=instruments,
        fail_mode="raise",
        budget=None,
    )
    trace = Trace()
    # References run on a twin without the cockpit's hooks: extra forward and
    # backward passes of the monitored model between steps would be recorded.
    twin = problem.make_model()
    for step in range(steps):
        trace.thetas.append(flat_params(model))
        twin.load_state_dict(model.state_dict())
        trace.sample_grads.append(per_sample_grads(twin, problem, step))
        if opt is not None:
            opt.zero_grad()
        x, y = problem.make_batch(step)
        out = model(x)
        losses = problem.sample_losses(out, y)
        trace.losses.append(losses.detach().double())
        loss = loss_module(out, y) if extend else losses.mean()
        with cockpit.step(step, loss=loss, losses=losses):
            loss.backward()
        trace.grads.append([p.grad.detach().clone() for p in model.parameters()])
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        if opt is None:
            with torch.no_grad():  # plain gradient descent by hand
                for p in model.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None
        else:
            opt.step()
        if sched is not None:
            sched.step()
    trace.thetas.append(flat_params(model))
    if close:
        cockpit.close()
    return cockpit, trace, model


def alpha_reference(trace: Trace, t: int) -> float:
    """α of step t from snapshots and per-sample gradient loops (Cockpit's formula)."""
    d = trace.thetas[t + 1] - trace.thetas[t]
    tau = float(d.norm())
    u = d / tau
    p0 = trace.sample_grads[t] @ u
    p1 = trace.sample_grads[t + 1] @ u
    l0, l1 = trace.losses[t], trace.losses[t + 1]
    return cockpit_alpha(
        tau,
        [float(l0.mean()), float(l1.mean())],
        [float(p0.mean()), float(p1.mean())],
        [float(l0.var()), float(l1.var())],
        [float(p0.var()), float(p1.var())],
    )


def as_float_dict(reading: Any) -> dict[str, float]:
    """A per-layer reading with plain floats."""
    return {k: float(v) for k, v in reading.items() if v is not None}
