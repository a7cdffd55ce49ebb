"""The engine's error type and ``.grad`` access, importable by every module."""

from __future__ import annotations

from torch import Tensor, nn


class EngineError(RuntimeError):
    """Per-sample statistics are not available for this model or step."""


def dense_grad(p: nn.Parameter | Tensor) -> Tensor | None:
    """``p.grad``, densified when sparse (``nn.Embedding(sparse=True)``)."""
    g = p.grad
    if g is not None and g.is_sparse:
        return g.to_dense()
    return g
