"""Histogram panels: 1-D counts over time, and 2-D counts with their marginals.

Snapshots arrive as the provider's ``histograms()`` shape: per step a dict of
flat arrays (``counts``, edges) with their shapes. Counts are drawn as
``log10(count + 1)`` like Cockpit, so a bin of 1 and a bin of 10⁶ both show.

* 1-D (``histogram`` kind): left, a heatmap of the histogram over steps
  (x = step, y = value); right, the latest step's histogram as horizontal bars
  on a log count axis, sharing the value axis.
* 2-D (``heatmap`` kind): the latest step's joint histogram (x = parameter,
  y = gradient by Cockpit's convention), with marginal sums above and right.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from glasscockpit.dashboard.model import to_float
from glasscockpit.dashboard.panels.style import FigureDict, base_layout, trace

BAR_COLOR = "#4c78a8"
COLORSCALE = "Viridis"
#: Axis titles of the histogram instruments whose spec names no x axis:
#: ``{instrument: (x label, value label)}``; a spec's own labels win.
AXES = {
    "grad_hist_1d": ("gradient element", "gradient element"),
    "grad_hist_2d": ("parameter value", "gradient element"),
}


def labels(panel: dict[str, Any]) -> tuple[str, str]:
    """(x, y) axis titles: the 1-D value axis never reads "count" (that is x2)."""
    name = (panel.get("members") or [{}])[0].get("name", "")
    x_default, y_default = AXES.get(name, ("x", "value"))
    x = panel.get("x_label") or x_default
    y = panel.get("y_label") or y_default
    if panel.get("kind") == "histogram":
        y = panel.get("x_label") or (y if y != "count" else y_default)
    return x, y


def array(snapshot: dict[str, Any], key: str) -> np.ndarray | None:
    """One array of a snapshot as floats (NaN where the reading was not finite)."""
    if key not in snapshot.get("arrays", {}):
        return None
    flat = [to_float(v) for v in snapshot["arrays"][key]]
    values = np.asarray([np.nan if v is None else v for v in flat], dtype=float)
    return values.reshape(snapshot["shapes"][key])


def edges_for(snapshot: dict[str, Any], axis: str, size: int) -> np.ndarray:
    """Bin edges of one axis ("x", "y" or "" for 1-D), else 0..size.

    Accepts ``edges``, ``x_edges``/``y_edges``, ``xedges``/``yedges`` and
    ``edges_x``/``edges_y``, whichever the instrument sent.
    """
    names = [f"{axis}_edges", f"{axis}edges", f"edges_{axis}"] if axis else ["edges"]
    for name in names:
        e = array(snapshot, name)
        if e is not None and e.ndim == 1 and e.size == size + 1:
            return e
    return np.arange(size + 1, dtype=float)


def centres(edges: np.ndarray) -> np.ndarray:
    """Midpoints of consecutive edges."""
    out: np.ndarray = (edges[:-1] + edges[1:]) / 2
    return out


def log_counts(counts: np.ndarray) -> np.ndarray:
    """log10(count + 1), NaN kept."""
    out: np.ndarray = np.log10(np.clip(counts, 0, None) + 1)
    return out


def histogram_figure(
    panel: dict[str, Any], hist: dict[str, Any], log_count: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Over-time heatmap plus latest histogram (1-D), or a 2-D histogram.

    ``log_count``: the latest histogram's count axis is logarithmic (the
    panel's log button).
    """
    snaps = [s for s in hist.get("snapshots", []) if array(s, "counts") is not None]
    last = snaps[-1] if snaps else None
    counts = array(last, "counts") if last is not None else None
    if counts is not None and counts.ndim == 2:
        return heatmap_figure(panel, last or {}, log_count), {"step": _step(last)}
    fig = FigureDict()
    fig.update_layout(**base_layout(panel, showlegend=False))
    value_label = labels({**panel, "kind": "histogram"})[1]
    pairs = [(s, array(s, "counts")) for s in snaps]
    one_d = [(s, c) for s, c in pairs if c is not None and c.ndim == 1]
    if one_d:
        size = one_d[-1][1].size
        same = [(s, c) for s, c in one_d if c.size == size]  # bins may change
        edges = edges_for(same[-1][0], "", size)
        z = np.stack([log_counts(c) for _, c in same], axis=1)  # [bins, steps]
        latest = same[-1][1]
        fig.add_trace(
            trace(
                "heatmap",
                x=[s["step"] for s, _ in same],
                y=centres(edges),
                z=z,
                colorscale=COLORSCALE,
                showscale=False,
                hovertemplate="step %{x}<br>value %{y:.3g}<br>log10(n+1) %{z:.2f}"
                "<extra></extra>",
            )
        )
        fig.add_trace(
            trace(
                "bar",
                x=np.clip(latest, 0, None) + 1,
                y=centres(edges),
                orientation="h",
                xaxis="x2",
                marker={"color": BAR_COLOR},
                name=f"step {same[-1][0]['step']}",
                hovertemplate="value %{y:.3g}<br>count+1 %{x}<extra></extra>",
            )
        )
        fig.update_layout(
            xaxis={"domain": [0, 0.64], "title": {"text": "step"}},
            xaxis2={
                "domain": [0.7, 1],
                "type": "log" if log_count else "linear",
                "title": {"text": f"count+1 @ step {same[-1][0]['step']}"},
            },
            yaxis={"title": {"text": value_label}},
            bargap=0.05,
            margin={"b": 40},
        )
    return fig.to_dict(), {"step": _step(last)}


