"""Plain-dict views of stored runs, shared by the REST API and the dashboard."""

from __future__ import annotations

import csv
import dataclasses
import io
from typing import Any

import numpy as np

from glasscockpit.server.errors import UnknownInstrument, UnknownRun
from glasscockpit.server.jsonsafe import safe_list
from glasscockpit.server.store import TOTAL, Histogram, Run, RunStore


def find_run(store: RunStore, run_id: str) -> Run:
    """The run, or ``UnknownRun``."""
    run = store.get(run_id)
    if run is None:
        raise UnknownRun(f"No run {run_id!r} is stored")
    return run


def run_summary(store: RunStore, run: Run, stale_after_s: float) -> dict[str, Any]:
    """Id, status and progress of one run."""
    return {
        "run": run.run_id,
        "status": store.status(run, stale_after_s),
        "last_step": run.last_step,
        "frames": run.frames,
        "last_seq": run.last_seq,
        "created": run.created,
        "last_frame_time": run.last_frame_time,
        "connected": run.connected,
        "nonfinite": run.nonfinite,
    }


def list_runs(store: RunStore, stale_after_s: float) -> list[dict[str, Any]]:
    """All runs, newest first."""
    with store.lock:
        runs = sorted(store.runs.values(), key=lambda r: r.created, reverse=True)
        return [run_summary(store, r, stale_after_s) for r in runs]


def run_detail(store: RunStore, run_id: str, stale_after_s: float) -> dict[str, Any]:
    """Summary plus metadata, instrument descriptions (with series keys) and errors."""
    with store.lock:
        run = find_run(store, run_id)
        return {
            **run_summary(store, run, stale_after_s),
            "meta": run.meta,
            "instruments": [
                {
                    "name": s.name,
                    "kind": s.kind.value,
                    "schedule": s.schedule,
                    "panel": {
                        "title": s.panel.title,
                        "y_label": s.panel.y_label,
                        "log_y": s.panel.log_y,
                        "group": s.panel.group,
                        "help": s.panel.help,
                    },
                    "keys": run.keys(s.name),
                }
                for s in run.instruments.values()
            ],
            "errors": dict(run.errors),
        }


def series_view(
    store: RunStore,
    run_id: str,
    name: str,
    key: str = TOTAL,
    max_points: int | None = 2000,
    after_step: int | None = None,
) -> dict[str, Any]:
    """One series, downsampled; NaN/Inf as strings (JSON-safe)."""
    with store.lock:
        run = find_run(store, run_id)
        series = run.series.get((name, key))
        if series is None:
            raise UnknownInstrument(
                f"Run {run_id!r} has no series {name!r} with key {key!r}"
            )
        view = series.view(max_points, after_step)
        count = series.count
    return {
        "run": run_id,
        "name": name,
        "key": key,
        "count": count,
        "step": view.step,
        "wall_time": view.wall_time,
        "value": safe_list(view.value),
        "min": safe_list(view.min),
        "max": safe_list(view.max),
        "nonfinite": view.nonfinite,
    }


def histograms_view(
    store: RunStore, run_id: str, name: str, last: int = 1
) -> dict[str, Any]:
    """The ``last`` histogram snapshots of one instrument."""
    with store.lock:
        run = find_run(store, run_id)
        hist = run.histograms.get(name)
        if hist is None:
            raise UnknownInstrument(f"Run {run_id!r} has no histogram {name!r}")
        items = hist.last(last)
        count = hist.count
    # errstate: a signalling NaN in a float32 array warns when widened to float64.
    with np.errstate(invalid="ignore"):
        return _snapshots(run_id, name, count, items)


def _snapshots(
    run_id: str, name: str, count: int, items: list[Histogram]
) -> dict[str, Any]:
    return {
        "run": run_id,
        "name": name,
        "count": count,
        "snapshots": [
            {
                "step": h.step,
                "wall_time": h.wall_time,
                "arrays": {
                    k: safe_list(a.astype(float).ravel().tolist())
                    for k, a in h.arrays.items()
                },
                "shapes": {k: list(a.shape) for k, a in h.arrays.items()},
            }
            for h in items
        ],
    }


def layers_view(
    store: RunStore, run_id: str, name: str, max_points: int | None = 2000
) -> dict[str, Any]:
    """Every key's series of one instrument (per-layer instruments have many)."""
    with store.lock:
        run = find_run(store, run_id)
        keys = run.keys(name)
        if not keys:
            raise UnknownInstrument(f"Run {run_id!r} has no series {name!r}")
        return {
            "run": run_id,
            "name": name,
            "keys": keys,
            "series": {
                k: series_view(store, run_id, name, k, max_points) for k in keys
            },
        }


def export_json(store: RunStore, run_id: str, stale_after_s: float) -> dict[str, Any]:
    """Everything stored about a run, at full stored resolution."""
    with store.lock:
        run = find_run(store, run_id)
        return {
            "run": run_detail(store, run_id, stale_after_s),
            "series": [
                series_view(store, run_id, n, k, None) for (n, k) in list(run.series)
            ],
            "histograms": [
                histograms_view(store, run_id, n, len(h))
                for n, h in run.histograms.items()
            ],
        }


CSV_COLUMNS = (
    "instrument",
    "key",
    "step",
    "wall_time",
    "value",
    "min",
    "max",
    "nonfinite",
)


def export_csv(store: RunStore, run_id: str) -> str:
    """Every series as CSV rows, one per stored bucket (NaN/Inf spelled out)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    with store.lock:
        run = find_run(store, run_id)
        for (name, key), series in run.series.items():
            v = series.view()
            for row in zip(
                v.step,
                v.wall_time,
                safe_list(v.value),
                safe_list(v.min),
                safe_list(v.max),
                v.nonfinite,
                strict=True,
            ):
                writer.writerow((name, key, *row))
    return out.getvalue()


def metrics_view(
    store: RunStore, counters: dict[str, int], stale_after_s: float
) -> dict[str, Any]:
    """Counters, runs by status, series, points and estimated memory."""
    with store.lock:
        by_status: dict[str, int] = {}
        for run in store.runs.values():
            status = store.status(run, stale_after_s)
            by_status[status] = by_status.get(status, 0) + 1
        return {
            "counters": dict(counters),
            "runs": len(store.runs),
            "runs_by_status": by_status,
            "series": sum(len(r.series) for r in store.runs.values()),
            "points": store.points(),
            "memory_bytes": store.nbytes(),
            "runs_evicted": store.evicted_count,
            "evicted_runs": list(store.evicted),
            "log_bytes": None if store.logs is None else store.logs.total,
        }


def panel_specs(store: RunStore, run_id: str) -> dict[str, dict[str, Any]]:
    """Every PanelSpec field of each instrument of one run, JSON-ready.

    ``run_detail`` lists the first five fields only; this one also carries the
    fields added later (ref_lines, band, smooth, distribution, card, x_label).
    """
    with store.lock:
        run = find_run(store, run_id)
        return {
            name: {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(spec.panel).items()
            }
            for name, spec in run.instruments.items()
        }


def diagnoses_view(store: RunStore, run_id: str) -> dict[str, Any]:
    """A run's diagnoses (most urgent first) and the rules that could not run."""
    with store.lock:
        run = find_run(store, run_id)
        report = run.diagnoser.report()
    order = {"critical": 0, "warning": 1, "info": 2}
    report["diagnoses"].sort(key=lambda d: (order[d["severity"]], d["detected_step"]))
    return {"run": run.run_id, **report}
