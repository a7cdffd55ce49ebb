"""Line panels (scalar and per-layer kinds): raw readings, smoothed line, bad points.

Trace order is fixed by ``trace_plan`` so a full figure and later ``extendData``
payloads agree: for each series its raw trace (then its EMA trace when smoothing
is on); then one NaN/Inf marker trace per run; then the distribution traces.
NaN/Inf readings cannot sit on a value axis, so they are drawn as red crosses on a
hidden [0, 1] overlay axis (top: NaN and +Inf, bottom: -Inf).
"""

from __future__ import annotations

import math
from typing import Any

from glasscockpit.dashboard.model import TOTAL, ViewOptions, sid, to_float
from glasscockpit.dashboard.panels import distribution
from glasscockpit.dashboard.panels.style import (
    BAD_COLOR,
    BAND_COLOR,
    DASHES,
    PALETTE,
    REF_COLOR,
    FigureDict,
    base_layout,
    trace,
)
from glasscockpit.dashboard.smoothing import ema

#: Most legend entries a card shows (more would squeeze its plot); the
#: unified hover names every line at a step, and the enlarged panel shows all.
MAX_LEGEND = 4
#: Lines whose readings are this many steps apart on average also get markers
#: (epoch-level metrics would otherwise be a few invisible segments).
SPARSE_GAP = 10
#: Weight of the smoothed line of ``smooth`` panels while the slider is at 0.
DEFAULT_SMOOTHING = 0.6
#: extendData keeps at most this many points per trace (the live loop rebuilds
#: a panel from the downsampled store long before this is reached).
MAX_TRACE_POINTS = 50_000

Series = dict[str, list[Any]]  # step, wall_time, value columns


def smoothing_weight(panel: dict[str, Any], opts: ViewOptions) -> float:
    """The EMA weight this panel uses; 0 means no smoothed line."""
    if opts.smoothing > 0:
        return opts.smoothing
    return DEFAULT_SMOOTHING if panel.get("smooth") else 0.0


def trace_plan(
    panel: dict[str, Any], series: list[list[str]], runs: list[str], smoothed: bool
) -> dict[str, Any]:
    """Trace indices: raw/ema per series id; bad/dist/recent per run."""
    plan: dict[str, Any] = {"raw": {}, "ema": {}, "bad": {}, "dist": {}, "recent": {}}
    i = 0
    for run, name, key in series:
        plan["raw"][sid(run, name, key)] = i
        i += 1
        if smoothed:
            plan["ema"][sid(run, name, key)] = i
            i += 1
    for run in runs:
        plan["bad"][run] = i
        i += 1
    if panel.get("distribution"):
        for run in runs:
            plan["dist"][run] = i
            i += 1
        if len(runs) == 1:
            plan["recent"][runs[0]] = i
    return plan


def split(
    data: Series, opts: ViewOptions, start: float = 0.0
) -> tuple[list[Any], list[float | None], list[tuple[Any, float, str]]]:
    """(x, finite y or None, [(x, marker height, label)] for NaN/Inf readings).

    ``start``: the run's start (Unix s), the origin of the relative time axis.
    """
    if opts.x_axis == "wall":
        xs: list[Any] = [w * 1000.0 for w in data["wall_time"]]
    elif opts.x_axis == "relative":
        xs = [round(w - start, 3) for w in data["wall_time"]]
    else:
        xs = list(data["step"])
    ys: list[float | None] = []
    bad: list[tuple[Any, float, str]] = []
    for x, raw in zip(xs, data["value"], strict=True):
        v = to_float(raw)
        if v is not None and math.isfinite(v):
            ys.append(v)
            continue
        ys.append(None)
        label = "NaN" if v is None or math.isnan(v) else ("+Inf" if v > 0 else "-Inf")
        bad.append((x, 0.05 if label == "-Inf" else 0.95, label))
    return xs, ys, bad


def _label(run: str, title: str, key: str, multi_run: bool, multi_member: bool) -> str:
    parts = [run] if multi_run else []
    if multi_member:
        parts.append(title)
    if key != TOTAL:
        parts.append(key)
    return " · ".join(parts) or (title if not multi_run else run)


def _style(
    index: int, run_index: int, key: str, colors: list[str], multi_run: bool
) -> dict[str, Any]:
    """A line's colour, width and dash.

    Single run: its colour first, then a colour per line. Several runs: the
    run's colour; its further lines (members, layers) dashed and thinner.
    """
    width = 2.2 if key == TOTAL else 1.3
    if multi_run:
        return {
            "color": colors[run_index],
            "width": width,
            "dash": DASHES[index % len(DASHES)],
        }
    own = colors[run_index]
    others = [c for c in PALETTE if c != own]
    color = own if index == 0 else others[(index - 1) % len(others)]
    return {"color": color, "width": width}


