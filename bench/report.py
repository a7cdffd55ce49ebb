"""``python -m bench``: every benchmark within a time budget → docs/benchmarks.md.

Each benchmark runs as its own subprocess (``python -m bench.<name> ... --json F``)
with a hard timeout; their JSON results become one page with the machine, the
versions, the exact command, a section per benchmark and the table of the issues'
performance targets (met / missed). The PNGs of the scaling study go to docs/img/.

    python -m bench                  # everything, ~15 min on 2 cores
    python -m bench --quick          # fewer repeats and points, ~3-4 min
    python -m bench --only scaling,dashboard_latency --out /tmp/b.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASE_CFG = {"batch": 128, "width": 128, "layers": 2}  # bench.scaling.BASE


@dataclass
class Bench:
    """One benchmark: module, arguments (full / quick), share of the budget."""

    name: str
    title: str
    full: list[str]
    quick: list[str]
    share: float
    doc: str = ""
    json_flag: str = "--json"
    extra: list[str] = field(default_factory=list)


BENCHES = [
    Bench(
        "agent_overhead",
        "Agent overhead per configuration and per instrument (issues 3 and 7)",
        ["--models", "mlp,cnn,transformer", "--memory", "--repeats", "5"],
        ["--models", "mlp,cnn,transformer", "--repeats", "1", "--block-s", "0.05"],
        0.6,
        "benchmarks-agent.md",
    ),
    Bench(
        "transport",
        "Transport: step time against healthy, dead and broken servers (issue 4)",
        ["--rounds", "3"],
        ["--rounds", "1", "--steps", "300", "--warmup", "50"],
        0.25,
        "benchmarks-transport.md",
    ),
    Bench(
        "ingest",
        "Server: ingest throughput, ack latency, memory (issue 5)",
        # 0e328c1: the server before the ingest fast paths, measured alongside.
        ["--baseline", "0e328c1"],
        ["--frames", "200", "--no-memory", "--repeats", "1"],
        0.12,
        "benchmarks-server.md",
    ),
    Bench(
        "dashboard_latency",
        "Agent send → browser drawn (issue 6)",
        ["--steps", "300"],
        ["--steps", "120", "--warmup", "20"],
        0.05,
    ),
    Bench(
        "dashboard",
        "Dashboard responsiveness: a long run and 20 runs (issue 6)",
        ["--steps", "1000000", "--runs", "20"],
        [
            "--steps",
            "100000",
            "--runs",
            "5",
            "--run-steps",
            "2000",
            "--seconds",
            "5",
            "--iters",
            "5",
        ],
        0.15,
        "benchmarks-dashboard.md",
        json_flag="",  # prints its JSON last on stdout
    ),
    Bench(
        "scaling",
        "Scaling study: agent cost vs batch, width, depth; server memory",
        ["--plots", "docs/img"],
        [
            "--quick",
            "--repeats",
            "1",
            "--max-steps",
            "10000",
            "--max-runs",
            "8",
            "--run-steps",
            "500",
            "--plots",
            "docs/img",
        ],
        0.2,
    ),
]


def sh(cmd: list[str]) -> str:
    """Output of a command, or "" when it fails."""
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def commit() -> str:
    """The checked-out commit, and whether tracked files differ from it."""
    dirty = sh(["git", "status", "--porcelain", "--untracked-files=no"])
    return sh(["git", "rev-parse", "--short", "HEAD"]) + (
        " (modified)" if dirty else ""
    )


def machine() -> dict[str, str]:
    """CPU model, cores, memory, load, versions, commit."""
    cpu = ""
    mem = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    import torch

    try:
        from importlib.metadata import version

        cockpit = version("cockpit-for-pytorch")
    except Exception:  # noqa: BLE001 - optional extra
        cockpit = "not installed"
    return {
        "CPU": cpu or platform.processor(),
        "cores": str(os.cpu_count()),
        "memory": mem,
        "load average at start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cockpit-for-pytorch": cockpit,
        "glasscockpit commit": commit(),
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def run_one(b: Bench, quick: bool, budget_s: float, out: Path) -> dict[str, Any]:
    """Run one benchmark subprocess; its JSON, or why there is none."""
    path = out / f"{b.name}.json"
    args = b.quick if quick else b.full
    cmd = [sys.executable, "-m", f"bench.{b.name}", *args]
    shown = "python -m " + " ".join(shlex.quote(a) for a in cmd[2:])
    if b.json_flag:
        cmd += [b.json_flag, str(path)]
    timeout = max(60.0, b.share * budget_s * 1.5)
    t0 = time.monotonic()
    print(f"[bench] {shown} (cap {timeout:.0f} s)", file=sys.stderr, flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, timeout=timeout, capture_output=True, text=True
        )
        error = "" if proc.returncode == 0 else proc.stderr[-1500:]
        if not error and not b.json_flag:
            data = trailing_json(proc.stdout)
            if data is not None:
                path.write_text(json.dumps(data))
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout:.0f} s (budget share)"
    seconds = time.monotonic() - t0
    result: dict[str, Any] = {"command": shown, "seconds": seconds, "error": error}
    if not error and path.exists():
        result["data"] = json.loads(path.read_text())
    elif not error:
        result["error"] = "no JSON written"
    print(f"[bench] {b.name}: {seconds:.0f} s {error[:200]}", file=sys.stderr)
    return result


def trailing_json(text: str) -> Any:
    """The JSON document that ends ``text`` (it starts a line), or None."""
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
    for i in starts:
        if text[i : i + 1] in ("[", "{"):
            try:
                return json.loads(text[i:])
            except ValueError:
                continue
    return None


# ---------------------------------------------------------------- rendering


def table(head: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def f2(x: float) -> str:
    """Two decimals."""
    return f"{x:.2f}"


def agent_ratio(res: dict[str, Any], label: str) -> float:
    """A row's ratio to the plain step: paired (``interleave``) where measured."""
    paired = res.get("ratio", {})
    if label in paired:
        return float(paired[label])
    return float(res["ms"][label] / res["ms"]["plain"])


