"""Convolutions' per-sample norms and dots without per-sample gradients, exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from glasscockpit.agent.engine.conv_stats import ghost_is_cheaper
from glasscockpit.agent.engine.rules import CONV

CASES = {
    # A ResNet-18 layer-3 shape: 2x2 outputs, 576 inputs, 128 outputs: Gram path.
    "deep-strided": (nn.Conv2d(64, 128, 3, stride=2, padding=1), (5, 64, 4, 4), True),
    # The first layer of an image model: 144 positions, 27 inputs: per-sample path.
    "wide": (nn.Conv2d(3, 16, 3, padding=1), (5, 3, 12, 12), False),
    "grouped": (nn.Conv2d(8, 8, 3, padding=1, groups=2), (5, 8, 6, 6), False),
    "conv1d-dilated": (nn.Conv1d(4, 6, 3, padding=2, dilation=2), (5, 4, 10), False),
    "no-bias-1x1": (nn.Conv2d(32, 64, 1, bias=False), (5, 32, 2, 2), True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_norms_dots_and_squares_match_per_sample_autograd(case: str) -> None:
    torch.manual_seed(0)
    conv, shape, ghost = CASES[case]
    conv = conv.double()
    x = torch.randn(*shape, dtype=torch.float64)
    out = conv(x)
    b = torch.randn_like(out)
    assert ghost_is_cheaper(conv, b) == ghost
    params = {k: v.detach() for k, v in conv.named_parameters()}

    def one(p, xi, bi):  # type: ignore[no-untyped-def]
        return (functional_call(conv, p, (xi[None],))[0] * bi).sum()

    want = vmap(grad(one), in_dims=(None, 0, 0))(params, x, b)
    direction = {k: torch.randn_like(v) for k, v in params.items()}
    l2 = CONV.batch_l2(conv, x, b)
    dot = CONV.batch_dot(conv, x, b, direction)
    sgs = CONV.sum_grad_squared(conv, x, b)
    total = CONV.grad_sum(conv, x, b)
    assert set(l2) == set(dot) == set(sgs) == set(total) == set(params)
    for k, g in want.items():
        flat = g.flatten(1)
        # float64: a different summation order only.
        torch.testing.assert_close(l2[k], flat.square().sum(1), rtol=1e-10, atol=0)
        torch.testing.assert_close(
            dot[k], flat @ direction[k].reshape(-1), rtol=1e-10, atol=1e-12
        )
        torch.testing.assert_close(sgs[k], g.square().sum(0), rtol=1e-10, atol=0)
        torch.testing.assert_close(total[k], g.sum(0), rtol=1e-10, atol=1e-12)


def test_per_sample_path_is_chunked_over_samples(monkeypatch) -> None:
    import glasscockpit.agent.engine.rules as rules

    monkeypatch.setattr(rules, "CONV_CHUNK", 1)  # one sample at a time
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(3, 3, 5, 5, dtype=torch.float64)
    b = torch.randn_like(conv(x))
    whole = CONV.batch_grads(conv, x, b)["weight"]
    torch.testing.assert_close(
        CONV.batch_l2(conv, x, b)["weight"], whole.flatten(1).square().sum(1)
    )
    torch.testing.assert_close(
        CONV.sum_grad_squared(conv, x, b)["weight"], whole.square().sum(0)
    )
