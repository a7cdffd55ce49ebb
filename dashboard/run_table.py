"""The run table: one row per run (as TensorBoard's and W&B's), and a config diff.

Rows are built from the provider's run summaries and details by pure functions
(tested without a browser); ``register`` wires a ``dash_table.DataTable`` with
native sort, filter and row selection. Selecting rows sets the run list's
selection, and every refresh mirrors the run list's selection back into the
table, so the two never disagree for longer than a tick.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

from dash import Dash, Input, Output, State, html, no_update
from dash.dash_table.DataTable import DataTable
from dash.exceptions import PreventUpdate

from glasscockpit.dashboard import ids
from glasscockpit.dashboard.client import DataProvider

#: Fixed columns: (id, header). Config keys follow as ``config.<key>``.
FIXED = (
    ("run", "run"),
    ("status", "status"),
    ("started", "started"),
    ("duration_s", "duration (s)"),
    ("steps", "steps"),
    ("optimizer", "optimizer"),
    ("lr", "learning rate"),
    ("batch_size", "batch size"),
    ("parameters", "parameters"),
)
HEADERS = dict(FIXED)
#: Columns that describe a run's setup, compared side by side with its config.
SETUP = ("optimizer", "lr", "batch_size", "parameters")
CONFIG = "config."
#: Config keys read as the batch size / learning rate when the script gives them.
BATCH_KEYS = ("batch_size", "batch", "bs", "train_batch_size")
LR_KEYS = ("lr", "learning_rate")
NUMERIC = frozenset({"duration_s", "steps", "lr", "batch_size", "parameters"})


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"a.b": value}``; lists and other objects as JSON text."""
    if not isinstance(config, dict):
        return {prefix or "value": cell(config)} if config is not None else {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = cell(value)
    return out


def cell(value: Any) -> Any:
    """A value a DataTable cell shows and sorts: numbers stay numbers."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float | str) or value is None:
        return value
    return json.dumps(value, default=str, sort_keys=True)


def _first(config: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((config[k] for k in keys if k in config), None)


def row(detail: dict[str, Any], now: float) -> dict[str, Any]:
    """One run's row from its ``run_detail`` (summary fields plus ``meta``).

    ``started`` is the agent's start time (else the server's first sight), in
    the server's local time zone; the duration runs to now for a live run and
    to the last frame otherwise.
    """
    meta = detail.get("meta") or {}
    raw = meta.get("config")
    config = flatten(raw) if raw is not None else {}
    defaults = meta.get("optimizer_defaults") or {}
    start = meta.get("started", detail.get("created"))
    end = now if detail.get("status") == "live" else detail.get("last_frame_time")
    last = detail.get("last_step")
    out: dict[str, Any] = {
        "id": detail["run"],
        "run": detail["run"],
        "status": detail.get("status"),
        "started": _local(start),
        "duration_s": (
            round(max(0.0, float(end) - float(start)), 1)
            if isinstance(start, int | float) and isinstance(end, int | float)
            else None
        ),
        "steps": None if last is None else int(last) + 1,
        "optimizer": cell(meta.get("optimizer")),
        "lr": cell(_first(config, LR_KEYS) or defaults.get("lr")),
        "batch_size": cell(_first(config, BATCH_KEYS)),
        "parameters": cell(meta.get("parameters")),
    }
    out.update({CONFIG + k: v for k, v in config.items()})
    return out


def _local(epoch: Any) -> str | None:
    if not isinstance(epoch, int | float):
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(epoch)))


def columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fixed columns, then every config key any row has, sorted."""
    keys = sorted({k for r in rows for k in r if k.startswith(CONFIG)})
    out = [
        {"id": c, "name": name, "type": "numeric" if c in NUMERIC else "any"}
        for c, name in FIXED
    ]
    return out + [{"id": k, "name": k[len(CONFIG) :], "type": "any"} for k in keys]


def compare(rows: list[dict[str, Any]]) -> list[tuple[str, list[Any], bool]]:
    """(name, value per row, whether they differ) for the setup and config keys.

    Setup rows carry their column header ("learning rate"), config rows their
    key as the script named it ("lr").

    A key a run lacks reads as None, so it differs from a run that has it.
    """
    keys = [*SETUP, *sorted({k for r in rows for k in r if k.startswith(CONFIG)})]
    out = []
    for key in keys:
        values = [r.get(key) for r in rows]
        if all(v is None for v in values):
            continue
        name = key[len(CONFIG) :] if key.startswith(CONFIG) else HEADERS[key]
        out.append((name, values, len({json.dumps(v) for v in values}) > 1))
    return out


