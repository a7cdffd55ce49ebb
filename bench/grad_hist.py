"""Gradient histograms: ms per tracked step, counting shortcuts vs binning every value.

For each model of ``bench.agent_overhead`` one step is recorded by the hook
engine; then, on that same step and interleaved round-robin, the instruments'
``compute`` (rank-one ``nn.Linear`` weights counted from their factors, joint
counts per row) is timed against binning every built per-sample value with the
same bin rule (``StepView.batch_grads``, what the histograms did before). Both
must give identical counts; the run stops if they do not. Medians over repeats.

    python -m bench.grad_hist [--models mlp,cnn,transformer] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812

from bench.agent_overhead import make_model
from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.instruments import GradHist1d, GradHist2d
from glasscockpit.agent.instruments.base import Reading, count_into
from glasscockpit.agent.instruments.grad_hist_1d import histc_bins
from glasscockpit.agent.instruments.grad_hist_2d import centre_bins
from glasscockpit.agent.lifecycle.step import StepView


def built_1d(inst: GradHist1d, step: StepView) -> Tensor:
    """Counts (and NaNs last) from every built value."""
    (lo, hi), n = inst.range, inst.bins
    counts = torch.zeros(n + 1, dtype=torch.int64)
    for _, _, g in step.batch_grads(inst.chunk):
        count_into(counts, histc_bins(g, lo, hi, n))
    return counts


def built_2d(inst: GradHist2d, step: StepView) -> Tensor:
    """Flat joint counts from every built value."""
    (ng, nt), ((glo, ghi), (tlo, thi)) = inst.bins, inst.range
    counts = torch.zeros(2 * ng * nt + 1, dtype=torch.int64)
    for _, theta, g in step.batch_grads(inst.chunk):
        tb = centre_bins(theta.clone(), nt, tlo, thi, nan=ng * nt)
        count_into(counts, torch.add(tb, centre_bins(g, ng, glo, ghi, ng), alpha=nt))
    return counts


def same(reading: Reading, built: Tensor) -> bool:
    """Whether an instrument's counts equal the built ones."""
    assert isinstance(reading, dict)
    counts = reading["counts"]
    assert isinstance(counts, Tensor)
    n = counts.numel()
    return torch.equal(counts.reshape(-1), built[:n].double())


class Probe(GradHist1d):
    """Runs the timings inside a real step's after-backward phase."""

    def __init__(self, repeats: int) -> None:
        super().__init__(schedule=always)
        self.repeats = repeats
        self.ms: dict[str, float] = {}

    def compute(self, step: StepView) -> Reading:
        """Time both ways of both histograms on this step; return nothing."""
        h1, h2 = GradHist1d(), GradHist2d()
        runs: dict[str, Callable[[], object]] = {
            "grad_hist_1d": lambda: h1.compute(step),
            "grad_hist_1d, every value built": lambda: built_1d(h1, step),
            "grad_hist_2d": lambda: h2.compute(step),
            "grad_hist_2d, every value built": lambda: built_2d(h2, step),
        }
        if not same(h1.compute(step), built_1d(h1, step)):
            raise AssertionError("grad_hist_1d counts differ from the built ones")
        if not same(h2.compute(step), built_2d(h2, step)):
            raise AssertionError("grad_hist_2d counts differ from the built ones")
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(self.repeats):
            for k, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) * 1e3)
        self.ms = {k: statistics.median(v) for k, v in times.items()}
        return None


def plain_ms(model_name: str, repeats: int) -> float:
    """Median ms of a plain training step (for scale)."""
    model, x, y = make_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench(model_name: str, repeats: int) -> dict[str, float]:
    """Median ms of each histogram path on one tracked step of the model."""
    model, x, y = make_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = Probe(repeats)
    cockpit = Cockpit(
        model, opt, server=None, run="bench", instruments=[probe], fail_mode="raise"
    )
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    return {"plain step": plain_ms(model_name, repeats), **probe.ms}


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run, print a markdown table per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn,transformer")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for model_name in args.models.split(","):
        ms = bench(model_name, args.repeats)
        print(f"\n### {model_name} (torch threads: {args.threads}, medians)\n")
        print("| histogram computation | ms |")
        print("|---|---|")
        for label, v in ms.items():
            print(f"| {label} | {v:.2f} |")


if __name__ == "__main__":
    main()
