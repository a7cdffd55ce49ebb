"""Server ingest benchmark: throughput, ack latency, memory growth.

Starts ``glasscockpit serve`` on 127.0.0.1 in a child process (one uvicorn worker,
as deployed), then:

1. ``--agents`` concurrent agents (asyncio websockets clients, one run each) send
   ``--frames`` pre-encoded frames each, pipelined like the real agent (send
   continuously, read cumulative acks as they come). Reports frames/s (all frames
   / time from the first send to the last ack) and p50/p99/max ack latency.
2. Memory: the server's RSS (``/proc/<pid>/status``) and the store's own estimate
   (``/v1/metrics``) after one long run of ``--steps`` steps and after ``--runs``
   runs, to show growth flattens at GLASSCOCKPIT_MAX_POINTS / MAX_RUNS.

Everything is bounded: ``--timeout`` caps each phase; only 127.0.0.1 is used.
Usage: ``python bench/ingest.py [--agents 32] [--frames 1000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from websockets.asyncio.client import connect

from glasscockpit.protocol import (
    Array,
    Bye,
    Hello,
    InstrumentSpec,
    Kind,
    PanelSpec,
    Readings,
    decode,
    encode,
)

SPECS = (
    InstrumentSpec("loss", Kind.SCALAR, PanelSpec("Loss")),
    InstrumentSpec("lr", Kind.SCALAR, PanelSpec("Learning rate")),
    InstrumentSpec("grad_norm", Kind.PER_LAYER, PanelSpec("Gradient norm")),
    InstrumentSpec("hist", Kind.HISTOGRAM, PanelSpec("Gradient histogram")),
)
ROOT = Path(__file__).resolve().parent.parent
LAYERS = [f"layer{i}.{p}" for i in range(4) for p in ("weight", "bias")]
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run the clients on uvloop when installed (``uvicorn[standard]`` brings it).

    The clients share the machine's cores with the server; uvloop roughly halves
    the CPU a websocket send costs them, leaving the server more of the machine.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def frame(run: str, seq: int, histogram: bool) -> bytes:
    """A realistic frame: 2 scalars + a per-layer dict of 8 layers (+ a histogram)."""
    values: dict[str, Any] = {
        "loss": 1.0 / seq,
        "lr": 0.1,
        "grad_norm": {"total": float(seq), **dict.fromkeys(LAYERS, 0.5)},
    }
    if histogram:
        values["hist"] = {
            "counts": Array("<f4", (64,), bytes(256)),
            "edges": Array("<f4", (65,), bytes(260)),
        }
    return encode(Readings(run, seq, seq - 1, time.time(), values))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + "/v1/metrics", timeout=10) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


async def agent(
    url: str, run: str, frames: list[bytes], latencies: list[float], window: int
) -> None:
    """Send frames with at most ``window`` unacknowledged; time each ack."""
    async with connect(url, compression=None, max_size=2**20) as ws:
        await ws.send(encode(Hello(run, 0, SPECS, {"bench": True})))
        await ws.recv()
        sent: list[float] = [0.0] * (len(frames) + 1)
        acked = 0
        room = asyncio.Event()  # set when an ack has freed room in the window

        async def read_acks() -> None:
            nonlocal acked
            try:
                while acked < len(frames):
                    ack = decode(await ws.recv())  # type: ignore[arg-type]
                    now = time.perf_counter()
                    for seq in range(acked + 1, ack.seq + 1):
                        latencies.append(now - sent[seq])
                    acked = max(acked, ack.seq)
                    room.set()
            finally:
                room.set()  # the sender must not wait for acks that cannot come

        reader = asyncio.create_task(read_acks())
        for seq, data in enumerate(frames, start=1):
            while seq - acked > window:
                if reader.done():
                    await reader  # raises what ended it (e.g. the server closed)
                    raise RuntimeError(f"no ack for frame {seq - window} of {run}")
                room.clear()
                await room.wait()
            sent[seq] = time.perf_counter()
            await ws.send(data)
        await reader
        await ws.send(encode(Bye(run, len(frames) + 1)))
        await ws.recv()


def agent_frames(
    agents: int, n: int, histogram: bool, tag: str
) -> dict[str, list[bytes]]:
    """``n`` encoded frames for each of ``agents`` runs (encoded before timing)."""
    return {
        f"{tag}-{a}": [frame(f"{tag}-{a}", s, histogram) for s in range(1, n + 1)]
        for a in range(agents)
    }


async def throughput(
    url: str, frames: dict[str, list[bytes]], timeout: float, window: int
) -> dict[str, Any]:
    """All agents at once; frames/s and ack latency percentiles."""
    agents, n = len(frames), len(next(iter(frames.values())))
    size = statistics.mean(len(f) for fs in frames.values() for f in fs[:10])
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(
            *(agent(url, run, fs, latencies, window) for run, fs in frames.items())
        ),
        timeout,
    )
    elapsed = time.perf_counter() - start
    lat = sorted(latencies)
    return {
        "agents": agents,
        "window": window,
        "frames_per_agent": n,
        "frame_bytes": round(size),
        "seconds": round(elapsed, 3),
        "frames_per_s": round(agents * n / elapsed),
        "ack_p50_ms": round(lat[len(lat) // 2] * 1e3, 2),
        "ack_p99_ms": round(lat[int(len(lat) * 0.99)] * 1e3, 2),
        "ack_max_ms": round(lat[-1] * 1e3, 2),
    }


def export_tree(rev: str, dest: Path) -> Path:
    """Lay out the ``glasscockpit`` package of commit ``rev`` under ``dest``.

    Follows pyproject's package-dir mapping (protocol/, agent/, server/ and
    dashboard/ become sub-packages), so an older server can be served and
    measured side by side with this one.
    """
    src = dest / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", rev], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    package = dest / "tree" / "glasscockpit"
    shutil.copytree(src / "glasscockpit", package)
    for sub in ("protocol", "agent", "server", "dashboard"):
        shutil.copytree(src / sub, package / sub)
    return dest / "tree"


async def fill(url: str, run: str, steps: int, timeout: float) -> None:
    await asyncio.wait_for(
        agent(url, run, [frame(run, s, True) for s in range(1, steps + 1)], [], 256),
        timeout,
    )


def _die_with_parent() -> None:
    """In the server child: get SIGTERM when the benchmark dies (Linux).

    ``python -m bench`` kills a benchmark that overruns its time share; without
    this its server would keep running and skew every later measurement.
    """
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


@contextmanager
def server(
    tree: Path | None = None, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``glasscockpit serve`` on a free port with GLASSCOCKPIT_* overrides.

    ``tree``: serve the ``glasscockpit`` package laid out under this folder (see
    ``export_tree``) instead of the installed one.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "glasscockpit", "serve", "--port", str(port)]
    extra = {f"GLASSCOCKPIT_{k.upper()}": v for k, v in env.items()}
    if tree is not None:
        # Run from inside the tree, so its glasscockpit package is found first.
        cmd[1:3] = ["-c", "import sys; from glasscockpit.cli import main; main()"]
        extra["PYTHONPATH"] = str(tree)
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **extra},
        cwd=tree,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.1)
        yield proc, base
    finally:
        proc.terminate()
        proc.wait(10)


def memory_phase(args: argparse.Namespace) -> list[dict[str, Any]]:
    """RSS and the store's estimate as steps and runs accumulate."""
    memory: list[dict[str, Any]] = []
    with server(
        max_runs=str(args.max_runs),
        max_points=str(args.max_points),
        rate_frames_per_s="1e9",
        rate_burst="1000000000",
    ) as (proc, base):
        url = base.replace("http", "ws") + "/v1/agent"

        def sample(label: str) -> None:
            m = metrics(base)
            entry = {
                "after": label,
                "rss_mb": round(rss_bytes(proc.pid) / 2**20, 1),
                "store_estimate_mb": round(m["memory_bytes"] / 2**20, 2),
                "runs": m["runs"],
                "points": m["points"],
                "evicted": m["runs_evicted"],
            }
            memory.append(entry)
            print(json.dumps(entry), flush=True)

        sample("start")
        for target in (args.steps // 5, args.steps):
            run(fill(url, f"long-{target}", target, args.timeout))
            sample(f"+1 run of {target} steps")
        for r in range(args.runs):
            run(fill(url, f"many-{r}", args.run_steps, args.timeout))
            if r + 1 in (args.runs // 4, args.runs // 2, args.runs):
                sample(f"+{r + 1} runs of {args.run_steps} steps")
    return memory


def phase1(
    args: argparse.Namespace, servers: list[tuple[str, Path | None]]
) -> list[dict[str, Any]]:
    """Every (repeat, server, configuration): a fresh server per repeat."""
    configs = ((1, False), (args.agents, False), (args.agents, True))
    runs = []
    for repeat in range(args.repeats):
        for label, tree in servers:
            # Fresh run ids per repeat (run ids are inside the encoded frames).
            frames = {
                (agents, hist): agent_frames(
                    agents, args.frames, hist, f"r{repeat}h{int(hist)}a{agents}"
                )
                for agents, hist in configs
            }
            # Phase 1 measures the server, not the per-connection limiter.
            with server(
                tree, rate_frames_per_s="1e9", rate_burst="1000000000", max_runs="1000"
            ) as (proc, base):
                url = base.replace("http", "ws") + "/v1/agent"
                for (agents, hist), fs in frames.items():
                    server_cpu, client_cpu = cpu_seconds(proc.pid), time.process_time()
                    row = run(throughput(url, fs, args.timeout, args.window))
                    row.update(server=label, repeat=repeat, histogram=hist)
                    n = agents * args.frames
                    # CPU per frame hardly depends on what else shares the machine,
                    # unlike frames/s: it says what one core can take.
                    row["server_cpu_us_per_frame"] = round(
                        (cpu_seconds(proc.pid) - server_cpu) / n * 1e6, 1
                    )
                    row["client_cpu_us_per_frame"] = round(
                        (time.process_time() - client_cpu) / n * 1e6, 1
                    )
                    runs.append(row)
                    print(json.dumps(row), flush=True)
    return runs


MEDIAN_KEYS = (
    "seconds",
    "frames_per_s",
    "ack_p50_ms",
    "ack_p99_ms",
    "ack_max_ms",
    "server_cpu_us_per_frame",
    "client_cpu_us_per_frame",
)


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration: the median of each measure over the repeats."""
    out = []
    for agents, hist in dict.fromkeys((r["agents"], r["histogram"]) for r in runs):
        same = [r for r in runs if (r["agents"], r["histogram"]) == (agents, hist)]
        row = {k: v for k, v in same[0].items() if k not in ("repeat", "server")}
        for key in MEDIAN_KEYS:
            row[key] = round(statistics.median(r[key] for r in same), 2)
        row["frames_per_s"] = round(row["frames_per_s"])
        row["repeats"] = len(same)
        out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=32)
    parser.add_argument("--frames", type=int, default=1000, help="frames per agent")
    parser.add_argument("--window", type=int, default=32, help="unacked per agent")
    parser.add_argument("--steps", type=int, default=50_000, help="long-run steps")
    parser.add_argument("--runs", type=int, default=40, help="runs for memory")
    parser.add_argument("--run-steps", type=int, default=2000, help="steps per run")
    parser.add_argument("--max-runs", type=int, default=20)
    parser.add_argument("--max-points", type=int, default=4096)
    parser.add_argument("--timeout", type=float, default=300.0, help="cap per phase")
    parser.add_argument("--repeats", type=int, default=3, help="phase 1 repeats")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure the server of this git commit, interleaved (phase 1)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip phase 2")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "command": " ".join(["python", *sys.argv]),
    }
    servers: list[tuple[str, Path | None]] = [("this", None)]
    with tempfile.TemporaryDirectory(prefix="ingest-baseline-") as tmp:
        if args.baseline:
            try:
                servers.append((args.baseline, export_tree(args.baseline, Path(tmp))))
            except (OSError, subprocess.CalledProcessError) as exc:
                # E.g. a shallow clone: measure this server alone rather than none.
                print(f"no baseline {args.baseline}: {exc}", file=sys.stderr)
        runs = phase1(args, servers)
    results["runs"] = runs
    results["throughput"] = medians([r for r in runs if r["server"] == "this"])
    if len(servers) > 1:
        results["baseline"] = {
            "commit": args.baseline,
            "throughput": medians([r for r in runs if r["server"] != "this"]),
        }

    if not args.no_memory:
        results["memory"] = memory_phase(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
