"""The Dash app, mounted on the server's FastAPI app (Dash's FastAPI backend).

Callbacks, each with one job:

* ``refresh_runs`` (every tick): the run list with status badges and colours.
* ``render_grid`` (run selection): the cards of every panel, empty; the run details.
* ``visible`` (browser, every tick): which cards are on screen.
* ``tick`` (after ``visible``, or a control change): new points of visible panels
  as ``extendData``; a full figure only for new panels or changed controls.
* browser-side: log-y, enlarge, PNG; server-side: CSV/JSON download.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from dash import (
    ALL,
    Dash,
    Input,
    Output,
    State,
    ctx,
    html,
    no_update,
)
from dash.exceptions import PreventUpdate

from glasscockpit.dashboard import browser, diagnoses, ids, run_table, runlist
from glasscockpit.dashboard.client import DataProvider
from glasscockpit.dashboard.export import panel_file
from glasscockpit.dashboard.layout import (
    COLUMNS,
    card,
    grid,
    page,
    run_meta,
)
from glasscockpit.dashboard.live import RunData, status_line, update_panel
from glasscockpit.dashboard.model import LINE_KINDS, ViewOptions, build_panels
from glasscockpit.dashboard.panels import SNAPSHOT_KINDS
from glasscockpit.dashboard.panels.style import base_layout, run_colors, themed
from glasscockpit.dashboard.run_filter import filter_runs

_generation = itertools.count(1)
T = TypeVar("T")


def offload(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """Run a callback's work in a worker thread, as an async callback.

    Dash's FastAPI backend calls synchronous callbacks on the event loop, so a
    slow redraw would stall every agent's websocket ingest and every other
    request; ``asyncio.to_thread`` keeps the loop free (and copies the context,
    so ``dash.ctx`` still works inside).
    """

    @functools.wraps(fn)
    async def run(*args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    return run


def placeholder(panel: dict[str, Any]) -> dict[str, Any]:
    """An empty figure with the panel's layout, until the first tick fills it."""
    return {"data": [], "layout": base_layout(panel, showlegend=False)}


def create_dash(server: Any, provider: DataProvider, refresh_ms: int = 500) -> Dash:
    """Build the dashboard on ``server`` (a FastAPI app), reading ``provider``."""
    app = Dash(
        __name__,
        server=server,
        title="glasscockpit",
        update_title="",
        suppress_callback_exceptions=True,
    )
    app.layout = page(refresh_ms)
    _run_callbacks(app, provider)
    _panel_callbacks(app, provider)
    browser.register(app)
    run_table.register(app, provider)
    diagnoses.register(app, provider, ids.RUN_LIST, ids.TICK_DONE, ids.GRID_STATE)
    return app


