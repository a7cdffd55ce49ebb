"""Line panels for scalar and per-layer instruments: one trace per series key."""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go

from glasscockpit.dashboard.panels.style import base_layout

MAX_TRACE_POINTS = 5000


def plot_values(values: list[Any]) -> list[float | None]:
    """Numbers for plotly: non-finite readings ("NaN", "Infinity") become gaps."""
    out: list[float | None] = []
    for v in values:
        out.append(v if isinstance(v, int | float) and math.isfinite(v) else None)
    return out


def nonfinite_steps(series: dict[str, Any]) -> list[int]:
    """Steps whose reading was NaN or infinite."""
    return [
        s
        for s, v in zip(series["step"], series["value"], strict=True)
        if isinstance(v, str)
    ]


def line_figure(spec: dict[str, Any], series: dict[str, dict[str, Any]]) -> go.Figure:
    """A figure with one line per key ("total" first, bold); NaN/Inf marked in red."""
    fig = go.Figure()
    for key, s in series.items():
        is_total = key == "total"
        fig.add_trace(
            go.Scatter(
                x=s["step"],
                y=plot_values(s["value"]),
                mode="lines",
                name=key,
                line={"width": 2.5 if is_total else 1.2},
                opacity=1.0 if is_total else 0.7,
            )
        )
    bad = [(k, st) for k, s in series.items() for st in nonfinite_steps(s)]
    if bad:
        fig.add_trace(
            go.Scatter(
                x=[st for _, st in bad],
                y=[None] * len(bad),
                mode="markers",
                name="NaN/Inf",
                marker={"color": "red", "symbol": "x", "size": 9},
            )
        )
        for _, st in bad[:50]:
            fig.add_vline(x=st, line={"color": "red", "width": 1, "dash": "dot"})
    panel = spec["panel"]
    fig.update_layout(**base_layout(panel, showlegend=len(series) > 1))
    fig.update_yaxes(type="log" if panel["log_y"] else "linear")
    return fig


def extend_payload(series: dict[str, dict[str, Any]], keys: list[str]) -> list[Any]:
    """``extendData`` for new points of each key, in trace order."""
    xs = [series[k]["step"] for k in keys]
    ys = [plot_values(series[k]["value"]) for k in keys]
    return [{"x": xs, "y": ys}, list(range(len(keys))), MAX_TRACE_POINTS]
