"""What changed since the browser's cursor: full figures or incremental extends.

A panel's cursor entry remembers what the browser holds: a signature of the
runs, series and view options it was drawn with, the last step of each series,
and the smoothing state. If the signature changes (a control moved, a layer
appeared) or the browser's traces have grown far past the downsampling budget,
the panel is redrawn from the downsampled store; otherwise only the new points
travel, as ``extendData``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from dash import no_update

from glasscockpit.dashboard.client import DataProvider
from glasscockpit.dashboard.model import (
    LINE_KINDS,
    PLANE,
    PLANE_MEMBERS,
    ViewOptions,
    panel_series,
    sid,
)
from glasscockpit.dashboard.panels import histogram_figure, line_extend, line_figure
from glasscockpit.dashboard.panels.line import Series, empty_series
from glasscockpit.dashboard.panels.plane import TRAIL, plane_figure

#: Points per panel from the downsampled store, shared by the overlaid runs
#: (TensorBoard draws 1000 per line; browser rendering, not the server, is the
#: limit, see docs/benchmarks-dashboard.md).
PANEL_POINTS = 1500
#: At most this many points per line, at least this few.
#: (A cockpit-view card is ~300 px wide: 500 points per line is more than its
#: pixels, and Plotly's redraw per live update scales with the points.)
MAX_POINTS, MIN_POINTS = 500, 100
#: A panel is redrawn from the store once its lines grew this many times their
#: budget through live extends (bounds browser work without frequent redraws).
REBASE = 4
#: Histogram snapshots drawn over time.
HISTORY = 120


def points_per_trace(n_runs: int) -> int:
    """The downsampling budget of each line, so a panel stays at a few thousand."""
    return max(MIN_POINTS, min(MAX_POINTS, PANEL_POINTS // max(n_runs, 1)))


class RunData:
    """One tick's view of the selected runs: details, keys, errors (read once)."""

    def __init__(self, provider: DataProvider, runs: list[str]) -> None:
        self.provider = provider
        self.details: dict[str, dict[str, Any]] = {}
        for run in runs:
            try:
                self.details[run] = provider.run_detail(run)
            except LookupError:
                continue  # deleted or evicted since the grid was built
        self.runs = [r for r in runs if r in self.details]
        self.keys = {
            run: {i["name"]: list(i["keys"]) for i in d["instruments"]}
            for run, d in self.details.items()
        }

    def starts(self) -> dict[str, float]:
        """When each run began, in Unix seconds.

        The agent's start time (``meta.started``, taken before the first step),
        else when the run's first frame reached the server.
        """
        out: dict[str, float] = {}
        for run, d in self.details.items():
            started = (d.get("meta") or {}).get("started")
            if isinstance(started, int | float) and not isinstance(started, bool):
                out[run] = float(started)
            else:
                out[run] = float(d.get("created") or 0.0)
        return out

    def errors(self, names: list[str]) -> list[str]:
        """Why instruments of this panel failed on the agent, per run."""
        multi = len(self.runs) > 1
        return [
            f"{run}: {name}: {err}" if multi else f"{name}: {err}"
            for run in self.runs
            for name, err in self.details[run].get("errors", {}).items()
            if name in names
        ]

    def series(
        self,
        ids: list[list[str]],
        after: dict[str, int | None] | None,
        strides: dict[str, float] | None = None,
    ) -> dict[str, Series]:
        """Series columns by id; only points after ``after[id]`` when given.

        ``strides`` (steps per drawn point) thins new points to the density
        the panel was drawn at, so 20 live runs do not send every step.
        """
        budget = points_per_trace(len(self.runs))
        out: dict[str, Series] = {}
        for run, name, key in ids:
            s = sid(run, name, key)
            since = None if after is None else after.get(s)
            points = budget
            last = self.details[run].get("last_step")
            stride = (strides or {}).get(s, 1.0)
            if since is not None and last is not None and stride > 1:
                points = max(1, min(budget, math.ceil((last - since) / stride)))
            try:
                out[s] = self.provider.series(run, name, key, points, since)
            except LookupError:
                continue
        return out


def signature(panel: dict[str, Any], ids: list[list[str]], opts: ViewOptions) -> str:
    """What a drawn panel depends on besides new points."""
    return json.dumps([panel["id"], ids, opts.key()])


