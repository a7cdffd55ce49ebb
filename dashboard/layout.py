"""Page layout: controls, run list, and the instrument grid grouped like Cockpit."""

from __future__ import annotations

import json
from typing import Any

from dash import dcc, html

from glasscockpit.dashboard import diagnoses, ids, run_table, runlist
from glasscockpit.dashboard.panels.style import GROUP_COLORS

#: Cockpit's three columns, drawn side by side; other groups follow full width.
COLUMNS = ("step size", "gradients", "curvature")
WIDE_ORDER = ("performance", "other")
GRAPH_HEIGHT = "250px"
#: The axes a snapshot panel's log button switches, and its tooltip.
LOG_AXES = {
    "histogram": ("xaxis2", "logarithmic count axis"),
    "heatmap": ("xaxis2 yaxis2", "logarithmic marginal counts"),
    "test_plane": ("xaxis yaxis", "logarithmic axes"),
}
#: Metadata fields holding a Unix time, shown as local time.
TIME_KEYS = frozenset({"started", "created", "finished"})


def page(refresh_ms: int) -> html.Div:
    """The whole page."""
    return html.Div(
        [
            html.Header(
                [
                    html.H1("glasscockpit", className="brand"),
                    controls(),
                    html.Span(id=ids.RUN_STATUS, className="run-status"),
                ],
                className="header",
            ),
            html.Div(
                [
                    html.Aside(
                        [
                            html.Div(
                                [
                                    html.H3("Runs"),
                                    html.Button(
                                        "all shown",
                                        id=ids.RUN_ALL,
                                        className="btn",
                                        title="overlay every run the filter shows",
                                    ),
                                    html.Button(
                                        "newest",
                                        id=ids.RUN_ONE,
                                        className="btn",
                                        title="show only the newest run",
                                    ),
                                    run_table.toggle_button(),
                                ],
                                className="runs-head",
                            ),
                            dcc.Input(
                                id=ids.RUN_FILTER,
                                type="search",
                                placeholder="filter runs (regex)",
                                debounce=False,
                                className="run-filter",
                            ),
                            html.Div(runlist.checklist([], []), id=ids.RUN_LIST_BOX),
                            html.Div(id=ids.RUN_META, className="run-meta"),
                        ],
                        className="sidebar",
                    ),
                    html.Main(
                        [
                            run_table.section(),
                            html.Div(id=ids.WARNINGS, className="warnings"),
                            diagnoses.strip(),
                            html.Div(
                                html.P(
                                    "waiting for a run: attach the agent to a "
                                    "training script",
                                    className="empty",
                                ),
                                id=ids.GRID,
                                className="grid-groups",
                            ),
                        ],
                        className="main",
                    ),
                ],
                className="body",
            ),
            dcc.Interval(id=ids.TICK, interval=refresh_ms),
            dcc.Store(id=ids.CURSOR, data={}),
            dcc.Store(id=ids.TICK_DONE, data=0),
            dcc.Store(id=ids.GRID_STATE, data={}),
            dcc.Store(id=ids.VISIBLE, data={}),
            dcc.Store(id=ids.RUN_COLORS, data={}),
            dcc.Store(id=ids.RUN_ORDER, data=[]),
            dcc.Store(id=ids.URL_INIT, data=0),
            dcc.Store(id=ids.THEME, data="light"),
            dcc.Store(id=ids.URL_WRITTEN, data=""),
            dcc.Download(id=ids.DOWNLOAD),
        ],
        className="page",
    )


def controls() -> html.Div:
    """Smoothing slider, x axis, total or per-layer lines."""
    return html.Div(
        [
            html.Label("smoothing", htmlFor=ids.SMOOTHING, className="ctl-label"),
            html.Div(
                dcc.Slider(
                    id=ids.SMOOTHING,
                    min=0,
                    max=0.99,
                    step=0.01,
                    value=0.6,
                    marks={0: "0", 0.6: "0.6", 0.99: ".99"},
                    tooltip={"placement": "bottom", "always_visible": False},
                    updatemode="mouseup",
                ),
                className="ctl-slider",
                title="Debiased exponential moving average, as in TensorBoard",
            ),
            html.Label("x axis", className="ctl-label"),
            dcc.RadioItems(
                id=ids.X_AXIS,
                options=[
                    {"label": "step", "value": "step"},
                    {"label": "relative", "value": "relative"},
                    {"label": "wall time", "value": "wall"},
                ],
                value="step",
                inline=True,
                className="ctl-radio",
            ),
            dcc.Checklist(
                id=ids.SYNC_X,
                options=[{"label": "sync zoom", "value": "sync"}],
                value=[],
                inline=True,
                className="ctl-radio",
            ),
            html.Label("view", className="ctl-label"),
            dcc.RadioItems(
                id=ids.VIEW,
                options=[
                    {"label": "cockpit", "value": "cockpit"},
                    {"label": "grid", "value": "grid"},
                ],
                value="cockpit",
                inline=True,
                className="ctl-radio",
            ),
            html.Label("lines", className="ctl-label"),
            dcc.RadioItems(
                id=ids.LAYERS,
                options=[
                    {"label": "total", "value": "total"},
                    {"label": "per layer", "value": "layers"},
                ],
                value="total",
                inline=True,
                className="ctl-radio",
            ),
        ],
        className="controls",
    )


