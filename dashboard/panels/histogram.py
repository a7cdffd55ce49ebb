"""Histogram panels: the latest snapshot as bars (1-D) or a heatmap (2-D)."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from glasscockpit.dashboard.panels.style import base_layout


def _array(snapshot: dict[str, Any], key: str) -> np.ndarray | None:
    if key not in snapshot["arrays"]:
        return None
    values = [
        v if isinstance(v, int | float) else np.nan for v in snapshot["arrays"][key]
    ]
    return np.asarray(values, dtype=float).reshape(snapshot["shapes"][key])


def histogram_figure(spec: dict[str, Any], hist: dict[str, Any]) -> go.Figure:
    """Bars of the latest 1-D counts (over ``edges`` if sent), or a 2-D heatmap."""
    fig = go.Figure()
    panel = spec["panel"]
    snapshots = hist.get("snapshots", [])
    if snapshots:
        last = snapshots[-1]
        counts = _array(last, "counts")
        if counts is not None and counts.ndim == 2:
            fig.add_trace(go.Heatmap(z=counts, colorscale="Viridis", showscale=False))
        elif counts is not None:
            edges = _array(last, "edges")
            centres = (
                (edges[:-1] + edges[1:]) / 2
                if edges is not None and edges.size == counts.size + 1
                else np.arange(counts.size)
            )
            fig.add_trace(go.Bar(x=centres, y=counts, name=f"step {last['step']}"))
    fig.update_layout(**base_layout(panel, showlegend=False))
    fig.update_xaxes(title={"text": panel.get("y_label") or "value"})
    fig.update_yaxes(
        title={"text": "count"}, type="log" if panel["log_y"] else "linear"
    )
    return fig