def render_agent(d: dict[str, Any]) -> str:
    """One table per model: ms/step, × plain, memory, failed instruments."""
    parts = []
    for model, res in d.items():
        if not isinstance(res, dict) or "ms" not in res:
            continue
        ms, mem = res["ms"], res.get("peak_rss_mib", {})
        off = res.get("disabled", {})
        rows = []
        for label, v in ms.items():
            extra = ""
            if label in mem and "plain" in mem:
                extra = f"{mem[label] - mem['plain']:+.0f}"
            failed = ", ".join(sorted(off.get(label, {})))
            rows.append([label, f2(v), f2(agent_ratio(res, label)), extra, failed])
        head = [
            "configuration",
            "ms/step",
            "× plain",
            "peak RSS − plain, MiB",
            "failed (cost not included)",
        ]
        why = sorted(
            {m.splitlines()[0][:160] for x in off.values() for m in x.values()}
        )
        text = f"**{model}**\n\n" + table(head, rows)
        if why:
            text += "\n\nWhy instruments failed here: " + "; ".join(
                f"`{w}`" for w in why
            )
        parts.append(text)
    return "\n\n".join(parts)


def render_transport(d: dict[str, Any]) -> str:
    """Median step ms and ratio to ``server=None`` per configuration."""
    rows = [
        [
            c,
            f"{s['median_ms']:.3f}",
            f2(s["ratio"]),
            f"{s['p99_ms']:.1f}",
            f2(s["close_s"]),
        ]
        for c, s in d["summary"].items()
    ]
    return table(
        [
            "configuration",
            "median ms/step",
            "× memory (server=None)",
            "p99 ms",
            "close s",
        ],
        rows,
    )


