"""Page layout: header with run selector and status, the instrument grid."""

from __future__ import annotations

from typing import Any

from dash import dcc, html

from glasscockpit.dashboard import ids

GROUP_ORDER = ("step size", "gradients", "curvature", "performance", "other")


def page(refresh_ms: int) -> html.Div:
    """The whole page."""
    return html.Div(
        [
            html.Header(
                [
                    html.H1("glasscockpit", className="brand"),
                    dcc.Dropdown(
                        id=ids.RUN_SELECT,
                        placeholder="waiting for a run…",
                        clearable=False,
                        className="run-select",
                    ),
                    html.Span(id=ids.RUN_STATUS, className="run-status"),
                ],
                className="header",
            ),
            html.Details([html.Summary("run details"), html.Pre(id=ids.RUN_META)]),
            html.Div(id=ids.GRID, className="grid-groups"),
            dcc.Interval(id=ids.TICK, interval=refresh_ms),
            dcc.Store(id=ids.CURSOR, data={}),
        ],
        className="page",
    )


def card(spec: dict[str, Any], figure: Any) -> html.Div:
    """One instrument panel: title (with how-to-read tooltip), graph, status line."""
    panel = spec["panel"]
    return html.Div(
        [
            html.Div(
                [
                    html.Span(panel["title"], className="card-title"),
                    html.Span(
                        "(?)", title=panel.get("help", ""), className="card-help"
                    ),
                    html.Span(
                        f"  {spec.get('schedule', '')}", className="card-schedule"
                    ),
                ],
                className="card-head",
            ),
            dcc.Graph(
                id=ids.instrument_graph(spec["name"]),
                figure=figure,
                config={"displaylogo": False, "responsive": True},
                style={"height": "260px"},
            ),
            html.Div(
                "", id=ids.instrument_status(spec["name"]), className="card-status"
            ),
        ],
        id=ids.instrument_card(spec["name"]),
        className="card",
    )


def grid(cards: dict[str, list[html.Div]]) -> list[html.Section]:
    """Cards grouped like Cockpit: step size, gradients, curvature, performance."""
    order = [g for g in GROUP_ORDER if g in cards] + sorted(
        set(cards) - set(GROUP_ORDER)
    )
    return [
        html.Section(
            [html.H2(group.title()), html.Div(cards[group], className="grid")],
            className="group",
        )
        for group in order
    ]
