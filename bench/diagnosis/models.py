"""Tiny MLP, CNN and transformer for the diagnosis zoo, with the zoo's breakages.

Every model is built from a ``Spec``: the healthy architecture, or one broken in
a single known way (dead ReLUs, a deep sigmoid stack, a deep unnormalised stack
with large init). Inputs are synthetic (``tasks.py``), so nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: Input shape per architecture (without the batch dimension).
SHAPES = {"mlp": (16,), "cnn": (1, 8, 8), "transformer": (6, 8)}
CLASSES = 4


@dataclass(frozen=True)
class Spec:
    """Which architecture and which structural breakage (``""``: healthy)."""

    arch: str
    breakage: str = ""  # "", "dead_relu", "sigmoid_deep", "large_init_deep"
    width: int = 32


def _stack(width: int, depth: int, act: type[nn.Module]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), act()]
    return layers


def _deep_tail(spec: Spec, width: int) -> list[nn.Module]:
    """The extra deep stack of the vanishing/exploding breakages."""
    if spec.breakage == "sigmoid_deep":
        return _stack(width, 10, nn.Sigmoid)
    if spec.breakage == "large_init_deep":
        return _stack(width, 10, nn.ReLU)
    return []


class SeqModel(nn.Module):
    """Linear input projection, one transformer encoder layer, mean pool, head."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        length, features = SHAPES["transformer"]
        d = spec.width
        self.proj = nn.Linear(features, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.1)
        self.encoder = nn.TransformerEncoderLayer(
            d,
            nhead=2,
            dim_feedforward=2 * d,
            dropout=0.0,
            batch_first=True,
            norm_first=True,  # pre-LN, as GPT-style models
        )
        self.tail = nn.Sequential(*_deep_tail(spec, d))
        self.head = nn.Linear(d, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = self.encoder(self.proj(x) + self.pos)
        return self.head(self.tail(h.mean(dim=1)))


def build(spec: Spec) -> nn.Module:
    """The model of ``spec``, freshly initialised from torch's global RNG."""
    w = spec.width
    model: nn.Module
    if spec.arch == "mlp":
        layers: list[nn.Module] = [nn.Linear(SHAPES["mlp"][0], w), nn.ReLU()]
        layers += [nn.Linear(w, w), nn.ReLU()]
        layers += _deep_tail(spec, w)
        model = nn.Sequential(*layers, nn.Linear(w, CLASSES))
    elif spec.arch == "cnn":
        convs: list[nn.Module] = [nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()]
        convs += [nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        model = nn.Sequential(
            *convs,
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, w),
            nn.ReLU(),
            *_deep_tail(spec, w),
            nn.Linear(w, CLASSES),
        )
    elif spec.arch == "transformer":
        model = SeqModel(spec)
    else:
        raise ValueError(f"Unknown architecture {spec.arch!r}")
    _break(model, spec.breakage)
    return model


def _break(model: nn.Module, breakage: str) -> None:
    """Apply an initialisation breakage in place."""
    with torch.no_grad():
        if breakage == "dead_relu":
            # Every layer feeding a ReLU gets a bias far below its pre-activations.
            mods = list(model.modules())
            for mod in mods:
                if isinstance(mod, nn.TransformerEncoderLayer):
                    mod.linear1.bias.fill_(-10.0)
            for a, b in zip(mods, mods[1:], strict=False):
                if isinstance(a, nn.Linear | nn.Conv2d) and isinstance(b, nn.ReLU):
                    a.bias.fill_(-10.0)
        elif breakage == "large_init_deep":
            for mod in model.modules():
                if isinstance(mod, nn.Linear) and mod.in_features == mod.out_features:
                    # Kaiming's std times 2.5: activations grow ×2.5 per layer.
                    std = 2.5 * (2.0 / mod.in_features) ** 0.5
                    nn.init.normal_(mod.weight, 0.0, std)
        elif breakage not in ("", "sigmoid_deep"):
            raise ValueError(f"Unknown breakage {breakage!r}")
