"""Callbacks that run in the browser: visibility gate, log-y, enlarge, PNG.

The JavaScript lives in assets/dashboard.js; these only wire it to ids.
"""

from __future__ import annotations

from dash import MATCH, ClientsideFunction, Dash, Input, Output, State

from glasscockpit.dashboard import ids


def register(app: Dash) -> None:
    """Add the browser-side callbacks to ``app``."""
    app.clientside_callback(  # type: ignore[no-untyped-call]
        ClientsideFunction("glasscockpit", "visible"),
        Output(ids.VISIBLE, "data"),
        Input(ids.TICK, "n_intervals"),
        Input(ids.GRID_STATE, "data"),
        Input(ids.SMOOTHING, "value"),
        Input(ids.X_AXIS, "value"),
        Input(ids.LAYERS, "value"),
    )
    app.clientside_callback(  # type: ignore[no-untyped-call]
        ClientsideFunction("glasscockpit", "view"),
        Output(ids.GRID, "className"),
        Input(ids.VIEW, "value"),
    )
    _url_state(app)
    app.clientside_callback(  # type: ignore[no-untyped-call]
        ClientsideFunction("glasscockpit", "theme"),
        Output(ids.THEME, "data"),
        Input(ids.URL_INIT, "data"),
    )
    app.clientside_callback(  # type: ignore[no-untyped-call]
        ClientsideFunction("glasscockpit", "tickDone"),
        Output(ids.TICK_DONE, "data"),
        Input(ids.CURSOR, "data"),
        prevent_initial_call=True,
    )
    app.clientside_callback(  # type: ignore[no-untyped-call]
        ClientsideFunction("glasscockpit", "toggleLog"),
        Output(ids.panel_log(MATCH), "data"),  # type: ignore[arg-type]
        Output(ids.panel_button(MATCH, "log"), "className"),  # type: ignore[arg-type]
        Input(ids.panel_button(MATCH, "log"), "n_clicks"),  # type: ignore[arg-type]
        State(ids.panel_log(MATCH), "data"),  # type: ignore[arg-type]
        prevent_initial_call=True,
    )
    app.clientside_callback(  # type: ignore[no-untyped-call]
        ClientsideFunction("glasscockpit", "enlarge"),
        Output(ids.instrument_card(MATCH), "className"),  # type: ignore[arg-type]
        Input(ids.panel_button(MATCH, "big"), "n_clicks"),  # type: ignore[arg-type]
        prevent_initial_call=True,
    )
    app.clientside_callback(  # type: ignore[no-untyped-call]
        ClientsideFunction("glasscockpit", "png"),
        Output(ids.panel_button(MATCH, "png"), "title"),  # type: ignore[arg-type]
        Input(ids.panel_button(MATCH, "png"), "n_clicks"),  # type: ignore[arg-type]
        prevent_initial_call=True,
    )


def _url_state(app: Dash) -> None:
    """The view's state in the URL (assets/urlstate.js): read once, kept current."""
    controls = (ids.SMOOTHING, ids.X_AXIS, ids.LAYERS, ids.VIEW, ids.RUN_FILTER)
    app.clientside_callback(  # type: ignore[no-untyped-call]
        ClientsideFunction("glasscockpit_url", "urlRead"),
        *(Output(c, "value", allow_duplicate=True) for c in controls),
        Input(ids.URL_INIT, "data"),
        prevent_initial_call="initial_duplicate",
    )
    app.clientside_callback(  # type: ignore[no-untyped-call]
        ClientsideFunction("glasscockpit_url", "urlWrite"),
        Output(ids.URL_WRITTEN, "data"),
        Input(ids.RUN_LIST, "value"),
        *(Input(c, "value") for c in (ids.RUN_FILTER, *controls[:4])),
    )
    app.clientside_callback(  # type: ignore[no-untyped-call]
        ClientsideFunction("glasscockpit_url", "urlRuns"),
        Output(ids.RUN_LIST, "value", allow_duplicate=True),
        Input(ids.RUN_ORDER, "data"),
        prevent_initial_call=True,
    )