def _run_callbacks(app: Dash, provider: DataProvider) -> None:
    @app.callback(
        Output(ids.RUN_LIST_BOX, "children"),
        Output(ids.RUN_LIST, "options"),
        Output(ids.RUN_ORDER, "data"),
        Output(ids.RUN_LIST, "value"),
        Output(ids.RUN_COLORS, "data"),
        Output(ids.WARNINGS, "children"),
        Output(ids.RUN_STATUS, "children"),
        Input(ids.TICK, "n_intervals"),
        Input(ids.RUN_FILTER, "value"),
        State(ids.RUN_LIST, "value"),
        State(ids.RUN_ORDER, "data"),
        State(ids.RUN_COLORS, "data"),
    )
    @offload
    def refresh_runs(
        _n: int | None,
        pattern: str | None,
        selected: list[str] | None,
        order: list[str] | None,
        old_colors: dict[str, str] | None,
    ) -> tuple[Any, ...]:
        runs = provider.list_runs()  # newest first
        if not runs:
            box = runlist.update([], order, [], no_update)
            return (*box, no_update, [], "no runs yet")
        colors = run_colors([r["run"] for r in reversed(runs)])
        now = time.time()
        shown = filter_runs(runs, pattern)
        selected = [r for r in selected or [] if r in colors]
        value: Any = no_update
        if not selected and runs:
            value = selected = [runs[0]["run"]]
        options = [
            {"label": runlist.run_label(r, colors[r["run"]], now), "value": r["run"]}
            for r in shown
        ]
        warnings = [
            html.Div(
                f"⚠ {r['run']}: {r['nonfinite']} NaN/Inf readings, marked with red × "
                "in the panels",
                className="warning",
            )
            for r in runs
            if r["run"] in selected and r.get("nonfinite")
        ]
        header = [
            html.Div(runlist.status_text(r, now), style={"color": colors[r["run"]]})
            for r in runs
            if r["run"] in selected
        ][:3]
        return (
            *runlist.update(options, order, selected, value),
            colors if colors != old_colors else no_update,
            warnings,
            header,
        )

    @app.callback(
        Output(ids.RUN_LIST, "value", allow_duplicate=True),
        Input(ids.RUN_ALL, "n_clicks"),
        Input(ids.RUN_ONE, "n_clicks"),
        State(ids.RUN_FILTER, "value"),
        prevent_initial_call=True,
    )
    @offload
    def select_many(_all: int | None, _one: int | None, pattern: str | None) -> Any:
        runs = filter_runs(provider.list_runs(), pattern)
        if not runs:
            raise PreventUpdate
        if ctx.triggered_id == ids.RUN_ONE:
            return [runs[0]["run"]]
        return [r["run"] for r in runs]

    @app.callback(
        Output(ids.GRID, "children"),
        Output(ids.GRID_STATE, "data"),
        Output(ids.RUN_META, "children"),
        Output(ids.GRID, "style"),
        Input(ids.RUN_LIST, "value"),
        State(ids.RUN_COLORS, "data"),
        State(ids.GRID_STATE, "data"),
    )
    @offload
    def render_grid(
        selected: list[str] | None,
        colors: dict[str, str] | None,
        drawn: dict[str, Any] | None,
    ) -> tuple[Any, Any, Any, Any]:
        if not selected or selected == (drawn or {}).get("runs"):
            # A rebuilt run list fires this with the runs already drawn.
            raise PreventUpdate
        details: dict[str, dict[str, Any]] = {}
        extras: dict[str, dict[str, dict[str, Any]]] = {}
        for run in selected:
            try:
                details[run] = provider.run_detail(run)
                extras[run] = provider.instrument_panels(run)
            except LookupError:
                continue
        runs = [r for r in selected if r in details]
        panels = build_panels(runs, details, extras)
        gen = next(_generation)
        groups: dict[str, list[Any]] = {}
        for panel in panels:
            having: list[str] | None = None
            log_y = bool(panel["log_y"])
            if panel["kind"] not in LINE_KINDS:  # one run at a time
                name = panel["members"][0]["name"]
                having = [r for r in runs if name in _names(details[r])]
                log_y = log_y or panel["kind"] in SNAPSHOT_KINDS  # counts: log
            groups.setdefault(panel["group"] or "other", []).append(
                card(panel, placeholder(panel), log_y, gen, having)
            )
        colors = colors or run_colors(runs)
        shown = {r: colors.get(r, "#1f77b4") for r in runs}
        state = {
            "gen": gen,
            "runs": runs,
            "panels": {p["id"]: p for p in panels},
            "colors": shown,
        }
        meta = [run_meta(details[r], shown[r]) for r in runs]
        # The drawn runs, readable from the page (tests wait for it).
        attrs: dict[str, Any] = {"data-runs": " ".join(runs), "hidden": True}
        marker = html.Div(className="grid-runs", **attrs)
        # The cockpit view's columns: Cockpit's groups, then one for the rest.
        columns = sum(g in groups for g in COLUMNS) + (set(groups) > set(COLUMNS))
        style = {"--cols": str(max(columns, 1))}
        return [marker, *grid(groups)], state, meta, style


def _names(detail: dict[str, Any]) -> set[str]:
    return {i["name"] for i in detail.get("instruments", [])}


