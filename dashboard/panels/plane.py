"""Cockpit's gradient test plane: inner-product test against orthogonality test.

The batch is large enough for SGD's direction when both statistics are ≤ 1
(Bollapragada et al.'s inner-product and orthogonality tests): that square is
the acceptance rectangle. The recent readings are drawn coloured by iteration
(Cockpit's convention), the current one as a large cross, so a run drifting
out of the rectangle reads at a glance.
"""

from __future__ import annotations

from typing import Any

from glasscockpit.dashboard.model import to_float
from glasscockpit.dashboard.panels.style import FigureDict, base_layout, trace

#: Readings drawn (the newest).
TRAIL = 300
ACCEPT_COLOR = "rgba(34, 197, 94, 0.16)"
ACCEPT_LINE = "rgba(22, 163, 74, 0.8)"
#: The newest reading's cross: readable on the light and the dark theme.
NEWEST = "#ea580c"


def pairs(
    ortho: dict[str, list[Any]], inner: dict[str, list[Any]]
) -> tuple[list[int], list[float], list[float]]:
    """(steps, ν, θ) of the steps both tests read finitely, oldest first."""
    by_step = {
        s: to_float(v) for s, v in zip(inner["step"], inner["value"], strict=True)
    }
    steps: list[int] = []
    xs: list[float] = []
    ys: list[float] = []
    for s, v in zip(ortho["step"], ortho["value"], strict=True):
        x, y = to_float(v), by_step.get(s)
        if x is None or y is None or x != x or y != y:  # missing or NaN
            continue
        if abs(x) == float("inf") or abs(y) == float("inf"):
            continue
        steps.append(int(s))
        xs.append(x)
        ys.append(y)
    return steps[-TRAIL:], xs[-TRAIL:], ys[-TRAIL:]


def plane_figure(
    panel: dict[str, Any],
    ortho: dict[str, list[Any]],
    inner: dict[str, list[Any]],
    log: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plane and ``{"step": newest step drawn}``."""
    steps, xs, ys = pairs(ortho, inner)
    fig = FigureDict()
    fig.update_layout(**base_layout(panel, showlegend=False))
    fig.add_shape(
        type="rect",
        x0=0 if not log else 1e-3,
        x1=1,
        y0=0 if not log else 1e-3,
        y1=1,
        fillcolor=ACCEPT_COLOR,
        line={"color": ACCEPT_LINE, "width": 1},
        layer="below",
    )
    fig.add_trace(
        trace(
            "scatter",
            x=xs,
            y=ys,
            mode="markers",
            name="readings",
            marker={
                "color": steps,
                "colorscale": "Viridis",
                "size": 5,
                "opacity": 0.75,
                "showscale": False,
            },
            customdata=steps,
            hovertemplate="step %{customdata}<br>ν %{x:.3g}<br>θ %{y:.3g}"
            "<extra></extra>",
        )
    )
    fig.add_trace(
        trace(
            "scatter",
            x=xs[-1:],
            y=ys[-1:],
            mode="markers",
            name="newest",
            marker={
                "symbol": "cross-thin-open",
                "size": 18,
                "color": NEWEST,
                "line": {"width": 3, "color": NEWEST},
            },
            hovertemplate=f"newest, step {steps[-1] if steps else '–'}"
            "<br>ν %{x:.3g}<br>θ %{y:.3g}<extra></extra>",
        )
    )
    top = max([1.5, *(1.1 * v for v in xs + ys)])
    scale = "log" if log else "linear"
    fig.update_layout(
        xaxis={
            "title": {"text": panel["x_label"]},
            "type": scale,
            "range": None if log else [0, top],
        },
        yaxis={
            "title": {"text": panel["y_label"]},
            "type": scale,
            "range": None if log else [0, top],
        },
        hovermode="closest",
        margin={"b": 40},
    )
    return fig.to_dict(), {"step": steps[-1] if steps else None}
