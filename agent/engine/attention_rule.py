"""Exact per-sample rule for ``nn.MultiheadAttention`` without ``vmap``.

Attention's parameters enter through two linear maps: the packed input
projection (``q = x_q W_qᵀ + b_q``, the same for k and v) and ``out_proj``
applied to the merged heads ``a``. Per-sample gradients of a linear map need
its input and the gradient at its output, so the rule re-runs the attention of
the recorded call once, batched, from projections made leaves, and
backpropagates the recorded output gradient ``b`` to them:

* ``out_proj``: input ``a``, output gradient ``b`` → ``Σ_t b_t a_tᵀ``, ``Σ_t b_t``;
* ``in_proj``: inputs ``x_q, x_k, x_v``, gradients ``∂q, ∂k, ∂v`` → row blocks
  ``Σ_t ∂q_t x_q,tᵀ`` etc.

The re-run costs one attention forward and backward of the batch (no per-sample
loop). Configurations it does not reproduce exactly (separate q/k/v weights,
``bias_k``/``bias_v``, ``add_zero_attn``, dropout, sequence-first layout) are
refused and served by the ``torch.func`` fallback (``func_rule.AttentionRule``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from glasscockpit.agent.engine.rules import RULES, LayerRule

_ARGS = ("query", "key", "value")


class AttentionRule(LayerRule):
    """``nn.MultiheadAttention`` with packed projections and ``batch_first=True``."""

    label = "attention-rule"
    needs_args = True
    claims_subtree = True
    batched_kwargs: ClassVar[frozenset[str]] = frozenset({"key_padding_mask"})

    def accepts(self, module: nn.Module) -> bool:
        """Only configurations whose re-run is exact."""
        return (
            isinstance(module, nn.MultiheadAttention)
            and module.batch_first
            and module._qkv_same_embed_dim
            and module.bias_k is None
            and module.bias_v is None
            and not module.add_zero_attn
            and module.dropout == 0.0
        )

    def bind(self, call: Any) -> LayerRule:
        """The rule for one call (re-runs its attention once, lazily)."""
        return _BoundAttention(call)

    def batch_grads(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Unbound use is a bug: the engine always binds rules that need args."""
        del module, x, b
        raise RuntimeError("AttentionRule must be bound to a recorded call")


class _BoundAttention(LayerRule):
    def __init__(self, call: Any) -> None:
        self.call = call

    def _inputs(self) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
        args, kwargs = list(self.call.args), dict(self.call.kwargs)
        for i, name in enumerate(_ARGS):
            if len(args) <= i:
                args.append(kwargs.pop(name))
        extra = dict(
            zip(
                ("key_padding_mask", "need_weights", "attn_mask"),
                args[3:],
                strict=False,
            )
        )
        return args[0], args[1], args[2], {**kwargs, **extra}

    def _rerun(self, module: nn.MultiheadAttention, b: Tensor) -> list[Tensor]:
        """``[x_q, x_k, x_v, ∂q, ∂k, ∂v, a]`` of this call (cached on the call)."""
        cache: dict[str, Any] = self.call.cache
        if "attention" in cache and cache["attention"][0] is b:
            return list(cache["attention"][1])
        xq, xk, xv, kw = self._inputs()
        n, t, e = xq.shape
        s, h = xk.shape[1], module.num_heads
        w, bias = module.in_proj_weight.detach(), module.in_proj_bias
        bq, bk, bv = (None, None, None) if bias is None else bias.detach().chunk(3)
        wq, wk, wv = w.chunk(3)
        q = F.linear(xq, wq, bq).requires_grad_()
        k = F.linear(xk, wk, bk).requires_grad_()
        v = F.linear(xv, wv, bv).requires_grad_()
        mask = _merged_mask(kw, n, h, t, s, q.dtype, q.device)
        with torch.enable_grad():
            o = F.scaled_dot_product_attention(
                q.view(n, t, h, -1).transpose(1, 2),
                k.view(n, s, h, -1).transpose(1, 2),
                v.view(n, s, h, -1).transpose(1, 2),
                attn_mask=mask,
            )
            a = o.transpose(1, 2).reshape(n, t, e)
            da = b @ module.out_proj.weight.detach().to(b.dtype)
            dq, dk, dv = torch.autograd.grad(a, (q, k, v), da)
        out = [xq, xk, xv, dq, dk, dv, a.detach()]
        cache["attention"] = (b, out)
        return out

    def batch_grads(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Per-sample gradients of all four tensors (dotted names for out_proj)."""
        del x
        assert isinstance(module, nn.MultiheadAttention)
        xq, xk, xv, dq, dk, dv, a = self._rerun(module, b)
        out: dict[str, Tensor] = {
            "in_proj_weight": torch.cat(
                [
                    dq.transpose(1, 2) @ xq,
                    dk.transpose(1, 2) @ xk,
                    dv.transpose(1, 2) @ xv,
                ],
                1,
            ),
            "out_proj.weight": b.transpose(1, 2) @ a,
        }
        if module.in_proj_bias is not None:
            out["in_proj_bias"] = torch.cat([dq.sum(1), dk.sum(1), dv.sum(1)], 1)
        if module.out_proj.bias is not None:
            out["out_proj.bias"] = b.sum(1)
        return out


def _merged_mask(
    kw: dict[str, Any],
    n: int,
    h: int,
    t: int,
    s: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor | None:
    """``attn_mask``, ``key_padding_mask`` and ``is_causal`` as one additive mask."""
    mask: Tensor | None = None
    attn, pad = kw.get("attn_mask"), kw.get("key_padding_mask")
    if attn is None and kw.get("is_causal"):
        attn = torch.ones(t, s, dtype=torch.bool, device=device).triu(1)
    if attn is not None:
        mask = _additive(attn, dtype)
        if mask.dim() == 3:  # [N·H, T, S]
            mask = mask.view(n, h, t, s)
    if pad is not None:
        p = _additive(pad, dtype).view(n, 1, 1, s)
        mask = p if mask is None else mask + p
    return mask


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            mask, float("-inf")
        )
    return mask.to(dtype)


ATTENTION = AttentionRule()
RULES[nn.MultiheadAttention] = ATTENTION
