"""Per-sample statistics of convolutions without their per-sample gradients.

A convolution's per-sample weight gradient is ``ĝ_n = Σ_l b_{n,l} a_{n,l}ᵀ`` over
its ``L`` output positions (``a``: the unfolded input window, ``in·k`` values;
``b``: the output gradient, ``out`` values). Building it costs ``L·in·k·out``
per sample, as much as the layer's weight gradient again, and ``in·k·out``
values of memory per sample (300 MB for ResNet-18's last layer at batch 32).

* ``‖ĝ_n‖² = ⟨A_nᵀA_n, B_nᵀB_n⟩`` (the "ghost norm", Li et al. 2021): two
  ``L×L`` Gram matrices, ``L²·(in·k + out)`` per sample. Cheaper wherever
  ``L·(in·k + out) < in·k·out``: the deep layers of image networks, whose
  spatial size has shrunk while their channels grew.
* ``ĝ_n · G = Σ_l b_{n,l}ᵀ G a_{n,l}``: ``G a_{n,l}`` is the same convolution
  with the weight ``G``, so one forward convolution of the recorded input per
  direction (all directions at once, stacked as output channels) and a
  product with ``b``: exact at the cost of a forward pass of the layer, for
  any shape.

Both are exact (float rounding of a different summation order only).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - torch convention


def ghost_is_cheaper(module: nn.Conv1d | nn.Conv2d, b: Tensor) -> bool:
    """Whether the Gram matrices cost less than the per-sample gradients."""
    positions = b[0, 0].numel()
    ink = module.weight[0].numel()  # in/groups · kernel
    out = module.out_channels
    return module.groups == 1 and positions * (ink + out) < ink * out


def ghost_l2(cols: Tensor, b: Tensor) -> Tensor:
    """``‖ĝ_n‖²`` [B] from unfolded inputs ``[B, in·k, L]`` and ``b`` [B, out, L]."""
    a_gram = cols.transpose(1, 2) @ cols  # [B, L, L]
    b_gram = b.transpose(1, 2) @ b
    return (a_gram * b_gram).flatten(1).sum(1)


def conv_dots(
    module: nn.Conv1d | nn.Conv2d, x: Tensor, b: Tensor, weights: list[Tensor]
) -> Tensor:
    """``ĝ_n · G_k`` for each weight-shaped direction ``G_k``: ``[K, B]``.

    The convolution of ``x`` with the directions stacked along the output
    channels, multiplied by ``b`` and summed per sample and direction.
    """
    pad = module.padding
    assert not isinstance(pad, str)  # ConvRule.accepts refused strings
    stacked = torch.cat([w.to(x.dtype) for w in weights])  # [K·out, in/g, *k]
    conv = F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d
    if module.groups > 1 and len(weights) > 1:
        # Grouped output channels are group-major: one convolution per direction.
        outs = [
            conv(
                x,
                w.to(x.dtype),
                None,
                module.stride,
                pad,
                module.dilation,
                module.groups,
            )
            for w in weights
        ]
        y = torch.stack(outs, 1)  # [B, K, out, ...]
    else:
        y = conv(x, stacked, None, module.stride, pad, module.dilation, module.groups)
        y = y.reshape(x.shape[0], len(weights), *b.shape[1:])
    return (y * b.unsqueeze(1)).flatten(2).sum(2).T
