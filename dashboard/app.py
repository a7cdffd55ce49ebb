"""The Dash app, mounted on the server's FastAPI app (Dash's FastAPI backend)."""

from __future__ import annotations

import json
import time
from typing import Any

from dash import ALL, Dash, Input, Output, State, ctx, no_update
from dash.exceptions import PreventUpdate

from glasscockpit.dashboard import ids
from glasscockpit.dashboard.client import DataProvider
from glasscockpit.dashboard.layout import card, grid, page
from glasscockpit.dashboard.live import full_figure, panel_update

STATUS_ICON = {"live": "●", "stale": "◐", "finished": "○", "failed": "✖"}


def run_label(run: dict[str, Any]) -> str:
    """Dropdown label: status dot, id, last step."""
    step = run["last_step"] if run["last_step"] is not None else "–"
    return f"{STATUS_ICON.get(run['status'], '')} {run['run']}  (step {step})"


def status_text(run: dict[str, Any]) -> str:
    """Header badge: status and how long ago the last frame came."""
    ago = max(0.0, time.time() - run["last_frame_time"])
    text = f"{run['status']} · last frame {ago:.0f} s ago · step {run['last_step']}"
    if run.get("nonfinite"):
        text += f" · ⚠ {run['nonfinite']} NaN/Inf readings"
    return text


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

    @app.callback(
        Output(ids.RUN_SELECT, "options"),
        Output(ids.RUN_SELECT, "value"),
        Output(ids.RUN_STATUS, "children"),
        Input(ids.TICK, "n_intervals"),
        State(ids.RUN_SELECT, "value"),
    )
    def refresh_runs(_n: int | None, selected: str | None) -> tuple[Any, Any, Any]:
        runs = provider.list_runs()
        if not runs:
            return [], None, "no runs yet: attach the agent to a training script"
        options = [{"label": run_label(r), "value": r["run"]} for r in runs]
        known = {r["run"]: r for r in runs}
        value = selected if selected in known else runs[0]["run"]
        return (
            options,
            value if value != selected else no_update,
            status_text(known[value]),
        )

    @app.callback(
        Output(ids.GRID, "children"),
        Output(ids.CURSOR, "data"),
        Output(ids.RUN_META, "children"),
        Input(ids.RUN_SELECT, "value"),
    )
    def build_grid(run: str | None) -> tuple[Any, Any, Any]:
        if not run:
            raise PreventUpdate
        try:
            detail = provider.run_detail(run)
        except LookupError:
            raise PreventUpdate from None
        groups: dict[str, list[Any]] = {}
        panels: dict[str, Any] = {}
        for spec in detail["instruments"]:
            figure, cursor = full_figure(provider, run, spec)
            panels[spec["name"]] = cursor
            groups.setdefault(spec["panel"]["group"], []).append(card(spec, figure))
        meta = json.dumps(detail["meta"], indent=2, default=str)
        return grid(groups), {"run": run, "panels": panels}, meta

    @app.callback(
        Output(ids.instrument_graph(ALL), "figure"),  # type: ignore[arg-type]
        Output(ids.instrument_graph(ALL), "extendData"),  # type: ignore[arg-type]
        Output(ids.instrument_status(ALL), "children"),  # type: ignore[arg-type]
        Output(ids.CURSOR, "data", allow_duplicate=True),
        Input(ids.TICK, "n_intervals"),
        State(ids.CURSOR, "data"),
        State(ids.instrument_graph(ALL), "id"),  # type: ignore[arg-type]
        prevent_initial_call=True,
    )
    def tick(_n: int, cursor: dict[str, Any], graph_ids: list[dict[str, str]]) -> Any:
        run = (cursor or {}).get("run")
        if not run or not graph_ids:
            raise PreventUpdate
        try:
            detail = provider.run_detail(run)
        except LookupError:
            raise PreventUpdate from None
        specs = {s["name"]: s for s in detail["instruments"]}
        figures: list[Any] = []
        extends: list[Any] = []
        statuses: list[Any] = []
        panels = dict(cursor.get("panels", {}))
        for gid in graph_ids:
            name = gid["name"]
            spec = specs.get(name)
            if spec is None:
                figures.append(no_update)
                extends.append(no_update)
                statuses.append(no_update)
                continue
            fig, ext, panels[name] = panel_update(provider, run, spec, panels.get(name))
            figures.append(fig)
            extends.append(ext)
            error = detail["errors"].get(name)
            step = panels[name].get("step")
            statuses.append(
                f"⚠ {error}" if error else f"step {step}" if step is not None else ""
            )
        if all(f is no_update for f in figures) and all(
            e is no_update for e in extends
        ):
            return figures, extends, statuses, no_update
        return figures, extends, statuses, {"run": run, "panels": panels}

    _ = ctx  # callbacks read the triggering context through dash.ctx when needed
    return app
