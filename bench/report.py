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
from pathlib import Path
from typing import Any

from bench.report_benches import BENCHES, ROOT, Bench
from bench.report_page import page
from bench.report_render import render_server
from bench.report_verdicts import targets

__all__ = ["BENCHES", "Bench", "main", "page", "render_server", "targets"]


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