def _ingest_table(rows: list[dict[str, Any]]) -> str:
    return table(
        [
            "agents",
            "histogram",
            "frame B",
            "frames/s",
            "ack p50 ms",
            "ack p99 ms",
            "server CPU µs/frame",
            "client CPU µs/frame",
        ],
        [
            [
                r["agents"],
                "yes" if r["histogram"] else "no",
                r["frame_bytes"],
                f"{r['frames_per_s']:,}",
                r["ack_p50_ms"],
                r["ack_p99_ms"],
                r["server_cpu_us_per_frame"],
                r.get("client_cpu_us_per_frame", ""),
            ]
            for r in rows
        ],
    )


def render_server(d: dict[str, Any]) -> str:
    """Throughput rows (and a baseline's), then the memory samples."""
    rows = d["throughput"]
    repeats = rows[0].get("repeats", 1) if rows else 0
    out = f"Medians of {repeats} repeat(s), a fresh server each.\n\n"
    out += _ingest_table(rows)
    base = d.get("baseline")
    if base:
        out += (
            f"\n\nBaseline: the server of commit `{base['commit']}`, measured in the "
            "same run, its repeats interleaved with the ones above:\n\n"
            + _ingest_table(base["throughput"])
        )
    if d.get("memory"):
        out += "\n\nMemory (default `max_runs` 20, `max_points` 4096):\n\n" + table(
            ["after", "RSS MiB", "store estimate MiB", "runs", "points", "evicted"],
            [
                [
                    m["after"],
                    m["rss_mb"],
                    m["store_estimate_mb"],
                    m["runs"],
                    m["points"],
                    m["evicted"],
                ]
                for m in d["memory"]
            ],
        )
    return out


def render_latency(d: dict[str, Any]) -> str:
    """p50/p95 of the browser latency."""
    return table(
        [
            "steps",
            "s between steps",
            "measured",
            "missing",
            "p50 ms",
            "p95 ms",
            "max ms",
        ],
        [
            [
                d["steps"],
                d["interval_s"],
                d["measured"],
                d["missing"],
                f"{d['p50_ms']:.0f}",
                f"{d['p95_ms']:.0f}",
                f"{d['max_ms']:.0f}",
            ]
        ],
    )


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict):
        out = []
        for k, v in d.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(d, list) and d and isinstance(d[0], dict):
        out = []
        for i, v in enumerate(d):
            out += _flatten(v, f"{prefix}[{i}]")
        return out
    return [(prefix, d)]


def render_generic(d: dict[str, Any]) -> str:
    """Any JSON as a key/value table (benchmarks without their own renderer)."""
    rows = [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in _flatten(d)]
    return table(["key", "value"], rows[:200])


def render_rows(d: Any) -> str:
    """A list of flat dicts as one table (columns: the first row's keys)."""
    if not (isinstance(d, list) and d and isinstance(d[0], dict)):
        return render_generic(d)
    keys = list(d[0])
    rows = [
        [f"{r.get(k):.3g}" if isinstance(r.get(k), float) else r.get(k) for k in keys]
        for r in d
    ]
    return table(keys, rows)


