"""Alpha's machinery: the applied update, per-sample slopes along it, the fit.

Per-sample gradients are never stored: ``SampleJacobian`` projects them onto a
few directions before the user's backward pass, ``update_directions`` chooses
directions that span the coming optimizer update, and ``fit_alpha`` is Cockpit's
noisy quadratic fit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor


class SampleJacobian:
    """Per-sample directional derivatives ``(∇ℓ_iᵀd)_i`` without per-sample gradients.

    ``w(s) = Σ_i s_i ∇ℓ_i`` is built once with ``create_graph=True``; it is linear
    in ``s``, so ``∂(wᵀd)/∂s = (∇ℓ_iᵀd)_i`` costs one more backward per direction
    and never holds a [B, D] tensor.
    """

    def __init__(self, losses: Tensor, params: Sequence[Tensor]) -> None:
        if losses.dim() != 1:
            raise ValueError(
                f"Per-sample losses must have shape [B], got {tuple(losses.shape)}"
            )
        self.params = list(params)
        self._s = torch.ones_like(losses, requires_grad=True)
        w = torch.autograd.grad(
            losses,
            self.params,
            grad_outputs=self._s,
            create_graph=True,
            retain_graph=True,
            allow_unused=True,
        )
        self._live = [i for i, g in enumerate(w) if g is not None]
        self._w = [w[i] for i in self._live]

    def project(self, direction: Sequence[Tensor]) -> Tensor:
        """``[B]``: each sample's gradient dotted with ``direction`` (per parameter)."""
        if not self._live:
            return torch.zeros_like(self._s).detach()
        (jd,) = torch.autograd.grad(
            self._w,
            self._s,
            grad_outputs=[direction[i] for i in self._live],
            retain_graph=True,
            allow_unused=True,
        )
        return torch.zeros_like(self._s).detach() if jd is None else jd.detach()


def predict_update(
    optimizer: torch.optim.Optimizer,
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
) -> list[Tensor] | None:
    """The update ``optimizer.step()`` would apply with ``grads``, on copies.

    A fresh optimizer of the same class gets cloned parameters, a deep copy of the
    state and the given gradients, and takes one step; the real optimizer, its
    state and the parameters are untouched. Returns the updates per entry of
    ``params`` (zeros for parameters the optimizer does not hold), or None when
    the optimizer cannot be rebuilt as ``type(optimizer)(param_groups)``.

    ``torch.optim.SGD`` itself (``update_in_span``) steps copies of the
    parameters and momentum buffers through the functional ``sgd`` its ``step``
    calls, with the same arguments: the same update, bit for bit, without a
    new optimizer, copies of the gradients or a deep copy of the state.
    """
    if update_in_span(optimizer, params):
        fast = _predict_sgd(optimizer, params, grads)
        if fast is not None:
            return _views(fast, params)
    return _shadow_update(optimizer, params, grads)


def _shadow_update(
    optimizer: torch.optim.Optimizer,
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
) -> list[Tensor] | None:
    """``predict_update`` by a fresh optimizer of the same class."""
    index = {id(p): i for i, p in enumerate(params)}
    clones: dict[int, Tensor] = {}
    groups = []
    for group in optimizer.param_groups:
        copies = []
        for p in group["params"]:
            c = p.detach().clone()
            i = index.get(id(p))
            c.grad = None if i is None else grads[i].detach().clone()
            clones[id(p)] = c
            copies.append(c)
        groups.append(
            {**{k: v for k, v in group.items() if k != "params"}, "params": copies}
        )
    try:
        shadow = type(optimizer)(groups)  # type: ignore[call-arg]
        shadow.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        shadow.step()
    except Exception:  # noqa: BLE001 - an optimizer that cannot be rebuilt
        return None
    # One rounded subtraction in at least float32 (exact for bf16/fp16 values).
    return [
        _wide(clones[id(p)]) - _wide(p.detach())
        if id(p) in clones
        else torch.zeros_like(_wide(p))
        for p in params
    ]


