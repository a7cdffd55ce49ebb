"""A panel's stored data as a CSV or JSON file (the card's csv/json buttons)."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from glasscockpit.dashboard.client import DataProvider
from glasscockpit.dashboard.live import RunData
from glasscockpit.dashboard.model import (
    LINE_KINDS,
    PLANE,
    ViewOptions,
    panel_series,
    to_float,
)


def export_rows(
    provider: DataProvider,
    panel: dict[str, Any],
    runs: list[str],
    opts: ViewOptions,
) -> list[dict[str, Any]]:
    """Every stored point of a line panel, one row per (run, instrument, key, step)."""
    rd = RunData(provider, runs)
    rows: list[dict[str, Any]] = []
    for run, name, key in panel_series(panel, rd.runs, rd.keys, opts.layers):
        try:
            s = provider.series(run, name, key, 1_000_000, None)
        except LookupError:
            continue
        for step, wall, value in zip(
            s["step"], s["wall_time"], s["value"], strict=True
        ):
            v = to_float(value)
            rows.append(
                {
                    "run": run,
                    "instrument": name,
                    "key": key,
                    "step": step,
                    "wall_time": wall,
                    "value": value if v is None or not math.isfinite(v) else v,
                }
            )
    return rows


def panel_file(
    provider: DataProvider,
    panel: dict[str, Any],
    runs: list[str],
    fmt: str,
    layers: Any,
) -> dict[str, Any]:
    """``dcc.Download`` data: the panel's stored points as CSV or JSON."""
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in panel["id"])
    if panel["kind"] in LINE_KINDS or panel["kind"] == PLANE:
        rows = export_rows(provider, panel, runs, ViewOptions.parse(0, "step", layers))
        if fmt == "json":
            return {"content": json.dumps(rows), "filename": f"{stem}.json"}
        buf = io.StringIO()
        writer = csv.DictWriter(
            buf, ["run", "instrument", "key", "step", "wall_time", "value"]
        )
        writer.writeheader()
        writer.writerows(rows)
        return {"content": buf.getvalue(), "filename": f"{stem}.csv"}
    name = panel["members"][0]["name"]
    snaps: dict[str, Any] = {}
    for run in runs:
        try:
            snaps[run] = provider.histograms(run, name, 1_000_000)["snapshots"]
        except LookupError:
            continue
    if fmt == "json":
        return {"content": json.dumps(snaps), "filename": f"{stem}.json"}
    buf = io.StringIO()
    rows_out = csv.writer(buf)
    rows_out.writerow(["run", "step", "array", "shape", "index", "value"])
    for run, items in snaps.items():
        for snap in items:
            for key, values in snap["arrays"].items():
                shape = "x".join(str(n) for n in snap["shapes"][key])
                for i, v in enumerate(values):
                    rows_out.writerow([run, snap["step"], key, shape, i, v])
    return {"content": buf.getvalue(), "filename": f"{stem}.csv"}