def explain_agent(rows: list[dict[str, Any]]) -> str:
    """What the agent curves show, with this run's numbers."""

    def span(axis: str, preset: str) -> str:
        sel = [r for r in rows if r["axis"] == axis]
        lo, hi = sel[0], sel[-1]
        return (
            f"{lo['ratio'][preset]:.0f}× at {lo['value']} → "
            f"{hi['ratio'][preset]:.0f}× at {hi['value']}"
        )

    base = [r["ratio"]["full"] for r in rows if r["value"] == BASE_CFG[r["axis"]]]
    return (
        "**What the curves show.** Economy tracked every step is dominated by "
        "`grad_hist_1d`, which bins all B·D per-sample gradient elements (the "
        'agent-overhead table\'s "economy without grad_hist_1d" row is the rest). '
        "That work grows like B·D, as the plain step's matrix products do, but runs "
        "as element-wise passes at memory speed rather than at BLAS speed; small "
        "plain steps are dominated by fixed per-step Python and dispatch cost, so "
        "the ratio rises with batch size "
        f"({span('batch', 'economy')}) and with width "
        f"({span('width', 'economy')}) and levels off. Adding hidden layers of "
        "width 128 adds little to B·D next to the 784×128 input layer, so the "
        f"ratio stays flat or falls with depth ({span('layers', 'economy')}). "
        "Full adds the curvature passes (one backward per class for the GGN "
        "diagonal, Hessian-vector products for trace and top eigenvalue) and the "
        "2-D histogram, whose cost grows with the parameter count: "
        f"{span('width', 'full')} as the width grows; with batch "
        f"{span('batch', 'full')}; with depth {span('layers', 'full')}. The base "
        "configuration (batch 128, width 128, 2 layers) appears once per axis: "
        f"its full ratio read {min(base):.0f}–{max(base):.0f}× across the sweep, "
        "which is this box's noise on these curves."
    )


def explain_server(srv: dict[str, list[dict[str, Any]]], run_steps: int) -> str:
    """What the server curves show, with this run's numbers."""
    s, r = srv["steps"], srv["runs"]
    per_run = (r[-1]["rss_mb"] - r[0]["rss_mb"]) / max(1, r[-1]["runs"])
    per_run_store = r[-1]["store_estimate_mb"] / max(1, r[-1]["runs"])
    return (
        "**What the curves show.** One run's memory is bounded: the store "
        "downsamples every series to `max_points`, so the store's estimate stops "
        f"growing after a few thousand steps ({s[-1]['store_estimate_mb']:.1f} MiB "
        f"at {s[-1]['steps']:,} steps) and the RSS stays at "
        f"{s[-1]['rss_mb']:.0f} MiB (an idle server: {s[0]['rss_mb']:.0f} MiB). "
        f"Runs add memory linearly: about {per_run:.1f} MiB of RSS "
        f"({per_run_store:.2f} MiB in the store) per run of {run_steps:,} steps; "
        "this sweep raises `max_runs` above the number of runs to show the slope. "
        "With the default `max_runs` (20) the oldest finished runs are evicted and "
        "the total stays bounded (see the server section's memory table)."
    )


def render_scaling(d: dict[str, Any]) -> str:
    """The sweep table, the server table, the plots and what they show."""
    rows = [
        [
            r["axis"],
            r["batch"],
            r["width"],
            r["layers"],
            f"{r['params']:,}",
            f2(r["ms"]["plain"]),
            f2(r["ratio"]["economy"]),
            f2(r["ratio"]["full"]),
        ]
        for r in d["agent"]
    ]
    out = table(
        [
            "varied",
            "batch",
            "width",
            "layers",
            "parameters",
            "plain ms",
            "economy ×",
            "full ×",
        ],
        rows,
    )
    if "scaling-agent.png" in d.get("plots", []):
        out += "\n\n![agent cost vs batch, parameters, layers](img/scaling-agent.png)"
    out += "\n\n" + explain_agent(d["agent"])
    srv = d.get("server")
    if srv:
        out += "\n\nServer memory as one run grows:\n\n" + table(
            ["steps", "RSS MiB", "store estimate MiB", "points"],
            [
                [
                    f"{r['steps']:,}",
                    f"{r['rss_mb']:.0f}",
                    f"{r['store_estimate_mb']:.1f}",
                    r["points"],
                ]
                for r in srv["steps"]
            ],
        )
        out += f"\n\nServer memory as runs of {d['run_steps']} steps are added:\n\n"
        out += table(
            ["runs", "RSS MiB", "store estimate MiB", "points"],
            [
                [
                    r["runs"],
                    f"{r['rss_mb']:.0f}",
                    f"{r['store_estimate_mb']:.1f}",
                    r["points"],
                ]
                for r in srv["runs"]
            ],
        )
        if "scaling-server.png" in d.get("plots", []):
            out += "\n\n![server memory vs steps and runs](img/scaling-server.png)"
        out += "\n\n" + explain_server(srv, d["run_steps"])
    return out


