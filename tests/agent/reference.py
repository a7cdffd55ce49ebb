"""Brute-force torch.autograd versions of the per-sample and curvature instruments.

Per-sample gradients come from one forward/backward per sample, the curvature from
explicit Hessian rows (one double-backward per coordinate), and every statistic
from its definition (centred sums, Gram-free only where the definition is), in
float64. One function per instrument name, registered in ``REFERENCES``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tests.agent.problems import Problem


@dataclass
class Data:
    """Everything a reference needs, float64 on the CPU."""

    names: list[str]
    theta: dict[str, Tensor]  # [*shape]
    per_sample: dict[str, Tensor]  # g_n, [B, *shape]
    grad: dict[str, Tensor]  # mean of g_n = .grad
    hess_diag: dict[str, Tensor]  # exact Hessian diagonal of the mean loss
    loss: float
    lrs: dict[str, float]

    @property
    def batch(self) -> int:
        return next(iter(self.per_sample.values())).shape[0]

    def flat(self, d: dict[str, Tensor], batched: bool = False) -> Tensor:
        dims = 1 if batched else 0
        return torch.cat([d[n].flatten(dims) for n in self.names], dim=dims)


def collect(problem: Problem, seed: int = 0, lr: float = 0.1) -> Data:
    """Per-sample gradients by a loop, Hessian diagonal by explicit rows."""
    model, x, y = problem.make(seed)
    params = [(n, p) for n, p in model.named_parameters()]
    ps = [p for _, p in params]
    names = [n for n, _ in params]
    per: dict[str, list[Tensor]] = {n: [] for n in names}
    for i in range(x.shape[0]):
        loss_i = problem.loss_fn(model(x[i : i + 1]), y[i : i + 1])
        for n, g in zip(names, torch.autograd.grad(loss_i, ps), strict=True):
            per[n].append(g.double())
    loss = problem.loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, ps, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    diag = torch.empty(flat.numel(), dtype=torch.float64)
    for k in range(flat.numel()):
        row = torch.autograd.grad(flat[k], ps, retain_graph=True)
        diag[k] = torch.cat([r.reshape(-1) for r in row])[k].double()
    hess, offset = {}, 0
    for n, p in params:
        hess[n] = diag[offset : offset + p.numel()].reshape(p.shape)
        offset += p.numel()
    return Data(
        names=names,
        theta={n: p.detach().double() for n, p in params},
        per_sample={n: torch.stack(v) for n, v in per.items()},
        grad={n: g.detach().double() for n, g in zip(names, grads, strict=True)},
        hess_diag=hess,
        loss=float(loss.detach()),
        lrs=dict.fromkeys(names, lr),
    )


def _per_layer(data: Data, fn: Callable[[list[str]], float | None]) -> dict[str, Any]:
    out: dict[str, Any] = {"total": fn(data.names)}
    out.update({n: fn([n]) for n in data.names})
    return out


def _sub(data: Data, d: dict[str, Tensor], names: list[str], batched: bool) -> Tensor:
    return torch.cat([d[n].flatten(1 if batched else 0) for n in names], -1)


def norm_test(data: Data, inst: Any) -> dict[str, Any]:
    def fn(names: list[str]) -> float | None:
        gn, g, b = (
            _sub(data, data.per_sample, names, True),
            _sub(data, data.grad, names, False),
            data.batch,
        )
        if b < 2 or float(g @ g) == 0:
            return None
        var = ((gn - g) ** 2).sum() / (b - 1)
        return math.sqrt(var / (b * (g @ g)))

    return _per_layer(data, fn)


def inner_test(data: Data, inst: Any) -> dict[str, Any]:
    def fn(names: list[str]) -> float | None:
        gn, g, b = (
            _sub(data, data.per_sample, names, True),
            _sub(data, data.grad, names, False),
            data.batch,
        )
        if b < 2 or float(g @ g) == 0:
            return None
        var = ((gn @ g - g @ g) ** 2).sum() / (b - 1)
        return math.sqrt(var / (b * (g @ g) ** 2))

    return _per_layer(data, fn)


def ortho_test(data: Data, inst: Any) -> dict[str, Any]:
    def fn(names: list[str]) -> float | None:
        gn, g, b = (
            _sub(data, data.per_sample, names, True),
            _sub(data, data.grad, names, False),
            data.batch,
        )
        if b < 2 or float(g @ g) == 0:
            return None
        orth = gn - torch.outer(gn @ g / (g @ g), g)
        var = (orth**2).sum() / (b - 1)
        return math.sqrt(var / (b * (g @ g)))

    return _per_layer(data, fn)


def _eps(inst: Any, scale: Tensor) -> float:
    return inst.epsilon * float(scale) if inst.relative else inst.epsilon


def mean_gsnr(data: Data, inst: Any) -> dict[str, Any]:
    gn_all = data.flat(data.per_sample, True)
    eps = _eps(inst, (gn_all**2).mean())

    def fn(names: list[str]) -> float | None:
        gn = _sub(data, data.per_sample, names, True)
        var = gn.var(0, unbiased=False)
        return float((gn.mean(0) ** 2 / (var + eps)).mean()) if data.batch > 1 else None

    return _per_layer(data, fn)


def early_stopping(data: Data, inst: Any) -> dict[str, Any]:
    gn_all = data.flat(data.per_sample, True)
    eps = _eps(inst, (gn_all**2).mean())

    def fn(names: list[str]) -> float | None:
        gn, b = _sub(data, data.per_sample, names, True), data.batch
        if b < 2:
            return None
        ratio = gn.mean(0) ** 2 / (gn.var(0, unbiased=True) + eps)
        return float(1 - b * ratio.mean())

    return _per_layer(data, fn)


def cabs(data: Data, inst: Any) -> dict[str, Any]:
    def fn(names: list[str]) -> float | None:
        if data.batch < 2:
            return None
        return sum(
            data.lrs[n]
            * float(data.per_sample[n].flatten(1).var(0, unbiased=False).sum())
            / data.loss
            for n in names
        )

    return _per_layer(data, fn)


def tic_diag(data: Data, inst: Any) -> dict[str, Any]:
    h_all = data.flat(data.hess_diag)
    eps = _eps(inst, h_all.abs().mean())

    def fn(names: list[str]) -> float:
        gn = _sub(data, data.per_sample, names, True)
        h = _sub(data, data.hess_diag, names, False)
        return float(((gn**2).mean(0) / (h + eps)).sum())

    return _per_layer(data, fn)


def tic_trace(data: Data, inst: Any) -> dict[str, Any]:
    def fn(names: list[str]) -> float:
        gn = _sub(data, data.per_sample, names, True)
        h = _sub(data, data.hess_diag, names, False)
        eps = _eps(inst, h.abs().sum())
        return float((gn**2).sum(1).mean() / (h.sum() + eps))

    return _per_layer(data, fn)


def grad_hist_1d(data: Data, inst: Any) -> dict[str, Any]:
    lo, hi = inst.range
    values = data.flat(data.per_sample, True).float().reshape(-1)
    # Counted in float64: float32 counts stop at 2^24 (ResNet-18's 3 × 11 M).
    counts = torch.histc(values.clamp(lo, hi).double(), inst.bins, lo, hi)
    return {
        "counts": counts.double(),
        "edges": torch.linspace(lo, hi, inst.bins + 1, dtype=torch.float64),
        "nan": float(values.isnan().sum()),
    }


def grad_hist_2d(data: Data, inst: Any) -> dict[str, Any]:
    (ng, nt), ((glo, ghi), (tlo, thi)) = inst.bins, inst.range
    gs, ts = [], []
    for n in data.names:
        g = data.per_sample[n].float()
        gs.append(g.reshape(-1))
        ts.append(data.theta[n].float().expand_as(g).reshape(-1))
    wg, wt = (ghi - glo) / ng, (thi - tlo) / nt
    g = torch.cat(gs).clamp(glo + wg / 2, ghi - wg / 2).numpy()
    t = torch.cat(ts).clamp(tlo + wt / 2, thi - wt / 2).numpy()
    counts, _, _ = np.histogram2d(g, t, bins=[ng, nt], range=[[glo, ghi], [tlo, thi]])
    return {
        "nan": float(torch.cat(gs).isnan().sum() + torch.cat(ts).isnan().sum()),
        "counts": torch.from_numpy(counts),
        "y_edges": torch.linspace(glo, ghi, ng + 1, dtype=torch.float64),
        "x_edges": torch.linspace(tlo, thi, nt + 1, dtype=torch.float64),
    }


REFERENCES: dict[str, Callable[[Data, Any], Any]] = {
    f.__name__: f
    for f in (
        norm_test,
        inner_test,
        ortho_test,
        mean_gsnr,
        early_stopping,
        cabs,
        tic_diag,
        tic_trace,
        grad_hist_1d,
        grad_hist_2d,
    )
}
