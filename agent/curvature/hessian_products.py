"""Curvature from the loss graph, before the user's backward pass: HVPs, trace, λ_max.

Everything here differentiates through the graph of a loss that has not been
backpropagated yet, with ``retain_graph=True``, so the user's ``loss.backward()``
that follows still works and its gradients are unchanged (``torch.autograd.grad``
never writes ``.grad``). Random probes come from private ``torch.Generator``s, so
the training run's global RNG stream is untouched.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def split_flat(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Views of a flat [D] vector shaped like ``like`` (one ``split`` for all)."""
    parts = torch.split(flat, [t.numel() for t in like])
    return [part.view_as(t) for part, t in zip(parts, like, strict=True)]


class HessianOperator:
    """``v ↦ Hv`` for the Hessian of a scalar loss w.r.t. parameters.

    Built once per step by ``grad(loss, params, create_graph=True)``; each product
    is one more backward through that graph (double backward, the fastest HVP on
    CPU in engines.md §5.1). Parameters the loss does not depend on, or on which
    it depends linearly, get zero rows.
    """

    def __init__(self, loss: Tensor, params: Sequence[Tensor]) -> None:
        self.params = list(params)
        grads = torch.autograd.grad(
            loss, self.params, create_graph=True, retain_graph=True, allow_unused=True
        )
        #: Indices of parameters whose gradient still depends on the parameters.
        self._live = [
            i for i, g in enumerate(grads) if g is not None and g.requires_grad
        ]
        self._grads = [grads[i] for i in self._live]
        self.numel = sum(p.numel() for p in self.params)
        #: Hessian-vector products computed so far.
        self.matvecs = 0

    def matvec(self, vectors: Sequence[Tensor]) -> list[Tensor]:
        """One Hessian-vector product; ``vectors`` and the result are per parameter."""
        self.matvecs += 1
        out = [torch.zeros_like(p) for p in self.params]
        if not self._live:
            return out
        hv = torch.autograd.grad(
            self._grads,
            self.params,
            grad_outputs=[vectors[i] for i in self._live],
            retain_graph=True,
            allow_unused=True,
        )
        return [o if h is None else h.detach() for o, h in zip(out, hv, strict=True)]

    def flat_matvec(self, vector: Tensor) -> Tensor:
        """``Hv`` on one flat vector of all parameters, shape ``[D]``."""
        return _flat(self.matvec(split_flat(vector, self.params)))


@dataclass(frozen=True)
class TopEigen:
    """Result of ``lanczos_top``."""

    value: float  #: largest algebraic Ritz value
    vector: Tensor  #: its unit Ritz vector, shape [D], parameter dtype
    residual: float  #: ‖Hy − θy‖ / scale, the stopping quantity
    matvecs: int
    converged: bool