def strides(data: dict[str, Series]) -> dict[str, float]:
    """Steps per drawn point of each series (1 for short or raw series)."""
    out: dict[str, float] = {}
    for s, d in data.items():
        steps = d["step"]
        out[s] = (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else 1.0
    return out


def _last_steps(data: dict[str, Series], before: dict[str, Any]) -> dict[str, Any]:
    steps = dict(before)
    for s, d in data.items():
        if d["step"]:
            steps[s] = d["step"][-1]
    return steps


def full_line(
    rd: RunData,
    panel: dict[str, Any],
    colors: dict[str, str],
    opts: ViewOptions,
    log_y: bool,
) -> tuple[Any, dict[str, Any]]:
    """(figure, cursor entry) of a line panel from everything stored."""
    ids = panel_series(panel, rd.runs, rd.keys, opts.layers)
    data = rd.series(ids, None)
    fig, state = line_figure(
        panel, ids, data, rd.runs, colors, opts, log_y, rd.starts()
    )
    entry = {
        "sig": signature(panel, ids, opts),
        "steps": _last_steps(data, {}),
        "stride": strides(data),
        "state": state,
    }
    return fig, entry


def snapshot_run(rd: RunData, panel: dict[str, Any], pick: str | None) -> str | None:
    """The run a histogram panel shows: the picked one, else the first having it."""
    name = panel["members"][0]["name"]
    having = [r for r in rd.runs if name in rd.keys.get(r, {})]
    if pick in having:
        return pick
    return having[0] if having else (rd.runs[0] if rd.runs else None)


def full_snapshot(
    rd: RunData, panel: dict[str, Any], run: str | None, log_y: bool
) -> tuple[Any, dict[str, Any]]:
    """(figure, cursor entry) of a histogram or heatmap panel of ``run``."""
    name = panel["members"][0]["name"]
    sig = f"{panel['id']}|{run}|{int(log_y)}"
    if run is not None:
        try:
            hist = rd.provider.histograms(run, name, HISTORY)
        except LookupError:
            pass
        else:
            fig, state = histogram_figure(panel, hist, log_y)
            return fig, {"sig": sig, "run": run, **state}
    fig, state = histogram_figure(panel, {"snapshots": []}, log_y)
    return fig, {"sig": sig, "run": None, **state}


def update_panel(
    rd: RunData,
    panel: dict[str, Any],
    colors: dict[str, str],
    opts: ViewOptions,
    log_y: bool,
    entry: dict[str, Any] | None,
    pick: str | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """(figure or no_update, extendData or no_update, cursor entry) for one panel.

    ``pick`` is the run a histogram panel's run picker names.
    """
    if panel["kind"] == PLANE:
        return _update_plane(rd, panel, entry, pick, log_y)
    if panel["kind"] not in LINE_KINDS:
        return _update_snapshot(rd, panel, entry, pick, log_y)
    ids = panel_series(panel, rd.runs, rd.keys, opts.layers)
    budget = points_per_trace(len(rd.runs))
    if (
        entry is None
        or entry.get("sig") != signature(panel, ids, opts)
        or entry["state"].get("points", 0) > REBASE * budget
    ):
        fig, new = full_line(rd, panel, colors, opts, log_y)
        return fig, no_update, new
    data = rd.series(ids, entry["steps"], entry.get("stride"))
    payload, state = line_extend(
        panel, ids, data, rd.runs, opts, entry["state"], rd.starts()
    )
    if payload is None:
        return no_update, no_update, entry
    return (
        no_update,
        payload,
        {**entry, "steps": _last_steps(data, entry["steps"]), "state": state},
    )


def _update_snapshot(
    rd: RunData,
    panel: dict[str, Any],
    entry: dict[str, Any] | None,
    pick: str | None,
    log_y: bool,
) -> tuple[Any, Any, dict[str, Any]]:
    name = panel["members"][0]["name"]
    run = snapshot_run(rd, panel, pick)
    sig = f"{panel['id']}|{run}|{int(log_y)}"
    if entry is not None and entry.get("sig") == sig and run is not None:
        try:
            newest = rd.provider.histograms(run, name, 1)["snapshots"]
        except LookupError:
            newest = []
        if not newest or newest[-1]["step"] == entry.get("step"):
            return no_update, no_update, entry
    fig, new = full_snapshot(rd, panel, run, log_y)
    if entry is not None and new == entry:
        return no_update, no_update, entry
    return fig, no_update, new


def _update_plane(
    rd: RunData,
    panel: dict[str, Any],
    entry: dict[str, Any] | None,
    pick: str | None,
    log_y: bool,
) -> tuple[Any, Any, dict[str, Any]]:
    """Redrawn (a few hundred points) when either test has a newer reading."""
    having = [r for r in rd.runs if set(PLANE_MEMBERS) <= set(rd.keys.get(r, {}))]
    run = pick if pick in having else (having[0] if having else None)
    last = rd.details[run].get("last_step") if run else None
    sig = f"{panel['id']}|{run}|{int(log_y)}"
    if entry is not None and entry.get("sig") == sig and entry.get("last") == last:
        return no_update, no_update, entry
    cols: list[Series] = []
    for name in PLANE_MEMBERS:
        key = "total" if "total" in rd.keys.get(run or "", {}).get(name, []) else ""
        keys = rd.keys.get(run or "", {}).get(name, [])
        key = key or (keys[0] if keys else "total")
        try:
            cols.append(rd.provider.series(run, name, key, TRAIL, None) if run else {})
        except LookupError:
            cols.append({})
    ortho, inner = (c if c.get("step") is not None else empty_series() for c in cols)
    fig, state = plane_figure(panel, ortho, inner, log_y)
    return fig, no_update, {"sig": sig, "run": run, "last": last, **state}


def status_line(
    rd: RunData, panel: dict[str, Any], entry: dict[str, Any] | None, log_y: bool
) -> str:
    """Card footer: failures first, then NaN/Inf and hidden-on-log warnings, step."""
    names = [m["name"] for m in panel["members"]]
    parts = [f"⚠ failed on the agent: {e}" for e in rd.errors(names)]
    if entry is None:
        return " · ".join(parts) or "scroll into view to load"
    state = entry.get("state", {})
    if state.get("bad"):
        parts.append(f"⚠ {state['bad']} NaN/Inf readings (red ×)")
    if log_y and state.get("nonpos"):
        parts.append(f"⚠ {state['nonpos']} values ≤ 0 not shown on the log axis")
    steps = [v for v in entry.get("steps", {}).values() if v is not None]
    step = max(steps) if steps else entry.get("step")
    if step is not None:
        parts.append(f"step {step}")
    elif not parts:
        parts.append("no readings yet")
    if entry.get("run") and len(rd.runs) > 1:
        parts.append(f"showing {entry['run']}")
    return " · ".join(parts)