def heatmap_figure(
    panel: dict[str, Any], snapshot: dict[str, Any], log_count: bool = True
) -> dict[str, Any]:
    """Joint histogram of one step with (log) marginal sums."""
    counts = array(snapshot, "counts")
    fig = FigureDict()
    fig.update_layout(**base_layout(panel, showlegend=False))
    if counts is None or counts.ndim != 2:
        return fig.to_dict()
    ny, nx = counts.shape
    xe, ye = edges_for(snapshot, "x", nx), edges_for(snapshot, "y", ny)
    if xe.size != nx + 1 or ye.size != ny + 1:  # pragma: no cover - edges_for sizes
        xe, ye = np.arange(nx + 1.0), np.arange(ny + 1.0)
    xc, yc = centres(xe), centres(ye)
    x_label, y_label = labels({**panel, "kind": "heatmap"})
    scale = "log" if log_count else "linear"
    fig.add_trace(
        trace(
            "heatmap",
            x=xc,
            y=yc,
            z=log_counts(counts),
            colorscale=COLORSCALE,
            showscale=False,
            hovertemplate="x %{x:.3g}<br>y %{y:.3g}<br>log10(n+1) %{z:.2f}"
            "<extra></extra>",
        )
    )
    fig.add_trace(
        trace(
            "bar",
            x=xc,
            y=np.nansum(np.clip(counts, 0, None), axis=0) + 1,
            yaxis="y2",
            marker={"color": BAR_COLOR},
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        trace(
            "bar",
            x=np.nansum(np.clip(counts, 0, None), axis=1) + 1,
            y=yc,
            xaxis="x2",
            orientation="h",
            marker={"color": BAR_COLOR},
            hoverinfo="skip",
        )
    )
    fig.update_layout(
        xaxis={
            "domain": [0, 0.78],
            "title": {"text": f"{x_label} @ step {snapshot['step']}"},
        },
        yaxis={"domain": [0, 0.76], "title": {"text": y_label}},
        xaxis2={"domain": [0.81, 1], "type": scale, "showticklabels": False},
        yaxis2={"domain": [0.8, 1], "type": scale, "showticklabels": False},
        bargap=0.02,
        margin={"b": 40},
    )
    return fig.to_dict()


def _step(snapshot: dict[str, Any] | None) -> int | None:
    return None if snapshot is None else int(snapshot["step"])
