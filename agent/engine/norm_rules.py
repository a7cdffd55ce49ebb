"""Exact per-layer rules for normalisation layers and embeddings.

Each rule sees one call of one module (input ``x``, output gradient ``b``), like
the rules in ``rules.py``, and registers itself in ``RULES`` on import:

* ``nn.LayerNorm`` / ``nn.GroupNorm`` (affine): the per-sample gradient of the
  scale is ``Σ b ⊙ x̂`` and of the shift ``Σ b`` over every non-sample, non-parameter
  axis, with ``x̂`` the normalised input recomputed from ``x`` (normalisation is
  per sample, so no sample coupling).
* ``nn.BatchNorm1d/2d/3d`` in **eval mode** with running statistics: the same with
  ``x̂ = (x − running_mean)/sqrt(running_var + eps)``. In train mode the batch
  statistics couple the samples and per-sample gradients are undefined for every
  parameter upstream of it; ``HookEngine.check_model`` refuses such steps.
* ``nn.Embedding`` on index tensors of any shape (sequences included, repeated
  tokens included): segment sums of ``b`` over unique (sample, token) pairs, so the
  norms, inner products and ``Σ_n g_n²`` cost ``O(N·T·E)`` and never build
  ``N × V × E``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from glasscockpit.agent.engine.rules import RULES, LayerRule, _has


def _affine_grads(
    module: nn.Module, xhat: Tensor, b: Tensor, keep: int
) -> dict[str, Tensor]:
    """Sum ``b ⊙ x̂`` and ``b`` over all axes except the sample axis and ``keep``.

    ``keep`` is the number of trailing parameter axes (LayerNorm) or -1 for the
    channel axis 1 (GroupNorm, BatchNorm).
    """
    red = tuple(range(1, b.dim() - keep)) if keep >= 0 else tuple(range(2, b.dim()))
    out: dict[str, Tensor] = {}
    if _has(module, "weight"):
        wb = b * xhat
        out["weight"] = wb.sum(red) if red else wb
    if _has(module, "bias"):
        out["bias"] = b.sum(red) if red else b
    return out


class LayerNormRule(LayerRule):
    """``nn.LayerNorm`` with an elementwise affine transform."""

    label = "layernorm-rule"

    def batch_grads(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Weight and bias ``[B, *normalized_shape]``."""
        assert isinstance(module, nn.LayerNorm)
        shape = tuple(module.normalized_shape)
        xhat = F.layer_norm(x, shape, eps=module.eps)
        return _affine_grads(module, xhat, b, len(shape))


