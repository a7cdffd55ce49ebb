"""Colours and the layout shared by every panel figure."""

from __future__ import annotations

from typing import Any

#: Run colours, assigned in order of arrival so a run keeps its colour.
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#7f7f7f",
    "#393b79",
    "#ad494a",
    "#637939",
    "#7b4173",
    "#e7ba52",
    "#3182bd",
    "#843c39",
    "#31a354",
    "#756bb1",
    "#636363",
)

#: Cockpit's column colours (step size blue, gradients orange, curvature green).
GROUP_COLORS = {
    "step size": "#7596c4",
    "gradients": "#f3a66a",
    "curvature": "#7ab38b",
    "performance": "#a9a8b8",
}

BAD_COLOR = "#dc2626"
BAND_COLOR = "rgba(34, 197, 94, 0.12)"
REF_COLOR = "#6b7280"
DASHES = ("solid", "dot", "dash", "longdash", "dashdot", "longdashdot")


def color_of(index: int) -> str:
    """The palette colour for the ``index``-th run (wrapping around)."""
    return PALETTE[index % len(PALETTE)]


def run_colors(runs_oldest_first: list[str]) -> dict[str, str]:
    """A colour per run, by order of arrival (stable while runs are added)."""
    return {run: color_of(i) for i, run in enumerate(runs_oldest_first)}


def base_layout(panel: dict[str, Any], showlegend: bool) -> dict[str, Any]:
    """Compact margins, axis titles, legend only when there are several traces."""
    return {
        # No "step" title under line panels (as TensorBoard): cockpit-view
        # cards are small; figures with other x axes title them and add room.
        "margin": {"l": 56, "r": 12, "t": 8, "b": 24},
        "autosize": True,
        "xaxis": {"title": {"text": "", "standoff": 4}},
        # At most 5 labels: cockpit-view cards are ~100 px tall.
        "yaxis": {
            "title": {"text": panel.get("y_label", ""), "standoff": 4},
            "nticks": 5,
        },
        "showlegend": showlegend,
        # Inside the plot, top left, as Cockpit's: a legend outside would
        # take the plot's room in small cards.
        "legend": {
            "font": {"size": 10},
            "bgcolor": "rgba(255,255,255,0.6)",
            "orientation": "v",
            "x": 0,
            "y": 1,
            "xanchor": "left",
            "yanchor": "top",
        },
        "template": "plotly_white",
        "font": {"size": 11},
        "hovermode": "closest",
        # Keep the user's zoom across updates of the same panel.
        "uirevision": panel.get("id", "keep"),
    }


def merge(into: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into ``into`` (dicts merge, None unsets, else replace)."""
    for key, value in update.items():
        if value is None:  # as in go.Figure: None unsets
            into.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(into.get(key), dict):
                into[key] = {}
            merge(into[key], value)
        else:
            into[key] = value
    return into


class FigureDict:
    """A Plotly figure kept as plain dicts, with go.Figure's few methods we use.

    ``go.Figure`` validates every point of every trace; for panels of thousands
    of points that is ~15x slower than building the dicts (measured in
    bench/dashboard.py's history), and the dashboard redraws many panels at once.
    """

    def __init__(self) -> None:
        self.data: list[dict[str, Any]] = []
        self.layout: dict[str, Any] = {}

    def add_trace(self, trace: dict[str, Any]) -> None:
        """Append one trace (a dict with its ``type``)."""
        self.data.append(trace)

    def update_layout(self, **layout: Any) -> None:
        """Deep-merge layout properties."""
        merge(self.layout, layout)

    def add_shape(self, **shape: Any) -> None:
        """Append one layout shape."""
        self.layout.setdefault("shapes", []).append(shape)

    def to_dict(self) -> dict[str, Any]:
        """The figure as Dash's ``figure`` property wants it."""
        return {"data": self.data, "layout": self.layout}


def trace(kind: str, **props: Any) -> dict[str, Any]:
    """One trace as a dict, e.g. ``trace("scatter", x=[...], y=[...])``."""
    return {"type": kind, **{k: v for k, v in props.items() if v is not None}}


#: Layout overrides of the dark theme (the page follows the system setting).
DARK = {
    "template": "plotly_dark",
    "paper_bgcolor": "#111827",
    "plot_bgcolor": "#111827",
    "font": {"color": "#e5e7eb"},
    "legend": {"bgcolor": "rgba(17,24,39,0.7)"},
}


def themed(figure: Any, theme: str) -> Any:
    """``figure`` (a figure dict) in the dark theme when ``theme`` is "dark"."""
    if theme != "dark" or not isinstance(figure, dict) or "layout" not in figure:
        return figure
    merge(figure["layout"], DARK)
    for name, axis in figure["layout"].items():
        if (name.startswith(("xaxis", "yaxis"))) and isinstance(axis, dict):
            axis.setdefault("gridcolor", "#374151")
            axis.setdefault("zerolinecolor", "#4b5563")
    return figure
