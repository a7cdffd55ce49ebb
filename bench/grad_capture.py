"""Cost of reading the gradient as backpropagated when the loop clips inside the step.

``python -m bench.grad_capture [--steps 30] [--repeats 5] [--width 512]``

An MLP (4 Linear layers of ``width``, batch 64, one torch thread) is trained with
SGD and gradient clipping (``clip_grad_norm_``, max norm 1.0), in interleaved
blocks of ``--steps`` steps:

- ``plain``: the step alone, clipping after the backward pass;
- ``no edit``: with a Cockpit (``grad_norm`` on every step) whose step wraps only
  the backward pass, clipping after it: after the first step the hooks keep
  references (no copy);
- ``clip inside``: the same Cockpit with the clipping inside ``cockpit.step``:
  every tracked step copies ``.grad`` at the end of the backward pass and
  swaps it in for the instruments.

Ratios are paired: each block's median step time over the mean of the two
neighbouring ``plain`` blocks, median over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.instruments import GradNorm


def _setup(width: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Linear(width, width), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    return model, torch.randn(64, width), torch.randint(0, 10, (64,))


def _block(step: Callable[[int], None], steps: int, start: int) -> float:
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(start + i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    """Print the table (markdown) of median step times and paired ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, x, y = _setup(args.width)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    cockpit = Cockpit(
        model, opt, server=None, instruments=[GradNorm(schedule=always)], budget=None
    )
    clip = nn.utils.clip_grad_norm_

    def plain(_: int) -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        clip(model.parameters(), 1.0)
        opt.step()

    def tracked(inside: bool) -> Callable[[int], None]:
        def step(i: int) -> None:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            with cockpit.step(i, loss=loss):
                loss.backward()
                if inside:
                    clip(model.parameters(), 1.0)
            if not inside:
                clip(model.parameters(), 1.0)
            opt.step()

        return step

    rows = {"no edit": tracked(False), "clip inside": tracked(True)}
    medians: dict[str, list[float]] = {"plain": [], **{k: [] for k in rows}}
    ratios: dict[str, list[float]] = {k: [] for k in rows}
    n = 0
    for _ in range(args.repeats):
        for name, step in rows.items():
            # The capture's mode follows the loop: warm it into this row's.
            _block(step, 3, n)
            n += 3
            before = _block(plain, args.steps, n)
            row = _block(step, args.steps, n)
            after = _block(plain, args.steps, n)
            n += args.steps
            medians["plain"] += [before, after]
            medians[name].append(row)
            ratios[name].append(row / ((before + after) / 2))
    cockpit.close()
    grads = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"MLP 4x{args.width}, batch 64, {grads / 2**20:.1f} MiB of gradients")
    print("| row | median step (ms) | ratio to plain |")
    print("|---|---|---|")
    print(f"| plain | {statistics.median(medians['plain']) * 1e3:.2f} | 1 |")
    for name in rows:
        ms = statistics.median(medians[name]) * 1e3
        print(f"| {name} | {ms:.2f} | {statistics.median(ratios[name]):.3f} |")


if __name__ == "__main__":
    main()
