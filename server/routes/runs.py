"""REST API over stored runs: list, metadata, series, histograms, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from glasscockpit.server import views
from glasscockpit.server.deps import SettingsDep, StoreDep, require_token
from glasscockpit.server.errors import UnknownRun
from glasscockpit.server.store import TOTAL

router = APIRouter(
    prefix="/v1/runs", tags=["runs"], dependencies=[Depends(require_token)]
)


@router.get("")
def list_runs(store: StoreDep, settings: SettingsDep) -> list[dict[str, Any]]:
    """All stored runs, newest first, with status (live, stale, finished, failed)."""
    return views.list_runs(store, settings.stale_after_s)


@router.get("/{run_id}")
def get_run(run_id: str, store: StoreDep, settings: SettingsDep) -> dict[str, Any]:
    """One run: summary, metadata, instrument descriptions and errors."""
    return views.run_detail(store, run_id, settings.stale_after_s)


@router.get("/{run_id}/series/{name}")
def get_series(
    run_id: str,
    name: str,
    store: StoreDep,
    key: str = TOTAL,
    max_points: int = Query(2000, ge=1, le=100_000),
    after_step: int | None = None,
) -> dict[str, Any]:
    """One series (``key``: "total" or a parameter name), downsampled.

    Each point is a bucket: ``value`` is its last reading, ``min``/``max`` its extremes;
    NaN and infinities are the strings "NaN", "Infinity", "-Infinity".
    """
    return views.series_view(store, run_id, name, key, max_points, after_step)


@router.get("/{run_id}/histograms/{name}")
def get_histograms(
    run_id: str, name: str, store: StoreDep, last: int = Query(1, ge=1, le=10_000)
) -> dict[str, Any]:
    """The ``last`` stored histogram snapshots of one instrument."""
    return views.histograms_view(store, run_id, name, last)


@router.delete("/{run_id}")
def delete_run(run_id: str, store: StoreDep) -> dict[str, str]:
    """Forget a run."""
    if not store.delete(run_id):
        raise UnknownRun(f"No run {run_id!r} is stored")
    return {"deleted": run_id}
