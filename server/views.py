"""Plain-dict views of stored runs, shared by the REST API and the dashboard."""

from __future__ import annotations

import dataclasses
from typing import Any

from glasscockpit.server.errors import UnknownInstrument, UnknownRun
from glasscockpit.server.jsonsafe import safe_list
from glasscockpit.server.store import TOTAL, Run, RunStore


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
        items = list(hist)[-last:]
    return {
        "run": run_id,
        "name": name,
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
