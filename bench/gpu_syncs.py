"""Host-device synchronisations per tracked step, per instrument, on CUDA.

A sync stalls the training thread until the GPU has caught up; the agent should
cause none on the hot path. This counts them with ``torch.cuda.set_sync_debug_mode``
and names the agent line that caused each, for the bench models::

    python -m bench.gpu_syncs --models mlp,cnn,transformer --out syncs.md
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import traceback
import warnings
from typing import Any

import torch

from bench.agent_overhead import Step, make_model, ours_step


def census(model_name: str, spec: str, steps: int = 2) -> tuple[float, float, Any]:
    """(syncs per step, ms per step, Counter of 'file:line code' sites)."""
    step: Step = ours_step(*make_model(model_name, "cuda"), spec, True)
    for i in range(3):
        step(i)
    torch.cuda.synchronize()
    sites: collections.Counter[str] = collections.Counter()

    def show(message: Any, *_: Any, **__: Any) -> None:
        if "synchroniz" not in str(message):
            return
        frames = traceback.extract_stack()[:-1]
        ours = [f for f in frames if "/agent/" in f.filename]
        f = ours[-1] if ours else frames[-1]
        sites[f"{f.filename.rsplit('/agent/', 1)[-1]}:{f.lineno} {f.line}"] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode(1)
        try:
            for i in range(3, 3 + steps):
                step(i)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 0.3:
        step(10 + n)
        n += 1
    torch.cuda.synchronize()
    ms = (time.perf_counter() - start) / n * 1e3
    return sum(sites.values()) / steps, ms, sites


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn,transformer")
    parser.add_argument(
        "--specs", default="norm_test,grad_hist_1d,grad_hist_2d,alpha,economy"
    )
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    lines: list[str] = []
    for model_name in args.models.split(","):
        for spec in args.specs.split(","):
            per_step, ms, sites = census(model_name, spec)
            lines.append(
                f"## {model_name} {spec}: {per_step:.0f} syncs/step, {ms:.2f} ms"
            )
            lines += [f"    {c / 2:6.1f}  {s}" for s, c in sites.most_common(10)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