def _panel_callbacks(app: Dash, provider: DataProvider) -> None:
    @app.callback(
        Output(ids.instrument_graph(ALL, ALL), "figure"),
        Output(ids.instrument_graph(ALL, ALL), "extendData"),
        Output(ids.instrument_status(ALL, ALL), "children"),
        Output(ids.CURSOR, "data"),
        Input(ids.VISIBLE, "data"),
        State(ids.SMOOTHING, "value"),
        State(ids.X_AXIS, "value"),
        State(ids.LAYERS, "value"),
        State(ids.GRID_STATE, "data"),
        State(ids.CURSOR, "data"),
        State(ids.instrument_graph(ALL, ALL), "id"),
        State(ids.panel_log(ALL), "data"),  # type: ignore[arg-type]
        State(ids.panel_run(ALL), "value"),  # type: ignore[arg-type]
        State(ids.panel_run(ALL), "id"),  # type: ignore[arg-type]
        State(ids.THEME, "data"),
        prevent_initial_call=True,
    )
    @offload
    def tick(
        visible: dict[str, Any] | None,
        smoothing: Any,
        x_axis: Any,
        layers: Any,
        grid_state: dict[str, Any] | None,
        cursor: dict[str, Any] | None,
        graph_ids: list[dict[str, str]],
        logs: list[bool],
        picked: list[str | None],
        picker_ids: list[dict[str, str]],
        theme: str | None,
    ) -> Any:
        picks = {p["name"]: v for p, v in zip(picker_ids, picked, strict=True)}
        grid_state = grid_state or {}
        if not graph_ids or not grid_state.get("panels"):
            # Still answer with the cursor: its arrival opens the tick gate.
            none = [no_update] * len(graph_ids)
            return none, none, none, cursor or {}
        opts = ViewOptions.parse(smoothing, x_axis, layers)
        cursor = cursor or {}
        entries: dict[str, Any] = (
            dict(cursor.get("panels", {}))
            if cursor.get("gen") == grid_state["gen"] and cursor.get("theme") == theme
            else {}  # a new grid, or the system theme changed: redraw all
        )
        on_screen = set((visible or {}).get("ids", []))
        drawn = (visible or {}).get("traces", {})
        for pid, entry in list(entries.items()):
            panel = grid_state["panels"].get(pid)
            expected = (entry or {}).get("state", {}).get("traces")
            if panel and panel["kind"] in LINE_KINDS and drawn.get(pid) != expected:
                # The plot does not hold what the cursor says (a figure lost while
                # the graph mounted, a late answer): redraw instead of extending.
                entries.pop(pid)
        rd = RunData(provider, grid_state["runs"])
        figures: list[Any] = []
        extends: list[Any] = []
        statuses: list[Any] = []
        for gid, log_y in zip(graph_ids, logs, strict=True):
            pid = gid["name"]
            panel = grid_state["panels"].get(pid)
            if panel is None or pid not in on_screen:
                figures.append(no_update)
                extends.append(no_update)
                statuses.append(no_update)
                continue
            try:
                fig, ext, entries[pid] = update_panel(
                    rd,
                    panel,
                    grid_state["colors"],
                    opts,
                    bool(log_y),
                    entries.get(pid),
                    picks.get(pid),
                )
            except Exception as exc:  # one bad panel must not stop the others
                fig, ext = no_update, no_update
                statuses.append(
                    html.Span(
                        f"⚠ cannot draw: {type(exc).__name__}: {exc}", className="warn"
                    )
                )
            else:
                text = status_line(rd, panel, entries[pid], bool(log_y))
                statuses.append(
                    html.Span(text, className="warn" if "⚠" in text else "", title=text)
                )
            figures.append(themed(fig, theme or "light"))
            extends.append(ext)
        cursor_out = {"gen": grid_state["gen"], "panels": entries, "theme": theme}
        return figures, extends, statuses, cursor_out

    @app.callback(
        Output(ids.DOWNLOAD, "data"),
        Input(ids.panel_download(ALL, ALL), "n_clicks"),  # type: ignore[arg-type]
        State(ids.GRID_STATE, "data"),
        State(ids.LAYERS, "value"),
        prevent_initial_call=True,
    )
    @offload
    def download(
        clicks: list[int | None], grid_state: dict[str, Any] | None, layers: Any
    ) -> Any:
        trigger = ctx.triggered_id
        if not trigger or not any(clicks) or not grid_state:
            raise PreventUpdate
        panel = grid_state["panels"].get(trigger["name"])
        if panel is None:
            raise PreventUpdate
        return panel_file(provider, panel, grid_state["runs"], trigger["fmt"], layers)
