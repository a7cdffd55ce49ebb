"""Component ids, made only here so no dict id is typed by hand elsewhere."""

from __future__ import annotations

RUN_SELECT = "run-select"
RUN_STATUS = "run-status"
GRID = "instrument-grid"
TICK = "refresh-tick"
CURSOR = "panel-cursor"
RUN_META = "run-meta"


def instrument_graph(name: str) -> dict[str, str]:
    """Id of the graph of one instrument's panel."""
    return {"type": "instrument-graph", "name": name}


def instrument_card(name: str) -> dict[str, str]:
    """Id of the card around one instrument's panel."""
    return {"type": "instrument-card", "name": name}


def instrument_status(name: str) -> dict[str, str]:
    """Id of the status line under one instrument's panel."""
    return {"type": "instrument-status", "name": name}
