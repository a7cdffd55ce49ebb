"""The distribution view beside a time series (``PanelSpec.distribution``).

"histogram": probability-density histograms of all readings and of the last
10 %. "alpha": the same, clipped to Cockpit's α window [-1.5, 1.5], over the
normalised parabola ``y = x²`` with reference lines at -1 (start), 0 (valley
floor) and 1 (mirror point), so α > 1 reads as "stepped past the point of equal
loss". The time series keeps the left 58 % of the panel.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from glasscockpit.dashboard.panels.style import REF_COLOR, FigureDict, trace

ALPHA_LIMIT = 1.5
#: The α series axis autoranges within ±this: α of a near-flat fit (μ₁ → 0)
#: reaches ±100s and would flatten every other point; those stay off-scale.
ALPHA_SERIES_CLIP = 5.0
RECENT_SHARE = 0.1
GREY = "#9ca3af"
PARABOLA = "#f97316"


def clip(panel: dict[str, Any], value: float) -> float:
    """α beyond the window is piled into its edges, like Cockpit's outlier arrows."""
    if panel.get("distribution") == "alpha":
        return min(max(value, -ALPHA_LIMIT), ALPHA_LIMIT)
    return value


def recent_window(n: int) -> int:
    """How many of ``n`` readings count as "the last 10 %" (at least 10)."""
    return max(10, math.ceil(n * RECENT_SHARE))


def add_traces(
    fig: FigureDict,
    panel: dict[str, Any],
    runs: list[str],
    values: dict[str, list[float]],
    colors: list[str],
) -> int:
    """Append the distribution traces (trace order as ``line.trace_plan``).

    Returns:
        The "last 10 %" window, in readings, that live updates keep.
    """
    alpha = panel.get("distribution") == "alpha"
    bins = (
        {"start": -ALPHA_LIMIT, "end": ALPHA_LIMIT + 1e-9, "size": 0.1}
        if alpha
        else None
    )
    # y is a dummy of zeros: Plotly's extendTraces extends x and y of every trace
    # it touches, and a "count" histogram ignores y.
    common: dict[str, Any] = {
        "xaxis": "x2",
        "yaxis": "y4",
        "histnorm": "probability density",
        "histfunc": "count",
        "orientation": "v",
        "xbins": bins,
    }
    single = len(runs) == 1
    window = 10
    for run, color in zip(runs, colors, strict=True):
        xs = [clip(panel, v) for v in values.get(run, [])]
        mean = float(np.mean(xs)) if xs else math.nan
        fig.add_trace(
            trace(
                "histogram",
                x=xs,
                y=[0.0] * len(xs),
                name=f"all (μ={mean:.2f})" if single else f"{run} all",
                marker={"color": GREY if single else color},
                opacity=0.55,
                legendgroup="dist",
                showlegend=single,  # runs are told apart by colour, as the lines
                **common,
            )
        )
    if single:
        xs = [clip(panel, v) for v in values.get(runs[0], [])]
        window = recent_window(len(xs))
        recent = xs[-window:]
        mean = float(np.mean(recent)) if recent else math.nan
        fig.add_trace(
            trace(
                "histogram",
                x=recent,
                y=[0.0] * len(recent),
                name=f"last 10 % (μ={mean:.2f})",
                marker={"color": colors[0]},  # the colour of the single run's line
                opacity=0.65,
                legendgroup="dist",
                **common,
            )
        )
    if alpha:
        grid = np.linspace(-ALPHA_LIMIT, ALPHA_LIMIT, 61)
        fig.add_trace(
            trace(
                "scatter",
                x=grid,
                y=grid**2,
                xaxis="x2",
                yaxis="y3",
                mode="lines",
                line={"color": PARABOLA, "width": 1.5},
                name="local parabola",
                hoverinfo="skip",
                showlegend=False,
            )
        )
    return window


def layout(fig: FigureDict, panel: dict[str, Any]) -> None:
    """Split the panel: time series left, distribution right."""
    alpha = panel.get("distribution") == "alpha"
    fig.update_layout(
        barmode="overlay",
        xaxis={"domain": [0, 0.56], "nticks": 4},
        xaxis2={
            "domain": [0.66, 1],
            "anchor": "y3",
            "title": {
                "text": "α" if alpha else panel.get("y_label", ""),
                "standoff": 4,
            },
            "range": [-ALPHA_LIMIT, ALPHA_LIMIT] if alpha else None,
        },
        yaxis3={
            "anchor": "x2",
            "domain": [0, 1],
            "title": {"text": "stand. loss" if alpha else "", "standoff": 2},
            "range": [0, ALPHA_LIMIT**2] if alpha else None,
            "visible": alpha,
        },
        yaxis4={
            "overlaying": "y3",
            "side": "right",
            "anchor": "x2",
            "showgrid": False,
            "title": {"text": "density", "standoff": 2},
        },
        legend={
            "x": 0.66,
            "y": 1,
            "xanchor": "left",
            "yanchor": "top",
            "orientation": "v",
        },
        margin={"r": 44, "b": 40},
    )
    if alpha:
        fig.update_layout(
            yaxis={
                "autorangeoptions": {
                    "clipmin": -ALPHA_SERIES_CLIP,
                    "clipmax": ALPHA_SERIES_CLIP,
                }
            }
        )
        for x in (-1.0, 0.0, 1.0):
            fig.add_shape(
                type="line",
                xref="x2",
                x0=x,
                x1=x,
                yref="y3 domain",
                y0=0,
                y1=1,
                line={"color": REF_COLOR, "width": 1, "dash": "dot"},
            )