def compare_table(rows: list[dict[str, Any]]) -> html.Div | html.Table:
    """The side-by-side table: one column per run, differing rows highlighted."""
    if len(rows) < 2:
        return html.Div("select two or more runs to compare", className="empty")
    head = html.Tr([html.Th("key"), *[html.Th(r["run"]) for r in rows]])
    body = [
        html.Tr(
            [html.Th(key), *[html.Td("—" if v is None else str(v)) for v in values]],
            className="cmp-diff" if differs else "cmp-same",
        )
        for key, values, differs in compare(rows)
    ]
    return html.Table([html.Thead(head), html.Tbody(body)], className="cmp")


def all_rows(provider: DataProvider) -> list[dict[str, Any]]:
    """Every run's row, newest first (a run gone meanwhile is left out)."""
    now = time.time()
    rows = []
    for summary in provider.list_runs():
        try:
            rows.append(row(provider.run_detail(summary["run"]), now))
        except LookupError:
            continue
    return rows


def section() -> html.Div:
    """The run table above the grid, hidden (no height) until opened."""
    table = DataTable(
        id=ids.RUN_TABLE,
        data=[],
        columns=cast(Any, columns([])),  # Dash's TypedDict, same keys
        sort_action="native",
        filter_action="native",
        row_selectable="multi",
        selected_rows=[],
        page_action="none",
        style_table={"overflowX": "auto", "maxHeight": "320px", "overflowY": "auto"},
        style_cell={"fontSize": "12px", "padding": "2px 6px", "textAlign": "left"},
        style_header={"fontWeight": "600"},
    )
    return html.Div(
        [table, html.Div(id=ids.RUN_COMPARE, className="run-compare")],
        id=ids.RUN_TABLE_BODY,
        className="run-table",
        hidden=True,
    )


def toggle_button() -> html.Button:
    """Opens and closes the table (in the run list's head: no height over the grid)."""
    return html.Button(
        "table",
        id=ids.RUN_TABLE_TOGGLE,
        className="btn",
        title="run table: every run with its setup and config; sort, filter, "
        "select, compare",
    )


def register(app: Dash, provider: DataProvider) -> None:
    """The table's callbacks: toggle, refresh (while open), select, compare."""

    @app.callback(
        Output(ids.RUN_TABLE_BODY, "hidden"),
        Output(ids.RUN_TABLE_TOGGLE, "children"),
        Input(ids.RUN_TABLE_TOGGLE, "n_clicks"),
    )
    def toggle(clicks: int | None) -> tuple[bool, str]:
        shown = bool((clicks or 0) % 2)
        return not shown, "table ▾" if shown else "table"

    @app.callback(
        Output(ids.RUN_TABLE, "data"),
        Output(ids.RUN_TABLE, "columns"),
        Output(ids.RUN_TABLE, "selected_rows"),
        Input(ids.TICK, "n_intervals"),
        Input(ids.RUN_TABLE_TOGGLE, "n_clicks"),
        State(ids.RUN_LIST, "value"),
        State(ids.RUN_TABLE, "data"),
        State(ids.RUN_TABLE, "selected_rows"),
    )
    async def refresh(
        _n: int | None,
        clicks: int | None,
        selected: list[str] | None,
        old: list[dict[str, Any]] | None,
        old_rows: list[int] | None,
    ) -> tuple[Any, Any, Any]:
        if not (clicks or 0) % 2:
            raise PreventUpdate  # closed: no run details read
        # Off the event loop, as the app's other provider reads.
        rows = await asyncio.to_thread(all_rows, provider)
        chosen = set(selected or [])
        picked = [i for i, r in enumerate(rows) if r["run"] in chosen]
        return (
            rows if rows != old else no_update,
            columns(rows) if rows != old else no_update,
            picked if picked != (old_rows or []) else no_update,
        )

    @app.callback(
        Output(ids.RUN_LIST, "value", allow_duplicate=True),
        Input(ids.RUN_TABLE, "selected_row_ids"),
        State(ids.RUN_LIST, "value"),
        prevent_initial_call=True,
    )
    def select(row_ids: list[str] | None, current: list[str] | None) -> Any:
        picked = [str(r) for r in row_ids or []]
        if not picked or sorted(picked) == sorted(current or []):
            raise PreventUpdate  # an empty run list would show nothing at all
        return picked

    @app.callback(
        Output(ids.RUN_COMPARE, "children"),
        Input(ids.RUN_TABLE, "selected_row_ids"),
        Input(ids.RUN_TABLE, "data"),
    )
    def comparison(
        row_ids: list[str] | None, data: list[dict[str, Any]] | None
    ) -> html.Div | html.Table:
        by_id = {r["id"]: r for r in data or []}
        return compare_table([by_id[r] for r in row_ids or [] if r in by_id])