def line_figure(
    panel: dict[str, Any],
    series: list[list[str]],
    data: dict[str, Series],
    runs: list[str],
    colors: dict[str, str],
    opts: ViewOptions,
    log_y: bool,
    starts: dict[str, float] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The whole panel and the state live updates continue from.

    Args:
        panel: The panel, as ``model.build_panels`` makes it.
        series: ``[run, instrument, key]`` per line, from ``model.panel_series``.
        data: Series columns by series id; a missing id draws an empty line.
        runs: Runs drawn, in legend order.
        colors: Colour of each run.
        opts: Smoothing, x axis and per-layer choice.
        log_y: Logarithmic value axis.
        starts: Start time of each run (the relative time axis's origin).

    Returns:
        The figure and ``{"ema": {sid: [acc, n]}, "points", "bad", "nonpos"}``.
    """
    weight = smoothing_weight(panel, opts)
    titles = {m["name"]: m["title"] for m in panel["members"]}
    multi_run = len(runs) > 1
    multi_member = len(panel["members"]) > 1
    run_colors = [colors.get(r, PALETTE[0]) for r in runs]
    fig = FigureDict()
    state: dict[str, Any] = {"ema": {}, "points": 0, "bad": 0, "nonpos": 0}
    bad_by_run: dict[str, list[tuple[Any, float, str]]] = {r: [] for r in runs}
    values_by_run: dict[str, list[float]] = {r: [] for r in runs}
    per_run_index: dict[str, int] = {}
    for run, name, key in series:
        s = sid(run, name, key)
        xs, ys, bad = split(
            data.get(s, empty_series()), opts, (starts or {}).get(run, 0.0)
        )
        n = per_run_index.get(run, 0)
        per_run_index[run] = n + 1
        label = _label(run, titles.get(name, name), key, multi_run, multi_member)
        line = _style(n, runs.index(run), key, run_colors, multi_run)
        raw: dict[str, Any] = {"x": xs, "y": ys, "name": label, "legendgroup": s}
        if panel.get("smooth"):
            raw |= {
                "mode": "markers",
                "marker": {"color": line["color"], "size": 4, "opacity": 0.45},
            }
        else:
            mode = "lines+markers" if sparse(data.get(s)) else "lines"
            raw |= {"mode": mode, "line": line, "opacity": 0.3 if weight else 1}
        dist = bool(panel.get("distribution"))  # its legend names the histograms
        if weight or dist:
            raw["showlegend"] = False
        fig.add_trace(trace("scatter", **raw))
        if weight:
            smooth, state["ema"][s] = ema(ys, weight)
            fig.add_trace(
                trace(
                    "scatter",
                    x=xs,
                    y=smooth,
                    mode="lines",
                    name=label,
                    line=line,
                    legendgroup=s,
                    showlegend=not dist,
                )
            )
        bad_by_run[run] += [(x, h, f"{label}: {t}") for x, h, t in bad]
        state["points"] = max(state["points"], len(xs))
        state["bad"] += len(bad)
        state["nonpos"] += sum(1 for y in ys if y is not None and y <= 0)
        if key == TOTAL or len(series) == 1:
            values_by_run[run] += [y for y in ys if y is not None]
    for run in runs:
        fig.add_trace(bad_trace(run, bad_by_run[run], multi_run))
    if panel.get("distribution"):
        state["recent_window"] = distribution.add_traces(
            fig, panel, runs, values_by_run, run_colors
        )
    # A long legend squeezes the plot: the hover lists every line instead.
    entries = len(series) + (1 if state["bad"] else 0)
    if panel.get("distribution"):
        entries = 2 if len(runs) == 1 else 0
    layout = base_layout(panel, showlegend=1 < entries <= MAX_LEGEND)
    layout["hovermode"] = "x unified"
    fig.update_layout(**layout)
    fig.update_layout(
        yaxis2={
            "overlaying": "y",
            "range": [0, 1],
            "visible": False,
            "fixedrange": True,
        },
    )
    if opts.x_axis == "wall":  # date ticks speak for themselves: no title
        fig.update_layout(xaxis={"type": "date", "title": {"text": ""}, "nticks": 5})
    elif opts.x_axis == "relative":
        fig.update_layout(xaxis={"ticksuffix": " s", "nticks": 5})
    fig.update_layout(yaxis={"type": "log" if log_y else "linear"})
    _guides(fig, panel)
    if panel.get("distribution"):
        distribution.layout(fig, panel)
    state["traces"] = len(fig.data)
    return fig.to_dict(), state


def _guides(fig: FigureDict, panel: dict[str, Any]) -> None:
    """The tolerance band and reference lines of the panel's spec."""
    band = panel.get("band")
    if band:
        fig.add_shape(
            type="rect",
            xref="x domain",
            x0=0,
            x1=1,
            yref="y",
            y0=band[0],
            y1=band[1],
            fillcolor=BAND_COLOR,
            line={"width": 0},
            layer="below",
        )
    for y in panel.get("ref_lines") or []:
        fig.add_shape(
            type="line",
            xref="x domain",
            x0=0,
            x1=1,
            yref="y",
            y0=y,
            y1=y,
            line={"color": REF_COLOR, "width": 1, "dash": "dash"},
        )


def bad_trace(
    run: str, bad: list[tuple[Any, float, str]], multi_run: bool
) -> dict[str, Any]:
    """Red crosses for NaN/Inf readings of one run, on the hidden overlay axis."""
    return trace(
        "scatter",
        x=[b[0] for b in bad],
        y=[b[1] for b in bad],
        text=[b[2] for b in bad],
        mode="markers",
        yaxis="y2",
        name=f"NaN/Inf {run}" if multi_run else "NaN/Inf",
        marker={
            "color": BAD_COLOR,
            "symbol": "x-thin-open",
            "size": 11,
            "line": {"width": 2, "color": BAD_COLOR},
        },
        hovertemplate="%{text} at %{x}<extra></extra>",
        showlegend=bool(bad),
    )


def sparse(data: Series | None) -> bool:
    """Whether a series has few readings for its span of steps (or only one)."""
    steps: list[int] = (data or {}).get("step") or []
    if len(steps) <= 1:
        return bool(steps)
    return bool((steps[-1] - steps[0]) / (len(steps) - 1) >= SPARSE_GAP)


def empty_series() -> Series:
    """A series with no points."""
    return {"step": [], "wall_time": [], "value": []}


def line_extend(
    panel: dict[str, Any],
    series: list[list[str]],
    new: dict[str, Series],
    runs: list[str],
    opts: ViewOptions,
    state: dict[str, Any],
    starts: dict[str, float] | None = None,
) -> tuple[list[Any] | None, dict[str, Any]]:
    """``extendData`` for points newer than the last update, and the new state.

    Returns None as payload when there is nothing new.
    """
    weight = smoothing_weight(panel, opts)
    plan = trace_plan(panel, series, runs, weight > 0)
    state = {**state, "ema": dict(state.get("ema", {}))}
    xs_out: dict[int, list[Any]] = {}
    ys_out: dict[int, list[Any]] = {}
    limits: dict[int, int] = {}
    added = 0
    for run, name, key in series:
        s = sid(run, name, key)
        if s not in new or not new[s]["step"]:
            continue
        xs, ys, bad = split(new[s], opts, (starts or {}).get(run, 0.0))
        added = max(added, len(xs))
        i = plan["raw"][s]
        xs_out[i], ys_out[i] = xs, ys
        if weight:
            prev = state["ema"].get(s, [0.0, 0])
            smooth, st = ema(ys, weight, (float(prev[0]), int(prev[1])))
            state["ema"][s] = list(st)
            xs_out[plan["ema"][s]], ys_out[plan["ema"][s]] = xs, smooth
        if bad:
            j = plan["bad"][run]
            xs_out.setdefault(j, []).extend(b[0] for b in bad)
            ys_out.setdefault(j, []).extend(b[1] for b in bad)
        state["bad"] = state.get("bad", 0) + len(bad)
        state["nonpos"] = state.get("nonpos", 0) + sum(
            1 for y in ys if y is not None and y <= 0
        )
        if run in plan["dist"] and (key == TOTAL or len(series) == 1):
            finite = [distribution.clip(panel, y) for y in ys if y is not None]
            for where in ("dist", "recent"):
                if run in plan[where]:
                    k = plan[where][run]
                    xs_out.setdefault(k, []).extend(finite)
                    ys_out.setdefault(k, []).extend(0.0 for _ in finite)
                    if where == "recent":  # a rolling window: the last 10 %
                        limits[k] = int(state.get("recent_window", 10))
    if not xs_out:
        return None, state
    state["points"] = state.get("points", 0) + added
    order = sorted(xs_out)
    payload = [
        {"x": [xs_out[i] for i in order], "y": [ys_out[i] for i in order]},
        order,
        {
            "x": [limits.get(i, MAX_TRACE_POINTS) for i in order],
            "y": [limits.get(i, MAX_TRACE_POINTS) for i in order],
        },
    ]
    return payload, state
