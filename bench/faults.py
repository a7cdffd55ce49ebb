"""Fault injection: frames acknowledged vs frames served after the server fails.

Each scenario runs ``glasscockpit serve`` with a data dir in a child process and
clients that behave like the agent (hello with a per-process instance token, then
frames pipelined in a window, cumulative acks; after a failure they reconnect,
learn from the hello's ack what the server holds and resend the rest):

* ``kill-ingest``: SIGKILL at a random moment while the clients stream, restart.
* ``kill-replay``: SIGKILL at a random moment of start-up (the replay of the
  logs), restart; repeated.
* ``disk-full``: the data dir on a small tmpfs (as root; else a file size limit,
  ``RLIMIT_FSIZE``): clients stream until refused (1013), room is made, they
  retry, then the server is restarted.
* ``torn-tail``: after a kill, half a record and random garbage are appended to
  every log (a crash mid-write), restart.

After every restart it compares, for each run, the frames the clients saw
acknowledged with what the server serves: ``lost`` (acknowledged, not served) and
``duplicated`` (served twice) must be 0, and the server must start every time.
At the end every client finishes its run, and the final state is checked again.
Usage: ``python -m bench.faults [--trials 4] [--seed 1] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from bench.ingest import SPECS, agent_frames, export_tree, free_port, throughput
from bench.ingest import server as bench_server
from glasscockpit.protocol import Bye, Hello, decode, encode

WINDOW = 64
#: The servers' stderr, kept for a failure's message.
LOGS = Path(tempfile.gettempdir()) / "glasscockpit-faults"


@dataclass
class Client:
    """One agent-like run: its frames and what it saw acknowledged."""

    run: str
    frames: list[bytes]
    instance: str = field(default_factory=lambda: os.urandom(8).hex())
    acked: int = 0  # highest cumulative ack seen
    lost_on_reconnect: int = 0  # the server held less than was acknowledged
    stored_as: str = ""
    refusals: list[int] = field(default_factory=list)  # close codes seen

    @property
    def done(self) -> bool:
        return self.acked >= len(self.frames) + 1  # frames and the bye

    async def stream(self, url: str) -> None:
        """One connection: resend what the server lacks, stream the rest."""
        hello = encode(Hello(self.run, 0, SPECS, {"instance": self.instance}))
        bye = encode(Bye(self.run, len(self.frames) + 1))
        try:
            async with connect(url, compression=None, max_size=2**22) as ws:
                await ws.send(hello)
                ack = decode(await ws.recv())  # type: ignore[arg-type]
                self.stored_as = ack.run
                if ack.seq < self.acked:
                    self.lost_on_reconnect += self.acked - ack.seq
                self.acked = ack.seq
                room = asyncio.Event()

                async def read() -> None:
                    try:
                        while not self.done:
                            a = decode(await ws.recv())  # type: ignore[arg-type]
                            self.acked = max(self.acked, a.seq)
                            room.set()
                    finally:
                        room.set()

                reader = asyncio.create_task(read())
                try:
                    todo = [*self.frames, bye][self.acked :]
                    for seq, data in enumerate(todo, start=self.acked + 1):
                        while seq - self.acked > WINDOW and not reader.done():
                            room.clear()
                            await room.wait()
                        if reader.done():
                            break
                        await ws.send(data)
                finally:
                    await asyncio.wait([reader])
                    failed = reader.exception()  # retrieved either way
                if failed is not None:
                    raise failed
        except (WebSocketException, OSError) as exc:
            rcvd = getattr(exc, "rcvd", None)
            if rcvd is not None:
                self.refusals.append(rcvd.code)


def get(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return json.loads(r.read())


class Server:
    """``glasscockpit serve`` on a data dir, killable, optionally size-limited."""

    def __init__(self, data: Path, fsize: int | None = None) -> None:
        self.data = data
        self.fsize = fsize
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"ws://127.0.0.1:{self.port}/v1/agent"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> None:
        # A fresh port each time: another process may take the old one meanwhile
        # (the clients reconnect to ``self.url``, as an agent would to a new host).
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"ws://127.0.0.1:{self.port}/v1/agent"
        self.log = LOGS / f"server-{self.port}.log"
        env = {
            **os.environ,
            "GLASSCOCKPIT_DATA_DIR": str(self.data),
            "GLASSCOCKPIT_RATE_FRAMES_PER_S": "1e9",
            "GLASSCOCKPIT_RATE_BURST": "1000000000",
        }
        cmd = [sys.executable, "-m", "glasscockpit", "serve", "--port", str(self.port)]
        limit = self.fsize

        def prepare() -> None:
            if limit is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, no signal
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        self.proc = subprocess.Popen(
            cmd,
            env=env,
            preexec_fn=prepare,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                get(self.base, "/healthz")
                return
            except OSError:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    err = self.log.read_text()
                    raise RuntimeError(
                        f"the server exited with {self.proc.returncode}: {err[-2000:]}"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def check(server: Server, clients: list[Client]) -> dict[str, int]:
    """Acknowledged vs served, per run, summed."""
    acked = served = lost = duplicated = 0
    for c in clients:
        run = c.stored_as or c.run
        want = min(c.acked, len(c.frames))  # readings acknowledged
        acked += want
        try:
            detail = get(server.base, f"/v1/runs/{run}")
            steps = get(server.base, f"/v1/runs/{run}/series/loss?max_points=100000")
        except OSError:
            lost += want  # the run is gone
            continue
        got = steps["step"]
        served += len(got)
        lost += len(set(range(want)) - set(got))
        duplicated += len(got) - len(set(got))
        duplicated += max(0, detail["frames"] - detail["last_seq"])
        lost += c.lost_on_reconnect
    return {"acked": acked, "served": served, "lost": lost, "duplicated": duplicated}


async def stream_all(server: Server, clients: list[Client]) -> None:
    await asyncio.gather(*(c.stream(server.url) for c in clients if not c.done))


def make_clients(tag: str, runs: int, frames: int) -> list[Client]:
    encoded = agent_frames(runs, frames, True, tag)
    return [Client(run, fs) for run, fs in encoded.items()]


def row(name: str, trial: int, result: dict[str, int], **extra: Any) -> dict[str, Any]:
    out = {"scenario": name, "trial": trial, **result, "started": True, **extra}
    print(json.dumps(out), flush=True)
    return out


def kill_ingest(args: argparse.Namespace, rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for trial in range(args.trials):
        with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
            server = Server(Path(tmp))
            clients = make_clients(f"ki{trial}", args.runs, args.frames)
            server.start()
            delay = rng.uniform(0.05, args.kill_within)

            async def kill_later(s: Server = server, d: float = delay) -> None:
                await asyncio.sleep(d)
                s.kill()

            async def both(s: Server = server, cs: list[Client] = clients) -> None:
                await asyncio.gather(stream_all(s, cs), kill_later())

            asyncio.run(both())
            server.start()  # same data dir, same port
            mid = check(server, clients)
            asyncio.run(stream_all(server, clients))
            final = check(server, clients)
            server.kill()
            rows.append(
                row(
                    "kill-ingest", trial, mid, kill_after_s=round(delay, 3), final=final
                )
            )
    return rows


def kill_replay(args: argparse.Namespace, rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        server = Server(Path(tmp))
        clients = make_clients("kr", args.runs, args.frames)
        server.start()
        asyncio.run(stream_all(server, clients))
        server.kill()
        t0 = time.monotonic()
        server.start()
        startup = time.monotonic() - t0
        server.kill()
        for trial in range(args.trials):
            delay = rng.uniform(0.0, startup)
            server.start(wait=False)
            time.sleep(delay)
            server.kill()
            server.start()
            result = check(server, clients)
            server.kill()
            rows.append(row("kill-replay", trial, result, kill_after_s=round(delay, 3)))
    return rows


def mount_tmpfs(path: Path, size: int) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
    )
    return done.returncode == 0


def disk_full(args: argparse.Namespace, _rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        disk = Path(tmp) / "disk"
        size = 16 * 2**20
        tmpfs = mount_tmpfs(disk, size)
        try:
            data = disk / "data"
            filler = disk / "filler"
            if tmpfs:
                filler.write_bytes(bytes(size - 2**19))  # 512 KiB left
                server = Server(data)
            else:  # RLIMIT_FSIZE: each log file may hold ~64 KiB
                server = Server(data, fsize=64 * 1024)
            clients = make_clients("df", args.runs, args.frames)
            server.start()
            asyncio.run(stream_all(server, clients))
            refused = sum(c.refusals.count(1013) for c in clients)
            full = check(server, clients)
            server.kill()
            if tmpfs:
                filler.unlink()
            server.fsize = None
            server.start()
            after = check(server, clients)
            asyncio.run(stream_all(server, clients))
            final = check(server, clients)
            server.kill()
            how = "tmpfs" if tmpfs else "RLIMIT_FSIZE"
            rows.append(row("disk-full", 0, full, how=how, refused_1013=refused))
            rows.append(row("disk-full-restart", 0, after, how=how, final=final))
        finally:
            if tmpfs:
                subprocess.run(["umount", "-l", str(disk)], check=False)
    return rows


def torn_tail(args: argparse.Namespace, rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for trial in range(args.trials):
        with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
            server = Server(Path(tmp))
            clients = make_clients(f"tt{trial}", args.runs, args.frames)
            server.start()
            asyncio.run(stream_all(server, clients))
            server.kill()
            for log in Path(tmp).glob("*.frames"):
                record = log.read_bytes()[-300:]
                cut = rng.randrange(1, len(record))
                with open(log, "ab") as f:  # a crash mid-write, then junk
                    f.write(record[:cut] + os.urandom(rng.randrange(0, 64)))
            server.start()
            result = check(server, clients)
            torn = get(server.base, "/v1/metrics")["counters"]["replay.torn_bytes"]
            server.kill()
            rows.append(row("torn-tail", trial, result, torn_bytes=torn))
    return rows


def fsync_rate(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Ingest with GLASSCOCKPIT_FSYNC off and on (group commit), same load."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="faults-tree-") as trees:
        servers: list[tuple[str, Path | None, str]] = [
            ("this", None, "false"),
            ("this", None, "true"),
        ]
        if args.baseline:
            tree = export_tree(args.baseline, Path(trees))
            servers.append((args.baseline, tree, "true"))
        for label, tree, fsync in servers:
            with tempfile.TemporaryDirectory(prefix="faults-fsync-") as tmp:
                frames = agent_frames(args.agents, 300, False, f"fs{len(rows)}")
                env = {"data_dir": tmp, "fsync": fsync, "max_runs": "1000"}
                env |= {"rate_frames_per_s": "1e9", "rate_burst": "1000000000"}
                with bench_server(tree, **env) as (_proc, base):
                    url = base.replace("http", "ws") + "/v1/agent"
                    r = asyncio.run(throughput(url, frames, 300, 32))
                r |= {"fsync": fsync, "server": label}
                print(json.dumps(r), flush=True)
                rows.append(r)
    return rows


def memory_truth() -> list[dict[str, Any]]:
    """RSS growth of the server against its own estimate (/v1/metrics)."""
    from bench.ingest import metrics, rss_bytes
    from glasscockpit.protocol import Array, Readings

    rows = []
    with tempfile.TemporaryDirectory(prefix="faults-mem-") as tmp:
        server = Server(Path(tmp))
        server.start()
        assert server.proc is not None
        base_rss = rss_bytes(server.proc.pid)
        hist = {"counts": Array("<f4", (64,), bytes(256))}
        shapes = [(50, 10), (500, 300), (200, 3000)]  # (keys, steps) per run
        for keys, steps in shapes:
            names = [f"layer{k}.weight" for k in range(keys)]
            for r in range(4):
                run = f"mem-{keys}-{steps}-{r}"
                frames = [
                    encode(
                        Readings(
                            run,
                            seq,
                            seq - 1,
                            float(seq),
                            {"g": dict.fromkeys(names, float(seq)), "h": hist},
                        )
                    )
                    for seq in range(1, steps + 1)
                ]
                asyncio.run(stream_all(server, [Client(run, frames)]))
            m = metrics(server.base)
            grown = rss_bytes(server.proc.pid) - base_rss
            entry = {
                "after": f"+4 runs of {keys} keys x {steps} steps",
                "series": m["series"],
                "rss_growth_mb": round(grown / 2**20, 1),
                "estimate_mb": round(m["memory_bytes"] / 2**20, 1),
                "estimate_over_rss": round(m["memory_bytes"] / grown, 2),
            }
            print(json.dumps(entry), flush=True)
            rows.append(entry)
        server.kill()
    return rows


SCENARIOS: dict[str, Callable[[argparse.Namespace, random.Random], list[Any]]] = {
    "kill-ingest": kill_ingest,
    "kill-replay": kill_replay,
    "disk-full": disk_full,
    "torn-tail": torn_tail,
}


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | trials | frames acked | served (of acked) | lost | duplicated |"
    )
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in dict.fromkeys(r["scenario"] for r in rows):
        same = [r for r in rows if r["scenario"] == name]
        acked = sum(r["acked"] for r in same)
        lost = sum(r["lost"] for r in same)
        dup = sum(r["duplicated"] for r in same)
        lines.append(
            f"| {name} | {len(same)} | {acked} | {acked - lost} | {lost} | {dup} |"
        )
    finals = [r["final"] for r in rows if "final" in r]
    if finals:
        acked = sum(f["acked"] for f in finals)
        lost = sum(f["lost"] for f in finals)
        dup = sum(f["duplicated"] for f in finals)
        lines.append(
            f"| after every client finished | {len(finals)} | {acked} | "
            f"{acked - lost} | {lost} | {dup} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--runs", type=int, default=4, help="clients per scenario")
    parser.add_argument("--frames", type=int, default=1500, help="frames per client")
    parser.add_argument("--kill-within", type=float, default=1.5, help="seconds")
    parser.add_argument("--agents", type=int, default=16, help="fsync phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--baseline", metavar="REV", help="also time fsync=true on this commit"
    )
    parser.add_argument(
        "--only", choices=[*SCENARIOS, "fsync", "memory"], action="append"
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    LOGS.mkdir(exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name, scenario in SCENARIOS.items():
        if not args.only or name in args.only:
            rows.extend(scenario(args, rng))
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench.faults", *sys.argv[1:]])
    }
    results["rows"] = rows
    if not args.only or "fsync" in args.only:
        results["fsync"] = fsync_rate(args)
    if not args.only or "memory" in args.only:
        results["memory"] = memory_truth()
    print(table(rows))
    for r in results.get("fsync", []):
        print(
            f"{r['server']}, fsync={r['fsync']}: {r['frames_per_s']} frames/s, ack p50 "
            f"{r['ack_p50_ms']} ms, p99 {r['ack_p99_ms']} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    bad = [r for r in rows if r["lost"] or r["duplicated"]]
    bad += [
        r
        for r in rows
        if r.get("final", {}).get("lost") or r.get("final", {}).get("duplicated")
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
