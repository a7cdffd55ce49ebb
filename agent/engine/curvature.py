"""Exact diagonal of the generalised Gauss-Newton matrix through the hook engine.

For a loss ``L = (1/B) Σ_n ℓ(z_n)`` of the model output ``z`` whose Hessian with
respect to ``z_n`` factorises as ``S_n S_nᵀ``, the GGN diagonal is
``Σ_c Σ_n (J_nᵀ s_{n,c})²`` times the reduction's scale: one backward pass from
``z`` per column ``c`` (``C`` passes for ``C`` classes), each reduced with the
engine's ``Σ_n ĝ_n²`` rule. For piecewise-linear networks (ReLU, max-pooling) the
GGN diagonal equals the Hessian diagonal (what BackPACK's ``DiagHessian`` gives).

The passes must run before the user's ``loss.backward()`` frees the graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from glasscockpit.agent.engine.hooks import EngineError, HookEngine
from glasscockpit.agent.engine.rules import CONV
from glasscockpit.agent.engine.stats import StepStats


def _loss_kind(loss: Tensor, output: Tensor) -> tuple[str, float]:
    """("ce" | "mse", reduction scale), after checking ``loss`` reads ``output``."""
    fn = loss.grad_fn
    name = type(fn).__name__
    reduction = getattr(fn, "_saved_reduction", None)
    if name == "NllLossBackward0" and fn is not None:
        soft = fn.next_functions[0][0]
        src = soft.next_functions[0][0] if soft is not None else None
        if type(soft).__name__ == "LogSoftmaxBackward0" and src is output.grad_fn:
            if getattr(fn, "_saved_weight", None) is not None:
                raise EngineError("class weights in cross_entropy are not supported")
            if output.dim() != 2:
                raise EngineError("cross_entropy curvature needs [B, C] outputs")
            scale = 1.0 / output.shape[0] if reduction == 1 else 1.0
            return "ce", scale
    if (
        name == "MseLossBackward0"
        and fn is not None
        and fn.next_functions[0][0] is output.grad_fn
    ):
        return "mse", 2.0 / output.numel() if reduction == 1 else 2.0
    raise EngineError(
        "Curvature needs loss = cross_entropy(model(x), y) or mse_loss(model(x), y) "
        f"computed directly from the model's output (got {name})"
    )


def _factors(kind: str, output: Tensor) -> list[Tensor]:
    """Columns ``s_c`` with ``Σ_c s_c s_cᵀ`` = per-sample loss Hessian (unscaled)."""
    z = output.detach()
    if kind == "ce":
        p = torch.softmax(z, dim=1)  # [B, C]
        eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        return [p[:, c : c + 1].sqrt() * (eye[c] - p) for c in range(z.shape[1])]
    flat = z.reshape(z.shape[0], -1)
    cols = []
    for k in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, k] = 1.0
        cols.append(e.reshape(z.shape))
    return cols


def diag_ggn(engine: HookEngine, loss: Tensor) -> dict[str, Tensor]:
    """Exact GGN diagonal of ``loss`` per tracked parameter name (parameter shapes)."""
    output = engine.output
    if output is None or not engine.recorded:
        raise EngineError("The forward pass of this step was not recorded")
    kind, scale = _loss_kind(loss, output)
    engine.reassign_unbatched()
    samples = {
        c.x.shape[0] for layer in engine.layers if layer.names for c in layer.calls
    }
    if samples and output.shape[0] not in samples:
        # E.g. token logits flattened to [B·T, V] inside forward: the passes
        # below would square per-sequence sums over tokens (cross terms).
        raise EngineError(
            f"The model's output has {output.shape[0]} rows but the batch has "
            f"{sorted(samples)[0]} samples: the exact GGN diagonal needs one output "
            "row per sample (token-level losses are not supported)"
        )
    params = [
        layer.module.get_parameter(k) for layer in engine.layers for k in layer.names
    ]
    recorded = [c for layer in engine.layers for c in layer.calls]
    outs = [
        c.out for c in recorded if c.out is not None and c.out._version == c.version
    ]
    out: dict[str, Tensor] = {}
    # Layers whose Σ_n ĝ_n² is linear in b² (2-D Linear) accumulate Σ_c b_c² and
    # reduce once after all passes instead of once per pass.
    b_sq: dict[int, tuple[Tensor, Tensor]] = {}
    with CONV.caching():
        for s in _factors(kind, output):
            engine.clear_grads()
            if len(outs) == len(recorded):
                # Gradients w.r.t. the layer outputs are the b's; autograd then skips
                # every weight gradient, about half of a backward pass.
                bs = torch.autograd.grad(
                    output, outs, grad_outputs=s, retain_graph=True, allow_unused=True
                )
                for c, b in zip(recorded, bs, strict=True):
                    c.b = None if b is None else b.detach()
            else:  # an output was modified in place: let the tensor hooks collect b
                torch.autograd.grad(
                    output, params, grad_outputs=s, retain_graph=True, allow_unused=True
                )
            for i, layer in enumerate(engine.layers):
                calls = [c for c in layer.calls if c.b is not None and layer.names]
                c0 = calls[0] if len(calls) == 1 else None
                if c0 is not None and c0.b is not None:
                    rule = layer.rule.bind(c0)
                    if rule.linear_in_b_squared(c0.x):
                        sq = c0.b.square()
                        b_sq[i] = (c0.x, b_sq[i][1] + sq if i in b_sq else sq)
                        continue
                    sgs = rule.sum_grad_squared(layer.module, c0.x, c0.b)
                else:  # a module called twice: sum per-sample gradients first
                    grads = StepStats.layer_grads(layer, calls)
                    sgs = {k: g.square().sum(0) for k, g in grads.items()}
                for k, v in sgs.items():
                    if k not in layer.names:  # served by another layer
                        continue
                    name = layer.names[k]
                    out[name] = out[name] + v if name in out else v
    for i, (x, sq) in b_sq.items():
        layer = engine.layers[i]
        sgs = layer.rule.sum_grad_squared_from_b_squared(layer.module, x, sq)
        for k, v in sgs.items():
            if k not in layer.names:  # served by another layer
                continue
            name = layer.names[k]
            out[name] = out[name] + v if name in out else v
    engine.clear_grads()
    return {k: v * scale for k, v in out.items()}