def lanczos_top(
    matvec: Callable[[Tensor], Tensor],
    start: Tensor,
    rtol: float = 1e-4,
    max_iter: int = 64,
    seconds: float | None = None,
    readable_rtol: float = 0.1,
) -> TopEigen:
    """Largest algebraic eigenvalue of a symmetric operator by Lanczos.

    Full re-orthogonalisation, float64 tridiagonal recurrences. Stops when the
    top Ritz pair's residual ``‖Hy − θy‖ = β_k·|s_k|`` is at most ``rtol`` times
    the largest |Ritz value| (so some eigenvalue lies within that distance of θ,
    and θ ≤ λ_max by interlacing), or on an invariant subspace (β ≈ 0).

    Args:
        matvec: ``v ↦ Hv`` on flat vectors of shape [D].
        start: start vector [D] (need not be normalised, must be non-zero).
        rtol: relative residual tolerance.
        max_iter: at most this many products.
        seconds: also stop when the next product would not end within this
            time, once the residual is at most ``readable_rtol`` (a reading
            that far from every eigenvalue says nothing: the time limit yields
            to it, and the budget widens the stride instead); ``residual``
            then bounds the error.
        readable_rtol: the relative residual a time-limited reading reaches.
    """
    n = start.numel()
    q = start / start.norm()
    basis: list[Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    value, resid, ritz, converged = float("nan"), float("inf"), q, False
    began = time.perf_counter()
    for k in range(min(max_iter, n)):
        readable = k >= 2 and resid <= readable_rtol
        limit = seconds if seconds is not None and readable else math.inf
        if (time.perf_counter() - began) * (k + 1) / max(k, 1) > limit:
            break
        basis.append(q)
        w = matvec(q)
        alpha = float(torch.dot(q.double(), w.double()))
        alphas.append(alpha)
        Q = torch.stack(basis)  # [k+1, D]
        # Two passes of classical Gram-Schmidt keep the basis orthogonal in float32.
        for _ in range(2):
            w = w - Q.T @ (Q @ w)
        beta = float(w.double().norm())
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(t)
        value = float(evals[-1])
        scale = max(float(evals.abs().max()), 1e-30)
        resid = beta * abs(float(evecs[-1, -1])) / scale
        s = evecs[:, -1].to(Q.dtype).to(Q.device)
        ritz = s @ Q
        if resid <= rtol or beta <= 1e-10 * scale or k + 1 == n:
            converged = True
            break
        betas.append(beta)
        q = w / beta
    return TopEigen(value, ritz / ritz.norm(), resid, len(alphas), converged)


@dataclass(frozen=True)
class TraceEstimate:
    """Result of ``hutchinson``: per-parameter and total trace estimates."""

    per_param: Tensor  #: [L] mean of vᵀHv restricted to each parameter, float64
    total: Tensor  #: [] sum over parameters
    stderr: Tensor | None  #: [] standard error of ``total``; None for one probe
    probes: int


def rademacher(
    like: Sequence[Tensor], generators: dict[torch.device, torch.Generator]
) -> list[Tensor]:
    """±1 entries shaped like ``like``, drawn from the given per-device generators."""
    out = []
    for t in like:
        gen = generators[t.device]
        bits = torch.randint(0, 2, t.shape, generator=gen, device=t.device)
        out.append(bits.to(t.dtype) * 2 - 1)
    return out


#: Probes a time-limited Hutchinson reading takes at least: its standard error
#: from fewer is too rough to state (the t quantile of 2 probes is 12.7).
MIN_PROBES = 8


def hutchinson(
    op: HessianOperator,
    probes: int,
    generators: dict[torch.device, torch.Generator],
    seconds: float | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate ``mean_k v_kᵀHv_k`` with Rademacher probes.

    Unbiased per parameter block too, since E[vvᵀ] = I restricted to a block is
    the identity of that block. The standard error is std_k / √k over probes.
    With ``seconds``, probes stop (after at least ``MIN_PROBES``, so that the
    stated error is itself a usable estimate) when the next one would not end
    within that time: the number of probes is chosen before seeing any of
    their values, so the mean stays unbiased.
    """
    rows = []
    start = time.perf_counter()
    for k in range(probes):
        if seconds is not None and k >= MIN_PROBES:
            taken = time.perf_counter() - start
            if taken * (k + 1) / k > seconds:
                break
        v = rademacher(op.params, generators)
        hv = op.matvec(v)
        rows.append(
            torch.stack(
                [(a.double() * b.double()).sum() for a, b in zip(v, hv, strict=True)]
            )
        )
    samples = torch.stack(rows)  # [k, L]
    totals = samples.sum(dim=1)  # [k]
    used = len(rows)
    stderr = totals.std() / math.sqrt(used) if used > 1 else None
    return TraceEstimate(samples.mean(dim=0), totals.mean(), stderr, used)


#: Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom.
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t95(dof: int) -> float:
    """Half-width factor of a two-sided 95 % t-interval (1.96 beyond 30 dof)."""
    return _T95[dof - 1] if 1 <= dof <= len(_T95) else 1.96


# -- BackPACK: keep its module IO, and its exact Hessian diagonal ----------------------
@contextlib.contextmanager
def keep_backpack_io() -> Iterator[None]:
    """Extra backward passes that leave BackPACK's stored module IO in place.

    On a ``backpack.extend``-ed model every backward pass deletes the inputs and
    outputs BackPACK stored in the forward pass unless ``retain_graph`` is set in
    its context; our passes before the user's backward must not take them away
    from the user's (or our own) BackPACK extensions.
    """
    from backpack import backpack

    with backpack(retain_graph=True):
        yield


# -- exact Hessian diagonal where BackPACK applies ------------------------------------
def backpack_diag_hessian(
    loss: Tensor, params: Sequence[Tensor]
) -> list[Tensor] | None:
    """Exact Hessian diagonal per parameter by BackPACK's ``DiagHessian``, or None.

    Applies when the user ``backpack.extend``-ed the model and the loss module
    before the forward pass and every module is second-order supported. Runs
    one extra backward with ``retain_graph=True`` before the user's; ``.grad`` is
    saved and restored, so the user's gradients are unchanged. Any failure or a
    parameter left without ``diag_h`` (unsupported module) gives None.
    """
    from backpack import backpack
    from backpack.extensions import DiagHessian

    saved = [p.grad for p in params]
    try:
        for p in params:
            p.grad = None
        with warnings.catch_warnings(), backpack(DiagHessian(), retain_graph=True):
            # BackPACK's module hooks make torch warn about the first layer, whose
            # input needs no gradient; harmless, and this pass is ours, not the user's.
            warnings.filterwarnings("ignore", "Full backward hook is firing")
            loss.backward(retain_graph=True)  # type: ignore[no-untyped-call]
        diags = [getattr(p, "diag_h", None) for p in params]
        if any(d is None for d in diags):
            return None
        return [d.detach() for d in diags if d is not None]
    except Exception:  # noqa: BLE001 - BackPACK does not cover this model/loss
        return None
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g
            if hasattr(p, "diag_h"):
                del p.diag_h