class GroupNormRule(LayerRule):
    """``nn.GroupNorm`` with an affine transform (channels on axis 1)."""

    label = "groupnorm-rule"

    def batch_grads(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Weight and bias ``[B, C]``."""
        assert isinstance(module, nn.GroupNorm)
        xhat = F.group_norm(x, module.num_groups, eps=module.eps)
        return _affine_grads(module, xhat, b, -1)


class BatchNormEvalRule(LayerRule):
    """``nn.BatchNorm*d`` normalising with running statistics (eval mode)."""

    label = "batchnorm-rule (eval mode; train mode: undefined)"

    def accepts(self, module: nn.Module) -> bool:
        """Only with running statistics: without them eval mode uses the batch's."""
        return (
            isinstance(module, nn.modules.batchnorm._BatchNorm)
            and module.track_running_stats
        )

    def batch_grads(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Weight and bias ``[B, C]``."""
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        mean, var = module.running_mean, module.running_var
        assert mean is not None and var is not None
        view = (1, -1) + (1,) * (x.dim() - 2)
        xhat = (x - mean.view(view)) * torch.rsqrt(var.view(view) + module.eps)
        return _affine_grads(module, xhat, b, -1)


class EmbeddingRule(LayerRule):
    """``nn.Embedding`` on ``[B, ...]`` indices (sequences, repeated tokens)."""

    label = "embedding-rule"

    def materialises(self, x: Tensor) -> bool:
        """Segment sums: nothing of size ``B·V·E`` for the statistics."""
        del x
        return False

    def accepts(self, module: nn.Module) -> bool:
        """Dense gradients, no renormalisation, no batch-frequency scaling."""
        return (
            isinstance(module, nn.Embedding)
            and module.max_norm is None
            and not module.sparse
            # scale_grad_by_freq divides by the token's count in the whole
            # batch: that couples the samples.
            and not module.scale_grad_by_freq
        )

    @staticmethod
    def _rows(module: nn.Module, x: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Token ids ``[B, T]`` and output gradients ``[B, T, E]``, padding zeroed."""
        assert isinstance(module, nn.Embedding)
        n = x.shape[0]
        ids = x.reshape(n, -1)
        bb = b.reshape(n, -1, b.shape[-1])
        if module.padding_idx is not None:
            bb = bb * (ids != module.padding_idx).unsqueeze(-1).to(bb.dtype)
        return ids, bb

    def bind(self, call: Any) -> LayerRule:
        """This rule for one call: its segments are found once, not per statistic."""
        return _BoundEmbedding(call)

    def _segments(
        self, module: nn.Module, x: Tensor, b: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per (sample, token) pair: summed gradient rows, sample index, token id."""
        assert isinstance(module, nn.Embedding)
        ids, bb = self._rows(module, x, b)
        n, v = ids.shape[0], module.num_embeddings
        key = (torch.arange(n, device=ids.device).unsqueeze(1) * v + ids).reshape(-1)
        uniq, inv = torch.unique(key, return_inverse=True)
        rows = bb.new_zeros(uniq.numel(), bb.shape[-1])
        rows.index_add_(0, inv, bb.reshape(-1, bb.shape[-1]))
        return rows, uniq // v, uniq % v

    def batch_grads(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Weight ``[B, V, E]`` (only for histograms: it is ``B·V·E`` large)."""
        if not _has(module, "weight"):
            return {}
        assert isinstance(module, nn.Embedding)
        ids, bb = self._rows(module, x, b)
        n, v = ids.shape[0], module.num_embeddings
        key = (torch.arange(n, device=ids.device).unsqueeze(1) * v + ids).reshape(-1)
        out = bb.new_zeros(n * v, bb.shape[-1])
        out.index_add_(0, key, bb.reshape(-1, bb.shape[-1]))
        return {"weight": out.reshape(n, v, -1)}

    def grad_sum(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Scatter-add of all output gradient rows, like autograd."""
        if not _has(module, "weight"):
            return {}
        assert isinstance(module, nn.Embedding)
        ids, bb = self._rows(module, x, b)
        out = bb.new_zeros(module.num_embeddings, bb.shape[-1])
        out.index_add_(0, ids.reshape(-1), bb.reshape(-1, bb.shape[-1]))
        return {"weight": out}

    def batch_l2(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """``Σ_tokens ‖segment sum‖²`` per sample."""
        if not _has(module, "weight"):
            return {}
        rows, sample, _ = self._segments(module, x, b)
        out = rows.new_zeros(x.shape[0])
        return {"weight": out.index_add_(0, sample, rows.square().sum(1))}

    def batch_dot(
        self, module: nn.Module, x: Tensor, b: Tensor, grads: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """``Σ_tokens segment sum · G[token]`` per sample."""
        if not _has(module, "weight") or "weight" not in grads:
            return {}
        rows, sample, token = self._segments(module, x, b)
        g = grads["weight"].to(rows.dtype)[token]
        out = rows.new_zeros(x.shape[0])
        return {"weight": out.index_add_(0, sample, (rows * g).sum(1))}

    def sum_grad_squared(
        self, module: nn.Module, x: Tensor, b: Tensor
    ) -> dict[str, Tensor]:
        """Squared segment sums scattered onto their token rows."""
        if not _has(module, "weight"):
            return {}
        assert isinstance(module, nn.Embedding)
        rows, _, token = self._segments(module, x, b)
        out = rows.new_zeros(module.num_embeddings, rows.shape[1])
        return {"weight": out.index_add_(0, token, rows.square())}


class _BoundEmbedding(EmbeddingRule):
    """``EmbeddingRule`` keeping one call's segments in ``call.cache``.

    Norms, inner products along each direction (α asks for several) and
    ``Σ_n g_n²`` all start from the same ``unique`` and scatter-add.
    """

    def __init__(self, call: Any) -> None:
        self.call = call

    def bind(self, call: Any) -> LayerRule:
        return _BoundEmbedding(call)

    def _segments(
        self, module: nn.Module, x: Tensor, b: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        hit = self.call.cache.get("segments")
        if hit is not None and hit[0] is x and hit[1] is b:
            return hit[2]  # type: ignore[no-any-return]
        out = super()._segments(module, x, b)
        self.call.cache["segments"] = (x, b, out)
        return out


LAYER_NORM = LayerNormRule()
GROUP_NORM = GroupNormRule()
BATCH_NORM = BatchNormEvalRule()
EMBEDDING = EmbeddingRule()

RULES.update(
    {
        nn.LayerNorm: LAYER_NORM,
        nn.GroupNorm: GROUP_NORM,
        nn.BatchNorm1d: BATCH_NORM,
        nn.BatchNorm2d: BATCH_NORM,
        nn.BatchNorm3d: BATCH_NORM,
        nn.Embedding: EMBEDDING,
    }
)