def _predict_sgd(
    optimizer: torch.optim.Optimizer,
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
) -> Tensor | None:
    """``predict_update`` of ``torch.optim.SGD`` holding every parameter, flat [D].

    The step runs on views of one flat copy of θ, which then becomes the update
    in place: the shadow's values, bit for bit. None (the shadow's turn) unless
    every parameter has one dtype (float32 or float64) and device, for a
    differentiable group (its weight decay may write into the gradient), and
    when the functional step fails.
    """
    from torch.optim.sgd import sgd

    if not params:
        return None
    dtype, device = direction_dtype(params), params[0].device
    if any(p.dtype != dtype or p.device != device for p in params):
        return None
    if any(group.get("differentiable") for group in optimizer.param_groups):
        return None
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    views = _views(flat, params)
    index = {id(p): i for i, p in enumerate(params)}
    for group in optimizer.param_groups:
        held = [p for p in group["params"] if id(p) in index]
        if not held:
            continue
        given = [grads[index[id(p)]].detach() for p in held]
        if group["nesterov"] or group["fused"]:
            # Nesterov's foreach path adds the buffer into the gradients.
            given = [g.clone() for g in given]
        bufs: list[Tensor | None] = []
        if group["momentum"] != 0:
            for p in held:
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                bufs.append(None if buf is None else buf.clone())
        try:
            sgd(
                [views[index[id(p)]] for p in held],
                given,
                bufs,
                foreach=group["foreach"],
                fused=group["fused"],
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                lr=group["lr"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=group["maximize"],
            )
        except Exception:  # noqa: BLE001 - e.g. a fused kernel refusing views
            return None
    for v, p in zip(views, params, strict=True):
        v.sub_(p.detach())  # one rounded subtraction, as the shadow's
    return flat


def _views(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Views of a flat [D] vector shaped like ``like``."""
    sizes = [t.numel() for t in like]
    return [
        part.view_as(t) for part, t in zip(torch.split(flat, sizes), like, strict=True)
    ]


def update_in_span(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> bool:
    """Whether the update is, up to its rounding, a combination of g, state and θ.

    True for ``torch.optim.SGD`` itself (a subclass may override ``step``) when
    it holds every parameter. With ``h = ±g + λθ`` (maximize, weight decay)
    and ``m`` the momentum buffer in the state *before* the step (absent at the
    first, where ``m' = h``), ``m' = μ·m + (1 − dampening)·h`` and the update
    is ``−lr·h`` without momentum, ``−lr·m'``, or ``−lr·(h + μ·m')`` with
    Nesterov: a combination of ``g``, the buffer in the state and ``θ``.
    Clipping and LR schedules change only the coefficients. The rounding of
    ``θ + update`` is not in that span: where updates are small against the
    parameters (bench/agent_overhead.py's transformer at lr 0.01), it is more
    than ``Alpha.span_rtol`` of the update, so the predicted update stays among
    the directions, last (``update_directions``), computed by ``_predict_sgd``.
    """
    if type(optimizer) is not torch.optim.SGD:
        return False
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return all(id(p) in held for p in params)


def _wide(t: Tensor) -> Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def direction_dtype(params: Sequence[Tensor]) -> torch.dtype:
    """float64 if a parameter is, else float32 (also for half-precision models).

    The directions only need the parameters' precision: the per-sample
    projections are computed in it, and float32 halves the memory traffic of
    the ``K × D`` basis against float64.
    """
    return (
        torch.float64
        if any(p.dtype == torch.float64 for p in params)
        else (torch.float32)
    )


def _flat(tensors: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    return torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors])


def update_directions(
    optimizer: torch.optim.Optimizer | None,
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
) -> list[Tensor]:
    """Flat directions [D] (``direction_dtype``) spanning the optimizer's update.

    The update predicted by ``predict_update`` (last if ``update_in_span``, else
    first), the gradient the optimizer will see, every parameter-shaped
    floating-point state tensor (momentum buffers, Adam moments) and, with
    weight decay, θ. Clipping by global norm and LR changes keep SGD-family
    updates in this span. With several parameter groups each direction is split
    per group, since groups may use different rates.
    """
    out: list[Tensor] = []
    dtype = direction_dtype(params)
    if optimizer is None:
        return [_flat(grads, dtype)]
    # SGD's update is the others' combination up to its rounding: the gradient
    # first, whose row (g/‖g‖) has per-sample slopes that ``batch_dot`` shares.
    last = update_in_span(optimizer, params)
    predicted = _predict_sgd(optimizer, params, grads) if last else None
    if predicted is None:
        shadow = _shadow_update(optimizer, params, grads)
        predicted = None if shadow is None else _flat(shadow, dtype)
    if predicted is not None and not last:
        out.append(predicted)
    out.append(_flat(grads, dtype))
    state = [optimizer.state.get(p, {}) for p in params]
    keys = sorted(
        {
            k
            for p, st in zip(params, state, strict=True)
            for k, v in st.items()
            if isinstance(v, Tensor) and v.shape == p.shape and v.is_floating_point()
        }
    )
    for key in keys:
        out.append(
            _flat(
                [
                    st.get(key, torch.zeros_like(p))
                    for p, st in zip(params, state, strict=True)
                ],
                dtype,
            )
        )
    if any(g.get("weight_decay", 0) for g in optimizer.param_groups):
        out.append(_flat(params, dtype))
    if predicted is not None and last:
        out.append(predicted)
    if len(optimizer.param_groups) < 2:
        return out
    masks = []
    for group in optimizer.param_groups:
        ids = {id(q) for q in group["params"]}
        masks.append(
            _flat([torch.full_like(p, float(id(p) in ids)) for p in params], dtype)
        )
    return [v * m for v in out for m in masks]


def orthonormal_basis(
    candidates: Sequence[Tensor], drop_rtol: float | None = None
) -> Tensor:
    """Rows spanning ``candidates`` (flat vectors [D]), orthonormal: [K, D].

    Vectors already in the span of earlier ones (relative remainder at most
    ``drop_rtol``; default 1e-7 in float64, 1e-5 in float32) are dropped; a
    kept remainder of round-off size only adds a harmless extra direction.
    """
    return orthonormal_rows(candidates, drop_rtol)[0]


def orthonormal_rows(
    candidates: Sequence[Tensor], drop_rtol: float | None = None
) -> tuple[Tensor, float, tuple[Tensor, float] | None]:
    """``orthonormal_basis``, the norm of ``candidates[0]`` and the last in the rows.

    The norm is 0.0 when the first candidate is zero or not finite (dropped);
    otherwise the first row is ``candidates[0]`` divided by it. The last
    candidate ``v`` comes as its coefficients ``c`` in the rows (``v ≈ cᵀQ``,
    from the Gram-Schmidt passes) and its relative remainder (0.0 when it
    gave a row), or None when it is zero or not finite.
    """
    if drop_rtol is None:
        drop_rtol = 1e-7 if candidates[0].dtype == torch.float64 else 1e-5
    # Rows are written into one buffer (views of it, no stacking per pass) and
    # each projection is removed by one fused ``addmv``: the candidates are
    # model-sized, so every pass over them counts.
    out = candidates[0].new_empty((len(candidates), candidates[0].numel()))
    k = 0
    first = 0.0
    last: tuple[Tensor, float] | None = None
    for i, v in enumerate(candidates):
        norm = float(v.norm())
        if norm == 0.0 or not math.isfinite(norm):
            last = None
            continue
        if i == 0:
            first = norm
        if not k:
            torch.div(v, norm, out=out[0])
            k = 1
            last = (v.new_full((1,), norm), 0.0)
            continue
        # Both passes in the free row of ``out``: no model-sized temporaries.
        q, r = out[:k], out[k]
        c1 = q @ v
        torch.addmv(v, q.T, c1, alpha=-1, out=r)
        c2 = q @ r
        r.addmv_(q.T, c2, alpha=-1)
        rn = float(r.norm())
        if rn > drop_rtol * norm:
            r.div_(rn)
            k += 1
            last = (torch.cat([c1 + c2, c1.new_full((1,), rn)]), 0.0)
        else:
            last = (c1 + c2, rn / norm)
    return out[:k], first, last


def fit_alpha(
    tau: float,
    values: tuple[float, float],
    slopes: tuple[float, float],
    var_values: tuple[float, float],
    var_slopes: tuple[float, float],
) -> float | None:
    """Cockpit's α from a weighted least-squares parabola through two noisy points.

    ``q(x) = μ₀ + μ₁x + μ₂x²`` is fitted to the losses and directional slopes at
    0 and τ, weighted by the inverse per-sample variances (a zero variance becomes
    1e-12 of the largest one, all zero give equal weights). Returns
    ``α = −2τμ₂/μ₁ − 1``, −1 for a concave or linear fit (Cockpit's convention),
    None when an input is not finite (e.g. B = 1), the fit is singular or μ₁ = 0.
    """
    inputs = (tau, *values, *slopes, *var_values, *var_slopes)
    if not all(math.isfinite(x) for x in inputs):
        return None
    phi = torch.tensor(
        [[1.0, 0.0, 0.0], [1.0, tau, tau**2], [0.0, 1.0, 0.0], [0.0, 1.0, 2 * tau]],
        dtype=torch.float64,
    )
    y = torch.tensor([*values, *slopes], dtype=torch.float64)
    var = torch.tensor([*var_values, *var_slopes], dtype=torch.float64)
    top = float(var.max())
    var = torch.ones_like(var) if top <= 0 else var.clamp_min(1e-12 * top)
    w = 1.0 / var
    try:
        mu = torch.linalg.solve(phi.T @ (w[:, None] * phi), phi.T @ (w * y))
    except RuntimeError:  # singular normal equations
        return None
    mu1, mu2 = float(mu[1]), float(mu[2])
    if mu2 <= 0:
        return -1.0
    if mu1 == 0:
        return None
    return -2.0 * tau * mu2 / mu1 - 1.0
