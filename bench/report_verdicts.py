"""The issues' performance targets, each read from the rows that measure it."""

from __future__ import annotations

from typing import Any

from bench.report_render import agent_ratio


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
    real = data("real_overhead")
    if real:
        limits = {"resnet18": 4.0, "gpt2": 3.0, "vit": 3.0, "convnet": 1.5}
        for model, limit in limits.items():
            r = real.get(model)
            if r is None:
                continue
            eco = r["ratio"]["economy (every step)"]
            rest = r["ratio"]["economy without grad_hist_1d (every step)"]
            got = f"{eco:.2f}×; without `grad_hist_1d` {rest:.2f}×"
            ck = r["ratio"].get("Cockpit economy (every step)")
            if ck is not None:
                got += f"; original Cockpit {ck:.2f}× (its added cost ÷ ours: "
                got += f"{(ck - 1) / max(eco - 1, 1e-9):.1f})"
            rows.append(
                [
                    "18",
                    f"economy every step ≤ {limit:g}× plain, {model}",
                    got,
                    verdict(eco <= limit),
                ]
            )
        for model, r in real.items():
            worst = r["first_steps"]["max_after_2"]
            rows.append(
                [
                    "18",
                    f"full, default schedules: no step after the first two above "
                    f"3× plain, {model}",
                    f"{worst:.2f}× (step {r['first_steps']['worst_step']})",
                    verdict(worst <= 3.0),
                ]
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
