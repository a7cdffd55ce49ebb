"""The run list: a checklist replaced whole when its runs or their order change.

Dash 4.4's renderer fails (``TypeError: Cannot read properties of undefined
(reading 'props')``) when a ``dcc.Checklist`` option whose label is a component
is inserted before others, and then stops updating the list. New runs come
first, so the list is rebuilt as a new component whenever the shown runs change
(a run starts or ends in the filter, the filter changes); between those changes
only the labels are updated, in place, which the renderer handles.
"""

from __future__ import annotations

from typing import Any

from dash import dcc, no_update

from glasscockpit.dashboard import ids


def checklist(options: list[dict[str, Any]], value: list[str]) -> dcc.Checklist:
    """The run checklist component (always made here, so rebuilds look the same)."""
    return dcc.Checklist(
        id=ids.RUN_LIST,
        options=options,
        value=value,
        className="run-list",
        labelClassName="run-item",
    )


def update(
    options: list[dict[str, Any]],
    order: list[str] | None,
    selected: list[str],
    value: Any,
) -> tuple[Any, Any, Any, Any]:
    """(box children, options, order, value) outputs for a new set of ``options``.

    ``order`` is the run order the browser's checklist holds; ``value`` the
    selection to set (``no_update`` keeps the user's).
    """
    shown = [o["value"] for o in options]
    if shown == (order or []):
        return no_update, options, no_update, value
    keep = value if isinstance(value, list) else selected
    return checklist(options, keep), no_update, shown, no_update
