"""Models nobody here wrote, from tiny configs in code (no downloads), for the benches.

* ``resnet18``: torchvision's ResNet-18 with GroupNorm(32) instead of BatchNorm
  (per-sample statistics are undefined under BatchNorm in train mode), 10
  classes, batch 32 at 3×32×32.
* ``gpt2``: Hugging Face GPT-2, 2 layers, d 64, 4 heads, T 16, vocabulary 96,
  batch 4, token-mean cross-entropy of the shifted logits as ``labels=`` does.
* ``vit``: timm ViT-tiny (patch 16), 2 blocks, 32 px, 10 classes, batch 32.
* ``convnet``: the conv-heavy CNN of issue 18, conv(3→16)-pool-conv(16→32)-pool-
  linear(2048→10), ReLU, batch 64 at 3×32×32 (98 % of its time in the convolutions).

Every model comes with a pool of ``BATCHES`` different seeded batches that the
steps cycle through (a fixed batch flatters warm-started estimators).

The PyPI torchvision wheel here is built against CUDA torch: its C extension
does not load next to the CPU torch, and its fake-kernel registrations for the
missing operators raise at import. ``import_torchvision`` skips those
registrations (the models are pure Python and need none of the operators).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

#: Different batches per model; steps cycle through them.
BATCHES = 8
NAMES = ("resnet18", "gpt2", "vit", "convnet")


def import_torchvision() -> ModuleType:
    """``torchvision``, importable even where its C extension is not."""
    import torch.library as lib

    try:
        import torchvision

        return torchvision
    except RuntimeError:
        pass
    original = lib.register_fake

    def tolerant(op: Any, *args: Any, **kwargs: Any) -> Any:
        decorate = original(op, *args, **kwargs)

        def wrap(fn: Any) -> Any:
            try:
                return decorate(fn)
            except RuntimeError:  # the operator's C++ library did not load
                return fn

        return wrap

    lib.register_fake = tolerant  # type: ignore[assignment]
    try:
        import sys

        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        import torchvision

        return torchvision
    finally:
        lib.register_fake = original


class GPT2Logits(nn.Module):
    """GPT-2 returning its logits ``[B, V, T-1]`` for the next-token targets.

    ``F.cross_entropy(model(ids), ids[:, 1:])`` is then what ``labels=ids``
    computes inside the Hugging Face model (mean over the shifted tokens).
    """

    def __init__(self, vocab: int = 96, d: int = 64, seq: int = 16) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import_torchvision()  # transformers imports it
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(
            vocab_size=vocab,
            n_positions=seq,
            n_embd=d,
            n_layer=2,
            n_head=4,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        self.gpt = GPT2LMHeadModel(cfg)

    def forward(self, ids: Tensor) -> Tensor:
        logits: Tensor = self.gpt(input_ids=ids).logits
        return logits[:, :-1].transpose(1, 2)


def _convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2048, 10),
    )


def build(name: str) -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    """Seeded model and ``BATCHES`` batches ``(x, y)`` of it."""
    torch.manual_seed(0)
    if name == "resnet18":
        tv = import_torchvision()
        model = tv.models.resnet18(
            num_classes=10, norm_layer=lambda c: nn.GroupNorm(32, c)
        )
        data = [
            (torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))
            for _ in range(BATCHES)
        ]
    elif name == "gpt2":
        model = GPT2Logits()
        data = []
        for _ in range(BATCHES):
            ids = torch.randint(0, 96, (4, 16))
            data.append((ids, ids[:, 1:].contiguous()))
    elif name == "vit":
        tv = import_torchvision()  # timm imports it
        del tv
        import timm

        model = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=32,
            depth=2,
            num_classes=10,
        )
        data = [
            (torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))
            for _ in range(BATCHES)
        ]
    elif name == "convnet":
        model = _convnet()
        data = [
            (torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))
            for _ in range(BATCHES)
        ]
    else:
        raise ValueError(f"unknown model {name!r}; one of {NAMES}")
    return model, data


def losses_of(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(loss, per-sample losses)``: one cross-entropy, a sample's tokens averaged."""
    token = F.cross_entropy(out, y, reduction="none")
    losses = token if token.dim() == 1 else token.reshape(len(token), -1).mean(1)
    return token.mean(), losses


Batches = Callable[[int], tuple[Tensor, Tensor]]


def cycle(data: list[tuple[Tensor, Tensor]]) -> Batches:
    """Step ``i``'s batch."""
    return lambda i: data[i % len(data)]
