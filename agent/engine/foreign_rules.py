"""Exact rules for other libraries' layers, matched without importing them.

``RULES`` maps exact types, and the agent must not import transformers or timm.
The matchers here (``rules.MATCHERS``) find a module's class among the classes
of libraries already imported (``sys.modules``: a module of that class exists,
so its library is loaded) and only for exact classes whose forward is known:

* Hugging Face's ``Conv1D`` (GPT-2, GPT, ...): ``y = x @ W + b`` with the weight
  stored ``[in, out]``, a linear layer whose per-sample gradients are the
  transposes of ``LinearRule``'s (``TransposedLinearRule``).
* ``nn.LayerNorm`` subclasses that keep its forward, and timm's ``LayerNorm``,
  whose forward is ``F.layer_norm`` with the module's own arguments (its
  "fast norm" path computes the same in autocast's dtype): ``LayerNormRule``.
  timm's ``LayerNorm2d`` (channels first) overrides forward and is not matched.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

from glasscockpit.agent.engine.norm_rules import LAYER_NORM
from glasscockpit.agent.engine.rules import MATCHERS, LayerRule, LinearRule, _has
from glasscockpit.agent.engine.scratch import SCRATCH

#: Where transformers defines ``Conv1D`` (``modeling_utils`` before 4.x moved it).
CONV1D_HOMES = ("transformers.pytorch_utils", "transformers.modeling_utils")
#: ``nn.LayerNorm`` subclasses overriding forward with the same math.
LAYER_NORM_HOMES = (("timm.layers.norm", "LayerNorm"),)


def _classes(homes: tuple[tuple[str, str], ...]) -> list[type]:
    """The classes ``(module, name)`` of libraries already imported."""
    out = []
    for home, name in homes:
        cls = getattr(sys.modules.get(home), name, None)
        if isinstance(cls, type):
            out.append(cls)
    return out


class TransposedLinearRule(LinearRule):
    """Hugging Face's ``Conv1D``: ``LinearRule`` with the weight ``[in, out]``."""

    label = "conv1d-rule (transposed linear)"

    def batch_grads(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Weight ``[B, in, out]`` = Σ_t a_t b_tᵀ, bias ``[B, out]`` = Σ_t b_t."""
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])
        b3 = b.reshape(b.shape[0], -1, b.shape[-1])
        out: dict[str, Tensor] = {}
        if _has(module, "weight"):
            shape = (x3.shape[0], x3.shape[2], b3.shape[2])  # [B, in, out]
            if b3.dtype == x3.dtype:
                out["weight"] = torch.bmm(
                    x3.transpose(1, 2), b3, out=SCRATCH.empty(shape, b3)
                )
            else:  # let matmul report the mismatch
                out["weight"] = x3.transpose(1, 2) @ b3
        if _has(module, "bias"):
            out["bias"] = b3.sum(1)
        return out

    def grad_sum(self, module: nn.Module, x: Tensor, b: Tensor) -> dict[str, Tensor]:
        """``aᵀb`` over all samples and positions, like autograd."""
        return _transposed(super().grad_sum(module, x, b))

    def batch_dot(
        self, module: nn.Module, x: Tensor, b: Tensor, grads: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """``a_nᵀ G b_n`` for 2-D inputs (``LinearRule``'s with ``Gᵀ``)."""
        if x.dim() != 2:
            return LayerRule.batch_dot(self, module, x, b, grads)
        return super().batch_dot(module, x, b, _transposed(grads))

    def sum_grad_squared_from_b_squared(
        self, module: nn.Module, x: Tensor, b_sq: Tensor
    ) -> dict[str, Tensor]:
        """``(a²)ᵀ(b²)`` and ``Σ_n b²``."""
        return _transposed(super().sum_grad_squared_from_b_squared(module, x, b_sq))


def _transposed(grads: dict[str, Tensor]) -> dict[str, Tensor]:
    """The weight entry transposed (``[out, in]`` <-> ``[in, out]``)."""
    return {k: g.t().contiguous() if k == "weight" else g for k, g in grads.items()}


CONV1D = TransposedLinearRule()


def match_conv1d(module: nn.Module) -> LayerRule | None:
    """``CONV1D`` for an exact Hugging Face ``Conv1D`` with a ``[nx, nf]`` weight."""
    if type(module).__name__ != "Conv1D":
        return None
    if type(module) not in _classes(tuple((h, "Conv1D") for h in CONV1D_HOMES)):
        return None
    weight, nf = getattr(module, "weight", None), getattr(module, "nf", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] != nf:
        return None
    return CONV1D


def match_layer_norm(module: nn.Module) -> LayerRule | None:
    """``LAYER_NORM`` for ``nn.LayerNorm`` subclasses computing a layer norm."""
    if not isinstance(module, nn.LayerNorm):
        return None
    cls = type(module)
    if cls.forward is nn.LayerNorm.forward or cls in _classes(LAYER_NORM_HOMES):
        return LAYER_NORM
    return None


MATCHERS.extend([match_conv1d, match_layer_norm])
