"""Page faults and system time per training step, with and without the kept heap.

Each row runs in a fresh interpreter (the allocator setting is process-wide and
the trimming it prevents depends on where the heap lands), ``--processes`` times:
a plain step, and a step with the agent tracking a preset every step, with
glibc's thresholds fixed (``agent/environment/heap.py``) and declined
(``GLASSCOCKPIT_KEEP_HEAP=0``). One torch thread, as ``bench.agent_overhead``::

    python -m bench.page_faults --model cnn --spec economy --processes 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_CHILD = """
import json, resource, sys, time, torch
torch.set_num_threads(1)
from bench.agent_overhead import plain, ours
model, spec = sys.argv[1], sys.argv[2]
warmup, steps = int(sys.argv[3]), int(sys.argv[4])
step = plain(model) if spec == "plain" else ours(model, spec, True)
for i in range(warmup):
    step(i)
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for i in range(warmup, warmup + steps):
    step(i)
r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
print(json.dumps({
    "faults": (r1.ru_minflt - r0.ru_minflt) / steps,
    "sys_ms": (r1.ru_stime - r0.ru_stime) * 1e3 / steps,
    "ms": (t1 - t0) * 1e3 / steps,
}))
"""


def run(model: str, spec: str, keep: bool, warmup: int, steps: int) -> dict[str, float]:
    """One fresh process's faults, system ms and wall ms per step."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["GLASSCOCKPIT_KEEP_HEAP"] = "1" if keep else "0"
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, model, spec, str(warmup), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--spec", default="economy")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)
    rows = [
        ("plain", "plain", True),
        (f"{args.spec}, heap kept", args.spec, True),
        (f"{args.spec}, heap declined", args.spec, False),
    ]
    print("| row | process | faults/step | system ms/step | ms/step |")
    print("|---|---|---|---|---|")
    for p in range(args.processes):
        for label, spec, keep in rows:
            r = run(args.model, spec, keep, args.warmup, args.steps)
            print(
                f"| {label} | {p + 1} | {r['faults']:,.0f} | {r['sys_ms']:.2f} "
                f"| {r['ms']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
