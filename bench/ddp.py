"""Cost of global readings under DDP: the extra collective per tracked step (gloo, CPU).

``python -m bench.ddp [--world 2] [--steps 40] [--repeats 5]``

Each process trains a ``DistributedDataParallel`` replica (one torch thread) and
times, in interleaved blocks of ``--steps`` steps:

- ``plain``: the DDP step alone (forward, backward with DDP's gradient
  all-reduce, SGD step);
- ``per-rank``: with a Cockpit that reads each process's own samples
  (``per_rank=True``; no collective of the agent's);
- ``global``: with a Cockpit whose readings describe the global batch (one
  packed all-reduce per tracked step).

Every step is tracked (``budget=None``), for two instrument sets: ``economy`` and
economy with ``mean_gsnr`` (whose ``Σ g_n²`` puts one value per parameter into
the message). Ratios are paired: each block's median step time over the mean of
the neighbouring ``plain`` blocks, median over repeats (rank 0's clock; the
processes wait for each other in every collective). The message size and the
time spent inside the agent's all-reduce come from the Cockpit's counters; that
time includes waiting for the slower process (the collective is where the
processes meet), so the same all-reduce is also timed alone, after a barrier.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F  # noqa: N812

from tests.conftest import free_port

SETS = {
    "economy": ("economy",),
    "economy + mean_gsnr": ("economy", "mean_gsnr"),
}


def _instruments(names: tuple[str, ...]) -> list[Any]:
    """The named presets and instruments, each on every step."""
    from glasscockpit.agent import always
    from glasscockpit.agent.instruments import BY_NAME, PRESETS

    classes = [c for n in names for c in (PRESETS.get(n) or (BY_NAME[n],))]
    return [c(schedule=always) for c in classes]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def _block(
    kind: str, spec: Any, steps: int, x: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    """Median ms per step of ``steps`` steps, and the agent's collectives."""
    from glasscockpit.agent import Cockpit

    ddp = nn.parallel.DistributedDataParallel(_model())
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    cockpit = None
    if kind != "plain":
        cockpit = Cockpit(
            ddp,
            opt,
            server=None,
            instruments=_instruments(spec),
            budget=None,
            per_rank=kind == "per-rank",
        )
    times = []
    for step in range(steps + 3):  # 3 warm-up steps
        dist.barrier()
        start = time.perf_counter()
        opt.zero_grad()
        out = ddp(x)
        loss = F.cross_entropy(out, y)
        losses = F.cross_entropy(out, y, reduction="none")
        if cockpit is None:
            loss.backward()
        else:
            with cockpit.step(step, loss=loss, losses=losses):
                loss.backward()
        opt.step()
        if step >= 3:
            times.append(time.perf_counter() - start)
    out_: dict[str, float] = {"ms": 1e3 * statistics.median(times)}
    if cockpit is not None:
        if cockpit._dp is not None:
            traffic = cockpit._dp.group.traffic
            out_["collectives"] = traffic.packed / (steps + 3)
            out_["bytes"] = float(traffic.last_bytes)
            out_["collective_ms"] = 1e3 * traffic.seconds / traffic.packed
        cockpit.close()
    return out_


def _allreduce_ms(nbytes: float, calls: int = 50) -> float:
    """Median ms of one float64 all-reduce of ``nbytes``, processes in step."""
    flat = torch.zeros(max(1, int(nbytes) // 8), dtype=torch.float64)
    times = []
    for _ in range(calls + 5):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(flat)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[5:])


def _worker(rank: int, world: int, port: int, args: Any, out: str) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, world, is_master=rank == 0)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)
        x, y = torch.randn(args.batch, 784), torch.randint(0, 10, (args.batch,))
        rows: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.repeats):
            for name, spec in SETS.items():
                for kind in ("plain", "per-rank", "plain", "global", "plain"):
                    key = "plain" if kind == "plain" else f"{kind} | {name}"
                    rows.setdefault(key, []).append(
                        _block(kind, spec, args.steps, x, y)
                    )
        for name in SETS:
            nbytes = rows[f"global | {name}"][-1]["bytes"]
            rows[f"alone | {name}"] = [{"ms": _allreduce_ms(nbytes)}]
        if rank == 0:
            Path(out).write_text(json.dumps(rows))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)


def _ratios(rows: dict[str, list[dict[str, float]]], repeats: int) -> dict[str, float]:
    """Paired ratios: each block over the mean of the plain blocks beside it."""
    plain = [r["ms"] for r in rows["plain"]]
    out: dict[str, list[float]] = {}
    per_repeat = len(SETS)
    for key, blocks in rows.items():
        if key == "plain" or key.startswith("alone"):
            continue
        kind = key.split(" | ")[0]
        set_index = list(SETS).index(key.split(" | ")[1])
        for rep, block in enumerate(blocks):
            # Plain blocks of one set's round: indices 3k, 3k+1, 3k+2.
            base = 3 * (rep * per_repeat + set_index)
            left, right = (
                (base, base + 1) if kind == "per-rank" else (base + 1, base + 2)
            )
            ref = (plain[left] + plain[right]) / 2
            out.setdefault(key, []).append(block["ms"] / ref)
    del repeats
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="samples per process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rows.json")
        mp.spawn(_worker, args=(args.world, free_port(), args, out), nprocs=args.world)
        rows = json.loads(Path(out).read_text())
    ratios = _ratios(rows, args.repeats)
    plain_ms = statistics.median(r["ms"] for r in rows["plain"])
    print(
        f"{args.world} gloo processes, MLP 784-128-64-10 (D = 109,386), "
        f"{args.batch} samples per process, every step tracked, "
        f"{args.repeats} repeats of {args.steps} steps; plain DDP step "
        f"{plain_ms:.2f} ms (median)"
    )
    print()
    print(
        "| instruments | per-rank × plain | global × plain | global / per-rank "
        "| agent all-reduces per step | bytes per all-reduce | ms in it "
        "| ms, all-reduce alone |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in SETS:
        per, glob = ratios[f"per-rank | {name}"], ratios[f"global | {name}"]
        g = rows[f"global | {name}"]
        calls = statistics.median(r["collectives"] for r in g)
        nbytes = statistics.median(r["bytes"] for r in g)
        cms = statistics.median(r["collective_ms"] for r in g)
        print(
            f"| {name} | {per:.2f} | {glob:.2f} | {glob / per:.2f} | {calls:.0f} "
            f"| {nbytes:,.0f} | {cms:.2f} | {rows[f'alone | {name}'][0]['ms']:.3f} |"
        )


if __name__ == "__main__":
    main()
