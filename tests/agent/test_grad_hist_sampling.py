"""Histograms of large layers from sampled samples: unbiased, and said so."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.instruments import GradHist1d
from glasscockpit.protocol import Readings


def _reading(sample: int | None, seed: int) -> tuple[torch.Tensor, str | None]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    )
    x, y = torch.randn(6, 2, 4, 4), torch.randint(0, 3, (6,))
    inst = GradHist1d(schedule=always, sample=sample, seed=seed, range=(-0.5, 0.5))
    cockpit = Cockpit(model, None, server=None, run="t", instruments=[inst])
    loss = F.cross_entropy(model(x), y)
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    frame = next(f for f in cockpit.transport.frames if isinstance(f, Readings))  # type: ignore[attr-defined]
    return cockpit.readings[0]["grad_hist_1d"]["counts"], frame.errors.get(
        "grad_hist_1d"
    )


def test_sampled_counts_are_unbiased_and_the_reading_says_so(torch_threads):
    exact, note = _reading(None, 0)
    assert note is None
    # The conv layer (76 values a sample) exceeds 100 values over 6 samples:
    # one sample of it is built, counted 6 times; the Linear layer stays exact.
    draws = [_reading(100, seed) for seed in range(60)]
    assert all(n is not None and "2 layer tensors" in n for _, n in draws)
    counts = torch.stack([c for c, _ in draws])
    assert torch.allclose(counts.sum(1), exact.sum().expand(60))  # B·D values
    se = counts.std(0) / len(draws) ** 0.5
    err = (counts.mean(0) - exact).abs()
    assert bool((err <= 4 * se + 1e-9).all())
    assert not torch.equal(counts[0], exact)  # it did sample


def test_the_2d_histogram_samples_the_same_way(torch_threads):
    from glasscockpit.agent.instruments import GradHist2d

    def reading(sample: int | None, seed: int) -> tuple[torch.Tensor, str | None]:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
        )
        x, y = torch.randn(6, 2, 4, 4), torch.randint(0, 3, (6,))
        inst = GradHist2d(schedule=always, sample=sample, seed=seed)
        cockpit = Cockpit(model, None, server=None, run="t", instruments=[inst])
        loss = F.cross_entropy(model(x), y)
        with cockpit.step(0, loss=loss):
            loss.backward()
        cockpit.close()
        frame = next(f for f in cockpit.transport.frames if isinstance(f, Readings))  # type: ignore[attr-defined]
        counts = cockpit.readings[0]["grad_hist_2d"]["counts"]
        return counts, frame.errors.get("grad_hist_2d")

    exact, note = reading(None, 0)
    assert note is None
    draws = [reading(100, seed) for seed in range(40)]
    assert all(n is not None and "2 layer tensors" in n for _, n in draws)
    counts = torch.stack([c for c, _ in draws])
    se = counts.std(0) / len(draws) ** 0.5
    assert bool(((counts.mean(0) - exact).abs() <= 4 * se + 1e-9).all())
