"""The run list: a checklist replaced whole when its runs or their order change.

Dash 4.4's renderer fails (``TypeError: Cannot read properties of undefined
(reading 'props')``) when a ``dcc.Checklist`` option whose label is a component
is inserted before others, and then stops updating the list. New runs come
first, so the list is rebuilt as a new component whenever the shown runs change
(a run starts or ends in the filter, the filter changes); between those changes
only the labels are updated, in place, which the renderer handles.
"""

from __future__ import annotations

import os
from typing import Any

from dash import dcc, html, no_update

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


#: Badge text and class per status the dashboard shows.
BADGE = {
    "live": ("live", "badge-live"),
    "stale": ("reconnecting", "badge-stale"),
    "lost": ("lost · no agent", "badge-failed"),
    "finished": ("offline · finished", "badge-done"),
    "failed": ("offline · failed", "badge-failed"),
}


def lost_after_s() -> float:
    """Seconds a disconnected, silent run waits before it shows as lost.

    The agent retries with a backoff of at most 10 s, so three of its tries
    fail before a killed process (SIGKILL: no bye frame) reads as lost.
    ``GLASSCOCKPIT_LOST_AFTER_S`` overrides it.
    """
    try:
        return float(os.environ.get("GLASSCOCKPIT_LOST_AFTER_S", "30"))
    except ValueError:
        return 30.0


def shown_status(run: dict[str, Any], now: float) -> str:
    """The server's status, or "lost" for a run whose agent is gone for good."""
    status = str(run["status"])
    silent = now - float(run.get("last_frame_time") or now)
    gone = run.get("connected") is False and silent > lost_after_s()
    return "lost" if status == "stale" and gone else status


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _step(run: dict[str, Any]) -> str:
    step = run.get("last_step")
    return "no readings yet" if step is None else f"step {step}"


def run_label(run: dict[str, Any], color: str, now: float) -> html.Span:
    """One entry of the run list: colour, id, status badge, last frame age, step."""
    status = shown_status(run, now)
    text, css = BADGE.get(status, (status, "badge-done"))
    ago = max(0.0, now - run["last_frame_time"])
    warn = (
        html.Span(f"⚠ {run['nonfinite']} NaN/Inf", className="run-warn")
        if run.get("nonfinite")
        else None
    )
    return html.Span(
        [
            html.Span(className="swatch", style={"background": color}),
            html.Span(run["run"], className="run-name"),
            html.Span(text, className=f"badge {css}"),
            html.Span(f"last frame {_ago(ago)} · {_step(run)}", className="run-sub"),
            warn,
        ],
        className="run-label",
    )


def status_text(run: dict[str, Any], now: float) -> str:
    """Header badge of one run: status and how long ago its last frame came."""
    status = shown_status(run, now)
    text = BADGE.get(status, (status, ""))[0]
    ago = _ago(max(0.0, now - run["last_frame_time"]))
    return f"{run['run']}: {text} · last frame {ago} · {_step(run)}"


def picker(component_id: dict[str, str], runs: list[str]) -> dcc.RadioItems:
    """A small run picker (a histogram panel shows one run at a time).

    Radio buttons, not a ``dcc.Dropdown``: Dash 4.4's dropdown inside a card
    ignored mouse clicks on its options (keyboard worked).
    """
    return dcc.RadioItems(
        id=component_id,
        options=[{"label": r, "value": r} for r in runs],
        value=runs[0],
        inline=True,
        className="card-run",
    )
