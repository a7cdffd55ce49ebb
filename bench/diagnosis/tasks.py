"""Synthetic classification tasks for the zoo: Gaussian classes, optional label noise.

Each class is a Gaussian around its own random mean (so a healthy batch of 32
sees a clear gradient signal); a chosen share of labels is replaced at random
(noise no model can learn).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bench.diagnosis.models import CLASSES, SHAPES


@dataclass
class Data:
    """Training and validation inputs and labels."""

    x: Tensor
    y: Tensor
    x_valid: Tensor
    y_valid: Tensor


def make_data(
    arch: str, n_train: int, seed: int, label_noise: float = 0.0, n_valid: int = 512
) -> Data:
    """Inputs of ``arch``'s shape (about unit variance) and their labels."""
    g = torch.Generator().manual_seed(1000 + seed)
    shape = SHAPES[arch]
    dim = 1
    for s in shape:
        dim *= s
    if arch == "transformer":
        # The same mean at every position: the class survives mean pooling.
        length, features = shape
        token = torch.randn(CLASSES, features, generator=g)
        token *= 2.0 / token.norm(dim=1, keepdim=True)
        means = token.repeat(1, length)
    else:
        means = torch.randn(CLASSES, dim, generator=g)
        means *= 4.0 / means.norm(dim=1, keepdim=True)  # classes ~5.7 std apart

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, CLASSES, (n,), generator=g)
        x = means[y] + torch.randn(n, dim, generator=g)
        flip = torch.rand(n, generator=g) < label_noise
        y = torch.where(flip, torch.randint(0, CLASSES, (n,), generator=g), y)
        return x.reshape(n, *shape), y

    x, y = draw(n_train)
    xv, yv = draw(n_valid)
    return Data(x, y, xv, yv)
