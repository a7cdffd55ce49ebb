"""A few agent-overhead rows side by side, timed in CPU time of this process.

On a machine shared with other processes, wall-clock blocks of a few steps
absorb their load; the process's CPU time (one torch thread) mostly does not.
Rows are steps of ``bench.agent_overhead`` (``plain`` and ``ours``), every step
tracked, interleaved round-robin in blocks of at least ``--block-s`` seconds;
the table shows medians and the ratio to the plain step.

    OMP_NUM_THREADS=1 python -m bench.overhead_cpu --model transformer --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.agent_overhead import Step, ours, plain

#: (label, preset or instrument, instrument left out)
ROWS = (
    ("economy", "economy", ""),
    ("economy without grad_hist_1d", "economy", "grad_hist_1d"),
    ("norm_test alone", "norm_test", ""),
    ("alpha alone", "alpha", ""),
)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run, print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="transformer")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--block-s", type=float, default=0.3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps: dict[str, Step] = {"plain": plain(args.model)}
    for label, spec, without in ROWS:
        steps[label] = ours(args.model, spec, True, without)
    counters = dict.fromkeys(steps, 1)
    for fn in steps.values():  # warm-up
        fn(0)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.repeats):
        for label, fn in steps.items():
            n, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
            while n < 1 or time.perf_counter() - wall0 < args.block_s:
                fn(counters[label])
                counters[label] += 1
                n += 1
            times[label].append((time.process_time() - cpu0) / n * 1e3)
    base = statistics.median(times["plain"])
    print(f"\n### {args.model}: CPU ms per step, medians of {args.repeats}\n")
    print("| configuration, every step tracked | ms (CPU) | × plain |")
    print("|---|---|---|")
    for label, values in times.items():
        m = statistics.median(values)
        print(f"| {label} | {m:.1f} | {m / base:.2f} |")
    for label, fn in steps.items():
        disabled = getattr(getattr(fn, "cockpit", None), "disabled", None)
        if disabled:
            print(f"{label}: disabled {', '.join(disabled)}")


if __name__ == "__main__":
    main()