RENDER: dict[str, Callable[[dict[str, Any]], str]] = {
    "agent_overhead": render_agent,
    "transport": render_transport,
    "ingest": render_server,
    "dashboard_latency": render_latency,
    "scaling": render_scaling,
    "dashboard": render_rows,
}


def targets(res: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Rows: issue, target, measured, met?, from which benchmark."""
    rows: list[list[str]] = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("**met**" if ok else "**missed**")

    def data(name: str) -> dict[str, Any] | None:
        r = res.get(name)
        return r.get("data") if r else None

    a = data("agent_overhead")
    if a:

        def ratio(model: str, label: str) -> float | None:
            res = a.get(model, {})
            return agent_ratio(res, label) if label in res.get("ms", {}) else None

        def row(issue: str, what: str, model: str, label: str, limit: float) -> None:
            r = ratio(model, label)
            ck = ratio(model, "Cockpit " + label)
            got = "not measured" if r is None else f"{r:.2f}×"
            if ck is not None:
                got += f" (original Cockpit {ck:.2f}×)"
            rest = ratio(model, "economy without grad_hist_1d (every step)")
            if label == "economy (every step)" and rest is not None:
                got += f"; without `grad_hist_1d` {rest:.2f}×"
            rows.append([issue, what, got, verdict(None if r is None else r <= limit)])

        row(
            "3",
            "economy every step ≤ 1.6× plain, CNN",
            "cnn",
            "economy (every step)",
            1.6,
        )
        row(
            "3",
            "economy every step ≤ 15× plain, MLP",
            "mlp",
            "economy (every step)",
            15,
        )
        row("3", "full every step ≤ 5× plain, CNN", "cnn", "full (every step)", 5)
        for model in ("mlp", "cnn"):
            row(
                "3",
                f"economy, default schedules ≤ 1.10× plain, {model.upper()}",
                model,
                "economy (default schedules)",
                1.10,
            )
        for model in ("mlp", "cnn"):
            mem = a.get(model, {}).get("peak_rss_mib", {})
            need = ("plain", "full (every step)", "Cockpit full (every step)")
            if all(k in mem for k in need):
                ours = mem["full (every step)"] - mem["plain"]
                theirs = mem["Cockpit full (every step)"] - mem["plain"]
                rows.append(
                    [
                        "3",
                        f"peak memory added ≤ ¼ of Cockpit's (full), {model.upper()}",
                        f"{ours:+.0f} MiB vs Cockpit {theirs:+.0f} MiB",
                        verdict(ours <= theirs / 4),
                    ]
                )
        row(
            "7",
            "economy every step ≤ 2.5× plain, transformer",
            "transformer",
            "economy (every step)",
            2.5,
        )
    t = data("transport")
    if t:
        for c in ("live", "offline", "silent", "slow", "stalled"):
            s = t["summary"].get(c)
            if s:
                rows.append(
                    [
                        "4",
                        f"step time unaffected, server {c} (≤ 1.10× `server=None`, "
                        "this box's noise band)",
                        f"{s['ratio']:.2f}×",
                        verdict(s["ratio"] <= 1.10),
                    ]
                )
    s = data("ingest")
    if s:
        for r in s["throughput"]:
            if r["agents"] == 32 and not r["histogram"]:
                rows.append(
                    [
                        "5",
                        "≥ 20,000 frames/s with 32 agents, one worker",
                        f"{r['frames_per_s']:,} frames/s, clients on the same 2 "
                        f"cores (server CPU {r['server_cpu_us_per_frame']} µs/frame:"
                        f" {1e6 / r['server_cpu_us_per_frame']:,.0f} frames/s per "
                        "core)",
                        verdict(r["frames_per_s"] >= 20_000),
                    ]
                )
                rows.append(
                    [
                        "5",
                        "ack p99 < 50 ms with 32 agents",
                        f"{r['ack_p99_ms']} ms",
                        verdict(r["ack_p99_ms"] < 50),
                    ]
                )
    lat = data("dashboard_latency")
    if lat:
        rows.append(
            [
                "6",
                "agent send → browser drawn p95 < 1 s",
                f"p95 {lat['p95_ms']:.0f} ms (p50 {lat['p50_ms']:.0f} ms)",
                verdict(lat["p95_ms"] < 1000),
            ]
        )
    dash = data("dashboard")
    if isinstance(dash, list):
        # The issue asks for sub-second live updates and a responsive page with
        # no number for the latter: the update round trip's p95 is held to 1 s.
        for r in dash:
            if isinstance(r, dict) and "tick_p95_ms" in r:
                rows.append(
                    [
                        "6",
                        f"sub-second live updates, {r.get('scenario', '?')} "
                        "(tick round trip p95 < 1 s)",
                        f"p95 {r['tick_p95_ms']:.0f} ms (median "
                        f"{r.get('tick_median_ms', float('nan')):.0f} ms), first "
                        f"render {r.get('first_render_s', float('nan')):.1f} s",
                        verdict(r["tick_p95_ms"] < 1000),
                    ]
                )
    elif "dashboard" in res:
        rows.append(
            ["6", "a 1M-step run and 20 runs stay responsive", "not measured", "n/a"]
        )
    return rows


def page(
    info: dict[str, str],
    commands: list[str],
    res: dict[str, dict[str, Any]],
    total_s: float,
) -> str:
    """The whole docs/benchmarks.md."""
    parts = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench` (`bench/report.py`); do not edit by hand. "
        "Every number below comes from the command(s) below, on the machine below "
        "(where several are listed, each measured the sections that name it, into "
        "one results folder). The box is a 2-core VM **shared with other "
        "sessions**: absolute times move by up to 2× between runs; ratios measured "
        "side by side in the same process (interleaved repeats, medians) are what "
        "to compare, and ratios within ~10 % of each other are within noise.",
        "",
        "```sh",
        *commands,
        "```",
        "",
        f"Total wall-clock: {total_s / 60:.1f} min.",
        "",
        table(["", ""], [[k, v] for k, v in info.items()]),
        "",
        "## Targets of the issues",
        "",
        table(["issue", "target", "measured", "verdict"], targets(res)),
    ]
    for b in BENCHES:
        if b.name not in res:
            continue
        r = res[b.name]
        when = f", finished {r['finished']}" if r.get("finished") else ""
        when += f", commit {r['commit']}" if r.get("commit") else ""
        parts += [
            "",
            f"## {b.title}",
            "",
            f"`{r['command']}` ({r['seconds']:.0f} s{when})",
        ]
        if b.doc and (ROOT / "docs" / b.doc).exists():
            parts += ["", f"Method and discussion: [{b.doc}]({b.doc})."]
        if r.get("error"):
            parts += [
                "",
                "Not measured in this run: " + r["error"].strip().splitlines()[-1],
            ]
            continue
        render = RENDER.get(b.name, render_generic)
        try:
            body = render(r["data"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            body = f"(could not render: {e!r})\n\n" + render_generic(r["data"])
        parts += ["", body]
        note = NOTES.get(b.name)
        if note:
            parts += ["", note]
    if (ROOT / "docs" / "benchmarks-gpu.md").exists():
        parts += [
            "",
            "## On a GPU",
            "",
            "The agent's overhead and host-device syncs on an NVIDIA H200, measured "
            "there by hand (the machines running the commands above have no GPU): "
            "[benchmarks-gpu.md](benchmarks-gpu.md).",
        ]
    return "\n".join(parts) + "\n"


NOTES = {
    "agent_overhead": (
        "Rows are interleaved round-robin; each repeat times a block of ≥ 0.1 s (at "
        "least one step) after one untimed step of that row (the row before may "
        "have evicted caches and returned memory to the system). ms/step: medians "
        "of the per-block means. × plain: every row's block sits between two plain "
        "blocks, and the ratio is the median over repeats of the row's time over "
        "the mean of its two neighbours (the machine's speed drifts by tens of "
        "percent within minutes; neighbours share the drift). Every row, plain "
        "included, "
        "computes the loss as the README's attach snippet does (per-sample "
        "cross-entropies, then their mean), so rows differ only by the agent. "
        '"(default schedules)" rows '
        "start at step 1000 after 500 untimed steps, where log-spaced cadences and "
        "the overhead budget (5 % of the plain step, `agent/budget.py`) are in "
        "their steady state. Peak "
        "RSS is that of a fresh process running three steps of the row. The original "
        "Cockpit runs in the same process (the `parity` extra); it has no transformer "
        "support (BackPACK skips attention and LayerNorm)."
    ),
    "dashboard_latency": (
        "A real `glasscockpit serve` subprocess, headless Debian Chromium (Playwright) "
        "on the dashboard, and a training loop tracking `loss` every step "
        "(`bench/dashboard_latency.py`). Sent = wall clock right after the step's "
        "`cockpit.step` block; drawn = first time a 5 ms poll in the page finds the "
        "step in the loss panel's Plotly data. Steps already drawn when the poll "
        "started are left out."
    ),
    "scaling": "",
}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, write the page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~3-4 min instead of ~15")
    parser.add_argument("--budget-min", type=float, default=15.0)
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--results", type=Path, help="keep the JSON results here")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --results: keep the earlier results in that folder for the "
        "benchmarks not run now (e.g. with --only)",
    )
    parser.add_argument(
        "--render", action="store_true", help="run nothing; rewrite the page (--reuse)"
    )
    args = parser.parse_args(argv)
    budget_s = (4.0 if args.quick and args.budget_min == 15.0 else args.budget_min) * 60
    command = "python -m bench" + "".join(
        " " + shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    only = set(args.only.split(",")) if args.only else None
    if args.render:
        only, args.reuse = set(), True
    out_dir = args.results or Path(tempfile.mkdtemp(prefix="bench-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = out_dir / "run.json"
    run: dict[str, Any] = {"info": machine(), "commands": [], "total_s": 0.0}
    if args.reuse and saved.exists():
        run = json.loads(saved.read_text())
    res: dict[str, dict[str, Any]] = run.setdefault("results", {})
    t0 = time.monotonic()
    ran = False
    for b in BENCHES:
        if only is not None and b.name not in only:
            continue
        if not (ROOT / "bench" / f"{b.name}.py").exists():
            continue
        ran = True
        if time.monotonic() - t0 > budget_s * 1.3:
            res[b.name] = {
                "command": "",
                "seconds": 0.0,
                "error": "skipped: the time budget was spent",
            }
            continue
        res[b.name] = run_one(b, args.quick, budget_s, out_dir)
        res[b.name]["finished"] = time.strftime("%H:%M UTC", time.gmtime())
        res[b.name]["commit"] = commit()
    if ran:
        run["info"]["glasscockpit commit"] = ", ".join(
            sorted({r["commit"] for r in res.values() if r.get("commit")})
        )
        run["commands"].append(command)
        run["total_s"] += time.monotonic() - t0
        run["info"]["load average at end"] = " ".join(
            f"{x:.1f}" for x in os.getloadavg()
        )
    saved.write_text(json.dumps(run))
    args.out.write_text(page(run["info"], run["commands"], res, run["total_s"]))
    print(f"[bench] wrote {args.out} ({run['total_s'] / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
