"""The numbers page: verdicts follow the measured values, every section renders."""

from __future__ import annotations

from typing import Any

from bench.report import BENCHES, page, render_server, targets


def agent(cnn_economy: float, mlp_mem: float) -> dict[str, Any]:
    def model(economy: float, mem: float) -> dict[str, Any]:
        return {
            "ms": {
                "plain": 10.0,
                "economy (every step)": economy * 10,
                "full (every step)": 40.0,
                "economy (default schedules)": 10.5,
                "Cockpit economy (every step)": 150.0,
            },
            "peak_rss_mib": {
                "plain": 100.0,
                "full (every step)": 100.0 + mem,
                "Cockpit full (every step)": 500.0,
            },
        }

    return {"cnn": model(cnn_economy, 10), "mlp": model(2.0, mlp_mem)}


def verdicts(res: dict[str, Any]) -> dict[str, str]:
    return {r[1]: r[3] for r in targets(res)}


def test_agent_targets_follow_the_ratios() -> None:
    met = verdicts({"agent_overhead": {"data": agent(1.5, 50)}})
    assert met["economy every step ≤ 1.6× plain, CNN"] == "**met**"
    assert met["peak memory added ≤ ¼ of Cockpit's (full), MLP"] == "**met**"
    assert met["full every step ≤ 5× plain, CNN"] == "**met**"
    missed = verdicts({"agent_overhead": {"data": agent(1.7, 150)}})
    assert missed["economy every step ≤ 1.6× plain, CNN"] == "**missed**"
    assert missed["peak memory added ≤ ¼ of Cockpit's (full), MLP"] == "**missed**"
    # No transformer in the data: said, not guessed.
    assert missed["economy every step ≤ 2.5× plain, transformer"] == "n/a"


def test_server_and_latency_targets() -> None:
    row = {
        "agents": 32,
        "histogram": False,
        "frames_per_s": 19_999,
        "ack_p99_ms": 49.9,
        "server_cpu_us_per_frame": 40.0,
    }
    lat = {"p50_ms": 300.0, "p95_ms": 1000.0}
    v = verdicts(
        {
            "ingest": {"data": {"throughput": [row]}},
            "dashboard_latency": {"data": lat},
        }
    )
    assert v["≥ 20,000 frames/s with 32 agents, one worker"] == "**missed**"
    assert v["ack p99 < 50 ms with 32 agents"] == "**met**"
    assert v["agent send → browser drawn p95 < 1 s"] == "**missed**"


def test_ingest_section_shows_the_baseline_measured_alongside() -> None:
    def row(fps: int, p99: float) -> dict[str, Any]:
        return {
            "agents": 32,
            "histogram": False,
            "frame_bytes": 300,
            "frames_per_s": fps,
            "ack_p50_ms": 1.0,
            "ack_p99_ms": p99,
            "server_cpu_us_per_frame": 30.0,
            "client_cpu_us_per_frame": 10.0,
            "repeats": 3,
        }

    text = render_server(
        {
            "throughput": [row(31_000, 44.5)],
            "baseline": {"commit": "abc1234", "throughput": [row(17_000, 90.25)]},
        }
    )
    assert "Medians of 3 repeat(s)" in text
    head, base = text.split("commit `abc1234`")
    assert "31,000" in head and "44.5" in head and "90.25" not in head
    assert "17,000" in base and "90.25" in base


def test_page_has_a_section_per_result_and_reports_failures() -> None:
    res = {
        "agent_overhead": {"command": "x", "seconds": 1.0, "data": agent(1.5, 50)},
        "transport": {"command": "y", "seconds": 1.0, "error": "timed out after 9 s"},
        "dashboard": {"command": "z", "seconds": 1.0, "data": {"long_run": {"ms": 3}}},
    }
    text = page({"CPU": "test"}, ["python -m bench"], res, 3.0)
    titles = {b.name: b.title for b in BENCHES}
    for name in res:
        assert f"## {titles[name]}" in text
    assert "Not measured in this run: timed out after 9 s" in text
    assert "long_run.ms" in text  # a benchmark without its own renderer


def test_dashboard_rows_become_targets_and_a_table() -> None:
    dash = [
        {
            "scenario": "1 run",
            "first_render_s": 2.0,
            "tick_median_ms": 90.0,
            "tick_p95_ms": 400.0,
        },
        {
            "scenario": "20 runs",
            "first_render_s": 3.0,
            "tick_median_ms": 900.0,
            "tick_p95_ms": 1500.0,
        },
    ]
    res = {"dashboard": {"command": "d", "seconds": 1.0, "data": dash}}
    v = verdicts(res)
    assert v["sub-second live updates, 1 run (tick round trip p95 < 1 s)"] == "**met**"
    assert v["sub-second live updates, 20 runs (tick round trip p95 < 1 s)"] == (
        "**missed**"
    )
    text = page({}, ["python -m bench"], res, 1.0)
    assert "| scenario | first_render_s | tick_median_ms | tick_p95_ms |" in text


def test_agent_targets_read_the_paired_ratios_where_measured() -> None:
    data = agent(1.5, 50)  # medians: 1.5× (met)
    data["cnn"]["ratio"] = {"plain": 1.0, "economy (every step)": 1.7}
    met = verdicts({"agent_overhead": {"data": data}})
    assert met["economy every step ≤ 1.6× plain, CNN"] == "**missed**"
