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
loop). Usually it is not needed: on recorded calls of self-attention
(``query is key is value``, the encoder's case) ``on_forward`` finds the two
linear maps in the autograd graph of the call, keeps ``a`` (saved there for the
backward pass anyway) and hooks the in-projection's node, so that the user's own
backward pass delivers ``[∂q ∂k ∂v]``. Anything it does not recognise, and any
output gradient other than the one that pass recorded, uses the re-run.

Configurations the re-run does not reproduce exactly (separate q/k/v weights,
``bias_k``/``bias_v``, ``add_zero_attn``, sequence-first layout) are refused
and served by the ``torch.func`` fallback (``func_rule.AttentionRule``).
Attention dropout (``nn.TransformerEncoderLayer``'s default 0.1, in train mode)
is accepted: no re-run can reproduce its random mask, but the captured
``[∂q ∂k ∂v]`` already went through it. Such a call is served from captures
only (the curvature passes then backpropagate to the parameters so that the
hook captures each pass's gradients, ``needs_capture``); a call without a
capture raises ``EngineError`` instead of re-running with another mask.
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from glasscockpit.agent.engine.errors import EngineError
from glasscockpit.agent.engine.rules import RULES, LayerRule
from glasscockpit.agent.engine.scratch import SCRATCH

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
        )

    @staticmethod
    def needs_capture(module: nn.Module) -> bool:
        """Whether only captured gradients are exact (dropout active)."""
        return (
            isinstance(module, nn.MultiheadAttention)
            and module.training
            and module.dropout > 0.0
        )

    def bind(self, call: Any) -> LayerRule:
        """The rule for one call (re-runs its attention once, lazily)."""
        return _BoundAttention(call)

    def captures(self, module: nn.Module) -> bool:
        """With dropout active only captured gradients are exact."""
        return self.needs_capture(module)

    def unscale(self, call: Any, old_b: Tensor, factor: Tensor | float) -> None:
        """Captured projection gradients (keyed by their ``b``) carry the scale."""
        hit = call.cache.get("qkv_grad")
        if hit is not None and hit[0] is old_b:
            call.cache["qkv_grad"] = (call.b, hit[1] / factor)

    def on_forward(
        self, call: Any, module: nn.Module, inputs: tuple[Any, ...], out: Tensor
    ) -> None:
        """Capture ``a`` and hook ``[∂q ∂k ∂v]`` of a self-attention call.

        The packed in-projection of ``query`` (a leading-batch tensor, seen
        sequence-first by the projection) and ``out_proj`` are the graph's two
        matrix products with those weights; their row order is checked against
        ``query`` and the output's view, else nothing is captured (re-run).
        """
        assert isinstance(module, nn.MultiheadAttention)
        x = call.x
        if x.dim() != 3:
            return
        query, key, value = inputs[:3] if len(inputs) >= 3 else (None, 1, 2)
        if not (isinstance(query, Tensor) and key is query and value is query):
            return
        if out.shape != x.shape:
            return
        n, t, e = x.shape
        a = _out_proj_input(out, module, n, t, e)
        node = _find_product(out.grad_fn, module.in_proj_weight, query.grad_fn)
        if a is None or node is None:
            return
        rows = _saved_input(node)
        # Compared as views: with a copy of the input here, the backward pass
        # that follows measured ~1 ms slower on the benchmark transformer.
        if rows is None or rows.shape != (t * n, e):
            return
        if not torch.equal(rows.reshape(t, n, e), x.transpose(0, 1)):
            return
        call.cache["projections"] = a.detach().view(t, n, e).transpose(0, 1)
        node.register_prehook(partial(_store_qkv_grad, call))


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

    def _captured(self, b: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(∂[q k v] [B, T, 3E], a)`` from the user's backward pass, if for ``b``."""
        call = self.call
        if b is not call.b:
            return None
        root = call.parent if call.parent is not None else call
        hit = root.cache.get("qkv_grad")
        if hit is None or hit[0] is not root.b:
            return None
        rows = call.rows if call.parent is not None else slice(None)
        return hit[1][rows], root.cache["projections"][rows]

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
        assert isinstance(module, nn.MultiheadAttention)
        captured = self._captured(b)
        if captured is not None:
            dqkv, a = captured
            out = {
                "in_proj_weight": _bmm_t(dqkv, x),
                "out_proj.weight": _bmm_t(b, a),
            }
            if module.in_proj_bias is not None:
                out["in_proj_bias"] = dqkv.sum(1)
            if module.out_proj.bias is not None:
                out["out_proj.bias"] = b.sum(1)
            return out
        if AttentionRule.needs_capture(module):
            raise EngineError(
                "attention dropout is active and the gradients of this call's "
                "projections were not captured in the backward pass (a re-run "
                "cannot reproduce the random mask)"
            )
        xq, xk, xv, dq, dk, dv, a = self._rerun(module, b)
        out = {
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


def _bmm_t(b: Tensor, x: Tensor) -> Tensor:
    """``bᵀx`` per sample, ``[B, out, in]``, into a pooled buffer when possible."""
    if b.dtype != x.dtype or b.dim() != 3 or x.dim() != 3:
        return b.transpose(1, 2) @ x
    out = SCRATCH.empty((b.shape[0], b.shape[2], x.shape[2]), b)
    return torch.bmm(b.transpose(1, 2), x, out=out)


def _store_qkv_grad(call: Any, grads: tuple[Tensor | None, ...]) -> None:
    """Node pre-hook: ``[∂q ∂k ∂v]`` rows ``(t, n)``, kept for the call's ``b``."""
    g = grads[0]
    if g is None or g.dtype != call.x.dtype or call.b is None:
        call.cache.pop("qkv_grad", None)
        return
    n, t, _ = call.x.shape
    call.cache["qkv_grad"] = (call.b, g.detach().view(t, n, -1).transpose(0, 1))


#: Matrix products of ``F.linear`` and the name of their saved input.
_PRODUCTS = {"AddmmBackward0": "_saved_mat1", "MmBackward0": "_saved_self"}
#: Nodes between a product and its weight's ``AccumulateGrad``.
_WEIGHT_PATH = frozenset({"TBackward0"})


def _saved_input(node: Any) -> Tensor | None:
    rows = getattr(node, _PRODUCTS[type(node).__name__], None)
    return rows if isinstance(rows, Tensor) else None


def _uses_weight(node: Any, weight: Tensor) -> bool:
    """Whether ``node`` is a linear map's product whose right factor is ``weightᵀ``."""
    if type(node).__name__ not in _PRODUCTS:
        return False
    for f, _ in node.next_functions:
        if f is not None and type(f).__name__ in _WEIGHT_PATH:
            acc = f.next_functions[0][0]
            if getattr(acc, "variable", None) is weight:
                return True
    return False


def _find_product(root: Any, weight: Tensor, stop: Any, limit: int = 64) -> Any:
    """The first node (breadth first from ``root``) multiplying by ``weightᵀ``.

    Does not search past ``stop`` (the input's own history) nor ``limit`` nodes.
    """
    queue, seen = deque([root]), {id(stop)}
    while queue and len(seen) < limit:
        node = queue.popleft()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if _uses_weight(node, weight):
            return node
        queue.extend(f for f, _ in node.next_functions)
    return None


def _out_proj_input(
    out: Tensor, module: nn.MultiheadAttention, n: int, t: int, e: int
) -> Tensor | None:
    """``a`` rows ``(t, n)``: ``out = view(a Wᵀ + b, [T, N, E]).transpose(0, 1)``."""
    tr: Any = out.grad_fn  # generated node classes: ``_saved_*`` attributes
    if type(tr).__name__ != "TransposeBackward0":
        return None
    if {tr._saved_dim0, tr._saved_dim1} != {0, 1}:
        return None
    view: Any = tr.next_functions[0][0]
    if type(view).__name__ != "ViewBackward0":
        return None
    if tuple(view._saved_self_sym_sizes) != (t * n, e):
        return None
    node = view.next_functions[0][0]
    if not _uses_weight(node, module.out_proj.weight):
        return None
    a = _saved_input(node)
    return a if a is not None and a.shape == (t * n, e) else None


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
