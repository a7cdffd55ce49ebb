"""Training step time with the transport against healthy, dead and broken servers.

Runs the same CPU training loop (MLP 784-128-64-10, batch 128, one thread,
``economy`` instruments tracked every step) once per configuration, in
interleaved rounds so machine noise hits all of them alike, and prints the
median step time of each as a ratio to the same loop with ``server=None``:

* ``plain``: no Cockpit at all;
* ``memory``: ``Cockpit(server=None)`` (the baseline: no server);
* ``live``: a real ``glasscockpit serve`` subprocess;
* ``offline``: nothing listens on the port (every frame goes to the spill file);
* ``silent``: accepts, acknowledges the hello, never acknowledges a frame;
* ``slow``: acknowledges each frame only after 20 ms (50 frames/s);
* ``stalled``: completes the handshake, then never reads a byte.

The fake servers run in their own processes, as a real server would.

Usage::

    python -m bench.transport [--steps 1500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CONFIGS = ("plain", "memory", "live", "offline", "silent", "slow", "stalled")
FAKES = ("silent", "slow", "stalled")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _fake_server(mode: str, port: int) -> None:
    """A misbehaving websocket server (runs in its own process)."""
    from websockets.sync.server import ServerConnection, serve

    from glasscockpit.protocol import Ack, Hello, decode, encode

    def handler(ws: ServerConnection) -> None:
        if mode == "stalled":
            time.sleep(3600)
            return
        for raw in ws:
            frame = decode(raw if isinstance(raw, bytes) else raw.encode())
            if isinstance(frame, Hello):
                ws.send(encode(Ack(frame.run, 0)))
            elif mode == "slow":
                time.sleep(0.02)
                ws.send(encode(Ack(frame.run, frame.seq)))

    with serve(handler, "127.0.0.1", port, compression=None) as server:
        print("ready", flush=True)
        server.serve_forever()


def _wait_port(port: int, proc: subprocess.Popen[bytes], path: str = "") -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server process exited")
        try:
            if path:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2)
            else:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def _start(config: str, port: int) -> subprocess.Popen[bytes] | None:
    if config == "live":
        cmd = [sys.executable, "-m", "glasscockpit", "serve", "--port", str(port)]
        health = "/healthz"
    elif config in FAKES:
        cmd = [sys.executable, "-m", "bench.transport", "--fake", config]
        cmd += ["--port", str(port)]
        health = ""
    else:
        return None
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port, proc, health)
    return proc


def _run(config: str, steps: int, warmup: int) -> dict[str, Any]:
    import torch
    from torch import nn

    from glasscockpit.agent import Cockpit

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    port = _free_port()
    proc = _start(config, port)
    cockpit = None
    if config != "plain":
        server = None if config == "memory" else f"ws://127.0.0.1:{port}"
        cockpit = Cockpit(
            model,
            opt,
            run=f"bench-{config}-{os.getpid()}-{time.monotonic_ns()}",
            server=server,
            close_timeout=2.0,
            budget=None,  # economy's fixed cadences: the same frames in every row
        )
    times: list[float] = []
    try:
        for step in range(warmup + steps):
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            if cockpit is None:
                loss.backward()
            else:
                with cockpit.step(step, loss=loss):
                    loss.backward()
            opt.step()
            if step >= warmup:
                times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        if cockpit is not None:
            cockpit.close()
        close_s = time.perf_counter() - t0
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
    stats = dict(vars(cockpit.stats)) if cockpit is not None else {}
    return {
        "median_ms": 1e3 * statistics.median(times),
        "p99_ms": 1e3 * sorted(times)[int(0.99 * (len(times) - 1))],
        "close_s": close_s,
        "stats": stats,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--fake", choices=FAKES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fake:
        _fake_server(args.fake, args.port)
        return 0

    import torch

    torch.set_num_threads(1)
    configs = [c for c in args.configs.split(",") if c]
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GLASSCOCKPIT_SPILL_DIR"] = tmp
        for r in range(args.rounds):
            for config in configs:
                res = _run(config, args.steps, args.warmup)
                results[config].append(res)
                print(
                    f"round {r + 1} {config:8s} median {res['median_ms']:.3f} ms "
                    f"close {res['close_s']:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
    base = statistics.median(r["median_ms"] for r in results.get("memory", []) or [])
    print(
        f"\n{'config':8s} {'median ms':>10s} {'ratio':>7s} {'p99 ms':>8s} "
        f"{'close s':>8s}  counters (last round)"
    )
    summary = {}
    for config, runs in results.items():
        med = statistics.median(r["median_ms"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        close = max(r["close_s"] for r in runs)
        s = runs[-1]["stats"]
        counters = (
            " ".join(
                f"{k}={s[k]}"
                for k in ("state", "sent", "acked", "spilled", "dropped", "pending")
            )
            if s
            else ""
        )
        print(
            f"{config:8s} {med:10.3f} {med / base:7.3f} {p99:8.3f} {close:8.2f}  "
            f"{counters}"
        )
        summary[config] = {
            "median_ms": med,
            "ratio": med / base,
            "p99_ms": p99,
            "close_s": close,
        }
    if args.json:
        args.json.write_text(json.dumps({"results": results, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
