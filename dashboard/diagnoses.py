"""The diagnoses strip: what is wrong with the selected runs, at the top of the view.

One row per selected run: its diagnoses as chips on a step timeline, most urgent
first, each with the rule's summary (the numbers that fired), explanation and
remedies on hover/click, and links to the panels that hold the evidence
(``data-panel``: the browser scrolls to that card, ``assets/diagnoses.js``).
The steps each diagnosis covers are also drawn as dotted vertical lines on those
panels: ``marks`` (a store) carries {instrument: [[step, severity, title]]} and
a browser-side callback adds the lines to the figures after every tick.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dash import Dash, Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from glasscockpit.dashboard.client import DataProvider

STRIP = "diagnoses-strip"
MARKS = "diagnoses-marks"
MARKS_DONE = "diagnoses-marks-done"
#: What the strip shows now (this page's), so that an unchanged tick draws nothing.
SEEN = "diagnoses-seen"
CLOCK = "diagnoses-clock"
#: How often the strip asks for news: a diagnosis shows within about this much
#: plus one request after its frame is stored.
CLOCK_MS = 250
#: Marker steps per diagnosis and panel (the first and newest are kept).
MAX_MARKS = 20


def strip() -> html.Div:
    """The empty strip and its stores, placed above the panel grid."""
    return html.Div(
        [
            html.Div(id=STRIP, className="diagnoses"),
            dcc.Store(id=MARKS, data={}),
            dcc.Store(id=MARKS_DONE, data=0),
            dcc.Store(id=SEEN, data=None),
            # Its own, faster clock: an unchanged strip costs one small request.
            dcc.Interval(id=CLOCK, interval=CLOCK_MS),
        ]
    )


def chip(d: dict[str, Any], span: tuple[int, int]) -> html.Details:
    """One diagnosis: title, steps and summary; details and links when opened."""
    lo, hi = span
    width = max(hi - lo, 1)
    left = 100.0 * (d["first_step"] - lo) / width
    right = 100.0 * (d["last_step"] - lo) / width
    steps = (
        f"step {d['first_step']}"
        if d["first_step"] == d["last_step"]
        else f"steps {d['first_step']}–{d['last_step']}"
    )
    key = f" ({d['key']})" if d["key"] else ""
    links = [
        html.A(
            p,
            href="#",
            className="diagnosis-link",
            title=f"show the {p} panel",
            **{"data-panel": p},
        )
        for p in d["panels"]
    ]
    evidence = ", ".join(
        f"{k} = {_fmt(v)}" for k, v in d["evidence"].items() if k not in d["thresholds"]
    )
    thresholds = ", ".join(f"{k} = {_fmt(v)}" for k, v in d["thresholds"].items())
    return html.Details(
        [
            html.Summary(
                [
                    html.Span(d["severity"], className="diagnosis-severity"),
                    html.B(d["title"] + key),
                    html.Span(f" · {steps} · ", className="diagnosis-steps"),
                    html.Span(d["summary"], className="diagnosis-summary"),
                    html.Span(
                        className="diagnosis-span",
                        style={
                            "left": f"{left:.1f}%",
                            "width": f"{max(right - left, 0.6):.1f}%",
                        },
                    ),
                ]
            ),
            html.P(d["explanation"]),
            html.Div(["Evidence: ", evidence]),
            html.Div(["Thresholds: ", thresholds]),
            html.Div(["Remedies: ", "; ".join(d["remedies"])]),
            html.Div(["Panels: ", *links]),
            html.Div(["Source: ", d["source"]], className="diagnosis-source"),
        ],
        className=f"diagnosis diagnosis-{d['severity']}",
        **{"data-rule": d["rule"]},
    )


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run_row(run: str, report: dict[str, Any], last_step: int) -> html.Div:
    """A run's diagnoses (or a calm line), with the rules it cannot evaluate."""
    diagnoses = report["diagnoses"]
    span = (0, max([last_step, *(d["last_step"] for d in diagnoses)], default=1))
    needs = sorted({n for u in report["unavailable"] for n in u["needs"]})
    body: list[Any] = [chip(d, span) for d in diagnoses] or [
        html.Span("no diagnosis", className="diagnosis-none")
    ]
    if needs:
        body.append(
            html.Div(
                f"{len(report['unavailable'])} rules need instruments this run does "
                f"not track: {', '.join(needs)}",
                className="diagnosis-needs",
            )
        )
    attrs: dict[str, Any] = {"data-run": run}
    return html.Div(
        [html.Span(run, className="diagnosis-run"), *body],
        className="diagnosis-row",
        **attrs,
    )


def marks(reports: dict[str, dict[str, Any]]) -> dict[str, list[list[Any]]]:
    """{instrument: [[step, severity, title], ...]} over every selected run."""
    out: dict[str, list[list[Any]]] = {}
    for report in reports.values():
        for d in report["diagnoses"]:
            steps = d["steps"]
            if len(steps) > MAX_MARKS:
                steps = steps[: MAX_MARKS // 2] + steps[-MAX_MARKS // 2 :]
            for panel in d["panels"]:
                out.setdefault(panel, []).extend(
                    [s, d["severity"], d["title"]] for s in steps
                )
    return out


def register(
    app: Dash, provider: DataProvider, runs: str, done: str, grid: str
) -> None:
    """The strip's callbacks: refresh on its own clock; marks after each ``done``.

    Args:
        app: the Dash app.
        provider: where the diagnoses come from (``DataProvider.diagnoses``).
        runs: id of the run checklist.
        done: id of the store the panel tick bumps once figures are drawn.
        grid: id of the store with the drawn panels (``panels``: id → members).
    """

    @app.callback(
        Output(STRIP, "children"),
        Output(MARKS, "data"),
        Output(SEEN, "data"),
        Input(CLOCK, "n_intervals"),
        Input(runs, "value"),
        State(MARKS, "data"),
        State(SEEN, "data"),
    )
    async def refresh(
        _n: int | None, selected: list[str] | None, old: Any, last: Any
    ) -> Any:
        # In a worker thread: Dash's FastAPI backend runs synchronous callbacks
        # on the event loop, where a slow one stalls every agent's ingest.
        return await asyncio.to_thread(_refresh, selected, old, last)

    def _refresh(selected: list[str] | None, old: Any, last: Any) -> Any:
        reports: dict[str, dict[str, Any]] = {}
        for run in selected or []:
            try:
                reports[run] = provider.diagnoses(run)
            except LookupError:
                continue
        # Redraw only when a diagnosis changed (not on every tick of a run).
        seen = [
            [r, [[d["rule"], d["key"], d["last_step"]] for d in x["diagnoses"]]]
            for r, x in reports.items()
        ]
        if seen == last:
            raise PreventUpdate
        rows = [run_row(r, x, max(x["last_step"], 0)) for r, x in reports.items()]
        new = marks(reports)
        return rows, new if new != old else no_update, seen

    app.clientside_callback(  # type: ignore[no-untyped-call]
        "function (m, d, g) { return window.glasscockpitMarks(m, g); }",
        Output(MARKS_DONE, "data"),
        Input(MARKS, "data"),
        Input(done, "data"),
        State(grid, "data"),
    )