def card(
    panel: dict[str, Any],
    figure: Any,
    log_y: bool,
    gen: int = 0,
    runs: list[str] | None = None,
) -> html.Div:
    """One panel: title with how-to-read tooltip, buttons, graph, status line.

    ``runs``: for a histogram panel, the runs it can show (a picker when
    several); ``log_y`` is then whether its count axes are logarithmic.
    """
    pid = panel["id"]
    schedules = sorted({m["schedule"] for m in panel["members"] if m["schedule"]})
    axes, log_title = LOG_AXES.get(panel["kind"], ("yaxis", "logarithmic value axis"))
    picker = (
        [runlist.picker(ids.panel_run(pid), runs)] if runs and len(runs) > 1 else []
    )
    buttons = [
        *picker,
        html.Button(
            "log",
            id=ids.panel_button(pid, "log"),
            className="btn btn-on" if log_y else "btn",
            title=log_title,
        ),
        html.Button(
            "⤢", id=ids.panel_button(pid, "big"), className="btn", title="enlarge"
        ),
        html.Button(
            "csv", id=ids.panel_download(pid, "csv"), className="btn", title="data"
        ),
        html.Button(
            "json", id=ids.panel_download(pid, "json"), className="btn", title="data"
        ),
        html.Button(
            "png", id=ids.panel_button(pid, "png"), className="btn", title="image"
        ),
    ]
    return html.Div(
        [
            html.Div(
                [
                    html.Span(panel["title"], className="card-title"),
                    help_badge(panel.get("help") or "no description"),
                    html.Span(", ".join(schedules), className="card-schedule"),
                    html.Span(buttons, className="card-buttons"),
                ],
                className="card-head",
            ),
            dcc.Graph(
                id=ids.instrument_graph(pid, gen),
                figure=figure,
                config={
                    "displaylogo": False,
                    "responsive": True,
                    "toImageButtonOptions": {"filename": _file_name(pid), "scale": 2},
                    "modeBarButtonsToRemove": ["lasso2d", "select2d"],
                },
                style={"height": GRAPH_HEIGHT},
                className="card-graph",
            ),
            html.Div(
                "",
                id=ids.instrument_status(pid, gen),
                className="card-status",
                tabIndex="0",
                title="click or Enter: show the whole line",
            ),
            dcc.Store(id=ids.panel_log(pid), data=log_y),
        ],
        id=ids.instrument_card(pid),
        className="card",
        **{"data-panel": pid, "data-log-axis": axes},
    )


def help_badge(text: str) -> html.Span:
    """A "?" that shows ``text`` on hover or keyboard focus (CSS tooltip)."""
    attrs: dict[str, Any] = {
        "data-help": text,
        "className": "card-help",
        "tabIndex": "0",
        "role": "note",
        "aria-label": text,
    }
    return html.Span("?", **attrs)


def _file_name(pid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in pid)


def grid(cards: dict[str, list[html.Div]]) -> list[html.Section | html.Div]:
    """Cockpit's columns (step size, gradients, curvature) side by side, then rest."""
    columns = [
        html.Section(
            [_heading(g), html.Div(cards[g], className="stack")],
            className="group column",
            style={"--group": GROUP_COLORS.get(g, "#9ca3af")},
        )
        for g in COLUMNS
        if g in cards
    ]
    rest = [g for g in WIDE_ORDER if g in cards] + sorted(
        set(cards) - set(COLUMNS) - set(WIDE_ORDER)
    )
    out: list[html.Section | html.Div] = []
    if columns:
        out.append(html.Div(columns, className="columns"))
    out += [
        html.Section(
            [_heading(g), html.Div(cards[g], className="grid")],
            className="group wide",
            style={"--group": GROUP_COLORS.get(g, "#9ca3af")},
        )
        for g in rest
    ]
    return out


def _heading(group: str) -> html.H2:
    return html.H2(group.upper(), className="group-title")


def run_meta(detail: dict[str, Any], color: str) -> html.Details:
    """A run's metadata (model, optimizer, config) and instrument failures."""
    meta = detail.get("meta") or {}
    rows = [
        html.Tr([html.Th(k), html.Td(_meta_value(v, k))])
        for k, v in sorted(meta.items(), key=lambda kv: kv[0])
    ]
    errors = detail.get("errors") or {}
    return html.Details(
        [
            html.Summary(
                [
                    html.Span(className="swatch", style={"background": color}),
                    f"{detail['run']} details",
                ]
            ),
            html.Table(rows or [html.Tr(html.Td("no metadata sent"))]),
            html.Div(
                [html.Div(f"⚠ {n}: {e}", className="err") for n, e in errors.items()]
            ),
        ],
        className="meta",
        open=False,
    )


def local_time(epoch: float) -> html.Span:
    """A Unix time shown in the browser's time zone (assets/keys.js fills it)."""
    attrs: dict[str, Any] = {"data-epoch": str(epoch), "className": "epoch"}
    return html.Span(**attrs)


def _meta_value(value: Any, key: str = "") -> Any:
    if key in TIME_KEYS and isinstance(value, int | float):
        return local_time(float(value))
    if isinstance(value, dict | list):
        return html.Pre(json.dumps(value, indent=1, default=str))
    text = str(value)
    return html.Pre(text) if "\n" in text else text
