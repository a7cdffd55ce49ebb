"""``python -m bench.diagnosis``: run the zoo, measure the rules, write the doc.

The table goes to docs/diagnosis.md between its zoo markers.

Options: ``--seeds 0,1,2`` (default), ``--archs mlp,cnn,transformer``,
``--failures`` (default: all), ``--no-write`` (print only).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from bench.diagnosis.overhead import agent_overhead, server_overhead
from bench.diagnosis.report import BEGIN, END, summary, table
from bench.diagnosis.zoo import ARCHS, FAILURES, Result, cases, run_case

DOC = Path(__file__).resolve().parents[2] / "docs" / "diagnosis.md"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.diagnosis")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--failures", default=",".join(FAILURES))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    archs = tuple(args.archs.split(","))
    wanted = set(args.failures.split(","))
    todo = [c for c in cases(seeds, archs) if c.failure in wanted]
    start = time.perf_counter()
    results: list[Result] = []
    for i, case in enumerate(todo, 1):
        r = run_case(case)
        results.append(r)
        hit = "–" if r.hit_step is None else r.hit_step
        print(
            f"[{i}/{len(todo)}] {case.failure:16s} {case.arch:11s} seed {case.seed}: "
            f"hit {hit}, loss {r.loss_step}, all {sorted(r.detected)}",
            flush=True,
        )
    wall = time.perf_counter() - start
    server = server_overhead(results)
    agent = agent_overhead()
    found, broken, alarms, healthy = summary(results)
    cmd = (
        "python -m bench.diagnosis"
        + (f" {' '.join(argv)}" if argv else " " + " ".join(sys.argv[1:])).rstrip()
    )
    body = "\n".join(
        [
            BEGIN,
            f"Command: `{cmd.strip()}` ({len(todo)} runs, {wall:.0f} s on one core of "
            f"{platform.processor() or platform.machine()}, torch "
            f"{torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
            ").",
            "",
            f"**Broken runs detected: {found}/{broken}; healthy runs with any "
            f"diagnosis: {alarms}/{healthy}.**",
            "",
            table(results),
            "",
            "Overhead of the rules:",
            "",
            "| where | what | µs per frame |",
            "|---|---|---|",
            *server,
            *agent,
            END,
        ]
    )
    print(body)
    if not args.no_write:
        text = DOC.read_text() if DOC.exists() else f"{BEGIN}\n{END}\n"
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        DOC.write_text(head + body + tail)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
