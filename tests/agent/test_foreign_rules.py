"""Rules for other libraries' layers (``agent/engine/foreign_rules.py``).

Hugging Face's ``Conv1D`` served by the transposed linear rule, on 2-D inputs
(closed forms) and sequences, every statistic against per-sample autograd in
float64; which ``nn.LayerNorm`` subclasses the layer-norm rule serves (those
keeping its math) and which it leaves to the fallback (timm's channels-first
``LayerNorm2d``, a subclass changing the math, a look-alike ``Conv1D``).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from glasscockpit.agent.engine import supports
from glasscockpit.agent.engine.foreign_rules import CONV1D
from glasscockpit.agent.engine.norm_rules import LAYER_NORM
from tests.agent.real_models import import_torchvision

import_torchvision()
transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")


def _per_sample(module: nn.Module, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Per-sample gradients of ``Σ y·c`` by a loop, and ``b`` (= ``c``)."""
    c = torch.randn(module(x).shape, dtype=x.dtype)
    per: dict[str, list[Tensor]] = {k: [] for k, _ in module.named_parameters()}
    for n in range(x.shape[0]):
        module.zero_grad()
        (module(x[n : n + 1]) * c[n : n + 1]).sum().backward()
        for k, p in module.named_parameters():
            assert p.grad is not None
            per[k].append(p.grad.clone())
    return {k: torch.stack(v) for k, v in per.items()}, c


@pytest.mark.parametrize("shape", [(5, 6), (5, 3, 6)], ids=["2d", "sequence"])
def test_conv1d_statistics_match_per_sample_autograd(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    module = transformers.pytorch_utils.Conv1D(4, 6).double()
    assert supports(module) is CONV1D
    x = torch.randn(*shape, dtype=torch.float64)
    want, b = _per_sample(module, x)
    rule = CONV1D
    got = rule.batch_grads(module, x, b)
    for k in want:
        torch.testing.assert_close(got[k], want[k])
        torch.testing.assert_close(rule.grad_sum(module, x, b)[k], want[k].sum(0))
        torch.testing.assert_close(
            rule.batch_l2(module, x, b)[k], want[k].flatten(1).square().sum(1)
        )
        torch.testing.assert_close(
            rule.sum_grad_squared(module, x, b)[k], want[k].square().sum(0)
        )
    g = {k: torch.randn(p.shape, dtype=p.dtype) for k, p in module.named_parameters()}
    dots = rule.batch_dot(module, x, b, g)
    for k in want:
        torch.testing.assert_close(dots[k], want[k].flatten(1) @ g[k].reshape(-1))
    if rule.linear_in_b_squared(x):
        sq = rule.sum_grad_squared_from_b_squared(module, x, b.square())
        torch.testing.assert_close(sq["weight"], want["weight"].square().sum(0))


def test_only_hugging_face_conv1d_is_matched() -> None:
    class Conv1D(nn.Module):  # same name and layout, another library's class
        def __init__(self) -> None:
            super().__init__()
            self.nf = 4
            self.weight = nn.Parameter(torch.zeros(6, 4))

    assert supports(Conv1D()) is None


class KeepsForward(nn.LayerNorm):
    """A subclass adding nothing to the math."""


class ScalesOutput(nn.LayerNorm):
    """A subclass whose forward is not a layer norm."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * F.layer_norm(x, self.normalized_shape, self.weight, self.bias)


def test_layer_norm_subclasses_keeping_the_math_are_served() -> None:
    assert supports(KeepsForward(8)) is LAYER_NORM
    assert supports(timm.layers.LayerNorm(8)) is LAYER_NORM
    assert supports(ScalesOutput(8)) is None
    assert supports(timm.layers.LayerNorm2d(8)) is None  # channels first
