"""What changed since the browser's cursor: full figures or incremental extends."""

from __future__ import annotations

from typing import Any

from dash import no_update

from glasscockpit.dashboard.client import DataProvider
from glasscockpit.dashboard.panels import (
    LINE_KINDS,
    extend_payload,
    histogram_figure,
    line_figure,
)

MAX_POINTS = 2000


def line_series(
    provider: DataProvider, run: str, spec: dict[str, Any], after: int | None
) -> dict[str, dict[str, Any]]:
    """Every key's series of one instrument (only points after ``after`` if given)."""
    return {
        key: provider.series(run, spec["name"], key, MAX_POINTS, after)
        for key in spec["keys"]
    }


def latest_histogram(provider: DataProvider, run: str, name: str) -> dict[str, Any]:
    """The newest snapshot, or none yet (LookupError from the provider)."""
    try:
        return provider.histograms(run, name, 1)
    except LookupError:
        return {"snapshots": []}


def full_figure(
    provider: DataProvider, run: str, spec: dict[str, Any]
) -> tuple[Any, Any]:
    """(figure, cursor entry) built from everything stored."""
    if spec["kind"] in LINE_KINDS:
        series = line_series(provider, run, spec, None)
        last = max((s["step"][-1] for s in series.values() if s["step"]), default=None)
        return line_figure(spec, series), {"keys": spec["keys"], "step": last}
    hist = latest_histogram(provider, run, spec["name"])
    snaps = hist["snapshots"]
    return histogram_figure(spec, hist), {
        "keys": [],
        "step": snaps[-1]["step"] if snaps else None,
    }


def panel_update(
    provider: DataProvider,
    run: str,
    spec: dict[str, Any],
    cursor: dict[str, Any] | None,
) -> tuple[Any, Any, dict[str, Any]]:
    """(figure or no_update, extendData or no_update, new cursor) for one panel."""
    if cursor is None or (
        spec["kind"] in LINE_KINDS and cursor.get("keys") != spec["keys"]
    ):
        fig, new = full_figure(provider, run, spec)
        return fig, no_update, new
    if spec["kind"] in LINE_KINDS:
        series = line_series(provider, run, spec, cursor.get("step"))
        if not any(s["step"] for s in series.values()):
            return no_update, no_update, cursor
        last = max(s["step"][-1] for s in series.values() if s["step"])
        return no_update, extend_payload(series, spec["keys"]), {**cursor, "step": last}
    hist = latest_histogram(provider, run, spec["name"])
    snaps = hist["snapshots"]
    if not snaps or snaps[-1]["step"] == cursor.get("step"):
        return no_update, no_update, cursor
    return (
        histogram_figure(spec, hist),
        no_update,
        {"keys": [], "step": snaps[-1]["step"]},
    )
