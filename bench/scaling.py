"""Scaling: agent cost vs batch, width, depth; server memory vs steps and runs.

Agent: an MLP ``784 → width × layers → 10`` (ReLU, cross-entropy, SGD), baseline
batch 128, width 128, 2 hidden layers; one of the three varies at a time. At every
point a plain step and the ``economy`` and ``full`` presets tracked every step run
interleaved round-robin (``bench.agent_overhead.interleave``); the result is the
ratio of medians to the plain step.

Server: one ``glasscockpit serve`` process (defaults but for the rate limit and
``max_runs``); a single run grows step by step and the server's RSS is read at
checkpoints; then in a fresh server runs of ``--run-steps`` steps are added one by
one. Frames are those of ``bench/ingest.py`` (with a 64-bin histogram).

    python -m bench.scaling [--quick] [--device cuda] [--json out.json] [--plots DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

AXES = {
    "batch": [16, 32, 64, 128, 256, 512],
    "width": [32, 64, 128, 256, 512, 1024],
    "layers": [1, 2, 4, 8, 16],
}
QUICK_AXES = {"batch": [32, 128, 512], "width": [32, 128, 512], "layers": [1, 2, 8]}
BASE = {"batch": 128, "width": 128, "layers": 2}
PRESETS = ("economy", "full")


def mlp(batch: int, width: int, layers: int, device: str) -> tuple[Any, Any, Any]:
    """Seeded MLP and one batch."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    mods: list[nn.Module] = []
    d = 784
    for _ in range(layers):
        mods += [nn.Linear(d, width), nn.ReLU()]
        d = width
    model = nn.Sequential(*mods, nn.Linear(d, 10)).to(device)
    x = torch.randn(batch, 784, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return model, x, y


def agent_sweep(
    axes: dict[str, list[int]], repeats: int, block_s: float, device: str
) -> list[dict[str, Any]]:
    """One row per (axis, value): ms of plain and the presets, ratios, parameters."""
    from bench.agent_overhead import interleave, ours_step, plain_step

    out = []
    for axis, values in axes.items():
        for v in values:
            cfg = {**BASE, axis: v}
            model, x, y = mlp(**cfg, device=device)
            steps = {"plain": (plain_step(model, x, y), [0])}
            for p in PRESETS:
                m, xx, yy = mlp(**cfg, device=device)
                steps[p] = (ours_step(m, xx, yy, p, True), [0])
            ratios: dict[str, float] = {}
            ms = interleave(steps, repeats, block_s, device, ratios)
            row = {
                "axis": axis,
                "value": v,
                **cfg,
                "params": sum(p.numel() for p in model.parameters()),
                "ms": ms,
                "ratio": {p: ratios[p] for p in PRESETS},  # paired (interleave)
            }
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


async def _grow_run(
    url: str, run: str, checkpoints: list[int], on_checkpoint: Any
) -> None:
    """Send one run's frames; at each checkpoint wait for all acks, then sample."""
    from websockets.asyncio.client import connect

    from bench.ingest import SPECS, frame
    from glasscockpit.protocol import Bye, Hello, decode, encode

    async with connect(url, compression=None, max_size=2**20) as ws:
        await ws.send(encode(Hello(run, 0, SPECS, {"bench": True})))
        await ws.recv()
        seq = 0
        for target in checkpoints:
            acked = seq
            while seq < target:
                seq += 1
                await ws.send(frame(run, seq, True))
                if seq - acked >= 256:  # keep a window, as the agent does
                    acked = decode(await ws.recv()).seq  # type: ignore[union-attr]
            while acked < seq:
                acked = decode(await ws.recv()).seq  # type: ignore[union-attr]
            on_checkpoint(target)
        await ws.send(encode(Bye(run, seq + 1)))
        await ws.recv()


def server_memory(
    step_points: list[int], run_points: list[int], run_steps: int, timeout: float
) -> dict[str, list[dict[str, Any]]]:
    """RSS of a real server as one run grows, and as runs are added."""
    from bench.ingest import metrics, rss_bytes, server

    env = {"rate_frames_per_s": "1e9", "rate_burst": "1000000000"}
    result: dict[str, list[dict[str, Any]]] = {"steps": [], "runs": []}
    with server(**env) as (proc, base):
        url = base.replace("http", "ws") + "/v1/agent"

        def sample_steps(n: int) -> None:
            m = metrics(base)
            row = {"steps": n, "rss_mb": rss_bytes(proc.pid) / 2**20, **_m(m)}
            print(json.dumps(row), flush=True)
            result["steps"].append(row)

        sample_steps(0)
        asyncio.run(
            asyncio.wait_for(_grow_run(url, "grow", step_points, sample_steps), timeout)
        )
    max_runs = max(run_points) + 1
    with server(**env, max_runs=str(max_runs)) as (proc, base):
        url = base.replace("http", "ws") + "/v1/agent"
        done = 0

        def sample_runs(n: int) -> None:
            m = metrics(base)
            row = {"runs": n, "rss_mb": rss_bytes(proc.pid) / 2**20, **_m(m)}
            print(json.dumps(row), flush=True)
            result["runs"].append(row)

        sample_runs(0)
        for target in run_points:
            while done < target:
                done += 1
                asyncio.run(
                    asyncio.wait_for(
                        _grow_run(url, f"run-{done}", [run_steps], lambda _: None),
                        timeout,
                    )
                )
            sample_runs(target)
    return result


def _m(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "store_estimate_mb": m["memory_bytes"] / 2**20,
        "points": m["points"],
        "runs_in_store": m["runs"],
    }


def plot(results: dict[str, Any], folder: Path) -> list[str]:
    """Write the PNGs; return their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    rows = results["agent"]
    fig, axs = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    xlabels = {
        "batch": "batch size",
        "width": "parameters (width varies)",
        "layers": "hidden layers",
    }
    for ax, axis in zip(axs, ("batch", "width", "layers"), strict=True):
        sel = [r for r in rows if r["axis"] == axis]
        xs = [r["params"] if axis == "width" else r["value"] for r in sel]
        for p in PRESETS:
            ax.plot(xs, [r["ratio"][p] for r in sel], "o-", label=f"{p} (every step)")
        ax.set_xscale("log", base=2 if axis != "width" else 10)
        ax.set_yscale("log")
        ax.set_xlabel(xlabels[axis])
        ax.grid(True, which="both", alpha=0.3)
    axs[0].set_ylabel("step time ÷ plain step")
    axs[0].legend()
    fig.suptitle(
        f"Agent cost on an MLP ({results['device']}; base: batch 128, width 128, "
        "2 hidden layers)"
    )
    fig.tight_layout()
    fig.savefig(folder / "scaling-agent.png", dpi=90)
    plt.close(fig)
    names.append("scaling-agent.png")

    mem = results.get("server")
    if mem:
        fig, axs = plt.subplots(1, 2, figsize=(10, 3.8))
        s, r = mem["steps"], mem["runs"]
        axs[0].plot(
            [x["steps"] for x in s], [x["rss_mb"] for x in s], "o-", label="RSS"
        )
        axs[0].plot(
            [x["steps"] for x in s],
            [x["store_estimate_mb"] for x in s],
            "s--",
            label="store estimate",
        )
        axs[0].set_xlabel("steps in one run")
        axs[1].plot([x["runs"] for x in r], [x["rss_mb"] for x in r], "o-", label="RSS")
        axs[1].plot(
            [x["runs"] for x in r],
            [x["store_estimate_mb"] for x in r],
            "s--",
            label="store estimate",
        )
        axs[1].set_xlabel(f"runs of {results['run_steps']} steps")
        for ax in axs:
            ax.set_ylabel("MiB")
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.suptitle("Server memory (one process, default max_points)")
        fig.tight_layout()
        fig.savefig(folder / "scaling-server.png", dpi=90)
        plt.close(fig)
        names.append("scaling-server.png")
    return names


def main(argv: list[str] | None = None) -> int:
    """Run the sweep (and the server part), write JSON and plots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 points per axis")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-s", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-server", action="store_true", help="agent part only")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--max-runs", type=int, default=40)
    parser.add_argument("--run-steps", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plots", type=Path, help="write PNGs to this folder")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    axes = QUICK_AXES if args.quick else AXES
    results: dict[str, Any] = {
        "device": args.device,
        "run_steps": args.run_steps,
        "agent": agent_sweep(axes, args.repeats, args.block_s, args.device),
    }
    if not args.no_server:
        top = args.max_steps
        steps = sorted({top // 100, top // 20, top // 10, top // 4, top // 2, top})
        runs = sorted({1, args.max_runs // 8, args.max_runs // 4, args.max_runs // 2})
        runs = [r for r in runs if r > 0] + [args.max_runs]
        results["server"] = server_memory(steps, runs, args.run_steps, args.timeout)
    results["seconds"] = time.monotonic() - t0
    if args.plots:
        results["plots"] = plot(results, args.plots)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
