"""Component ids, made only here so no dict id is typed by hand elsewhere."""

from __future__ import annotations

from typing import Any

RUN_FILTER = "run-filter"
RUN_LIST = "run-list"
RUN_LIST_BOX = "run-list-box"
RUN_ORDER = "run-order"
RUN_COLORS = "run-colors"
RUN_META = "run-meta"
RUN_STATUS = "run-status"
RUN_ALL = "run-select-all"
RUN_ONE = "run-select-newest"
RUN_TABLE = "run-table"
RUN_TABLE_TOGGLE = "run-table-toggle"
RUN_TABLE_BODY = "run-table-body"
RUN_COMPARE = "run-compare"
WARNINGS = "run-warnings"
SMOOTHING = "smoothing"
X_AXIS = "x-axis"
LAYERS = "layers"
GRID = "instrument-grid"
VIEW = "view"
THEME = "theme"
SYNC_X = "sync-x"
URL_INIT = "url-init"
URL_WRITTEN = "url-written"
GRID_STATE = "grid-state"
TICK = "refresh-tick"
VISIBLE = "visible-panels"
CURSOR = "panel-cursor"
TICK_DONE = "tick-done"
DOWNLOAD = "panel-download-file"

#: Per-panel buttons handled in the browser.
BUTTONS = ("log", "big", "png")
#: Per-panel data downloads handled by the server.
FORMATS = ("csv", "json")


def instrument_graph(name: Any, gen: Any = 0) -> dict[str, Any]:
    """Id of the graph of one panel (an instrument name or a shared card id).

    ``gen`` is the grid's generation: a late answer meant for an earlier grid
    then addresses graphs that no longer exist instead of their successors.
    """
    return {"type": "instrument-graph", "name": name, "gen": gen}


def instrument_card(name: str) -> dict[str, str]:
    """Id of the card around one panel."""
    return {"type": "instrument-card", "name": name}


def instrument_status(name: Any, gen: Any = 0) -> dict[str, Any]:
    """Id of the status line under one panel (``gen`` as for the graph)."""
    return {"type": "instrument-status", "name": name, "gen": gen}


def panel_button(name: str, action: str) -> dict[str, str]:
    """Id of one of a panel's browser-side buttons (``BUTTONS``)."""
    return {"type": "panel-button", "name": name, "action": action}


def panel_download(name: str, fmt: str) -> dict[str, str]:
    """Id of a panel's data download button (``FORMATS``)."""
    return {"type": "panel-download", "name": name, "fmt": fmt}


def panel_log(name: str) -> dict[str, str]:
    """Id of the store holding whether a panel's value axis is logarithmic."""
    return {"type": "panel-log", "name": name}


def panel_run(name: str) -> dict[str, str]:
    """Id of a histogram panel's run picker."""
    return {"type": "panel-run", "name": name}
