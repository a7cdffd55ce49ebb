"""REST API over stored runs: list, metadata, series, histograms, export, delete."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse, StreamingResponse

from glasscockpit.protocol import ProtocolError
from glasscockpit.server import views
from glasscockpit.server.deps import SettingsDep, StoreDep, require_token
from glasscockpit.server.errors import NoFrameLog, UnknownRun
from glasscockpit.server.models import (
    Deleted,
    DiagnosesOut,
    ErrorOut,
    HistogramsOut,
    LayersOut,
    RunDetail,
    RunExport,
    RunSummary,
    SeriesOut,
)
from glasscockpit.server.store import TOTAL

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong token"},
    404: {"model": ErrorOut, "description": "No such run, instrument or log"},
}
MaxPoints = Query(
    2000, ge=1, le=100_000, description="at most this many buckets (coarsened)"
)

router = APIRouter(
    prefix="/v1/runs",
    tags=["runs"],
    dependencies=[Depends(require_token)],
    responses=ERRORS,
)


@router.get("", response_model=list[RunSummary])
def list_runs(store: StoreDep, settings: SettingsDep) -> list[dict[str, Any]]:
    """All stored runs, newest first, with status (live, stale, finished, failed)."""
    return views.list_runs(store, settings.stale_after_s)


@router.get("/{run_id}", response_model=RunDetail)
def get_run(run_id: str, store: StoreDep, settings: SettingsDep) -> dict[str, Any]:
    """One run: summary, metadata, instrument descriptions and errors."""
    return views.run_detail(store, run_id, settings.stale_after_s)


@router.get("/{run_id}/series/{name}", response_model=SeriesOut)
def get_series(
    run_id: str,
    name: str,
    store: StoreDep,
    key: str = TOTAL,
    max_points: int = MaxPoints,
    after_step: int | None = Query(
        None, description="only buckets whose last step is greater than this"
    ),
) -> dict[str, Any]:
    """One series (``key``: "total" or a parameter name), downsampled.

    Each point is a bucket: ``value`` is its last reading, ``min``/``max`` its extremes;
    NaN and infinities are the strings "NaN", "Infinity", "-Infinity".
    """
    return views.series_view(store, run_id, name, key, max_points, after_step)


@router.get("/{run_id}/layers/{name}", response_model=LayersOut)
def get_layers(
    run_id: str, name: str, store: StoreDep, max_points: int = MaxPoints
) -> dict[str, Any]:
    """Every key's series of one instrument ("total" and one per parameter)."""
    return views.layers_view(store, run_id, name, max_points)


@router.get("/{run_id}/histograms/{name}", response_model=HistogramsOut)
def get_histograms(
    run_id: str, name: str, store: StoreDep, last: int = Query(1, ge=1, le=10_000)
) -> dict[str, Any]:
    """The ``last`` stored histogram snapshots of one instrument, oldest first."""
    return views.histograms_view(store, run_id, name, last)


@router.get("/{run_id}/diagnoses", response_model=DiagnosesOut)
def get_diagnoses(run_id: str, store: StoreDep) -> dict[str, Any]:
    """What is wrong with the run: the diagnosis rules' findings, live.

    Most urgent first (critical, warning, info), then by the step they were made;
    ``unavailable`` lists the rules whose instruments the run does not track.
    """
    return views.diagnoses_view(store, run_id)


@router.get("/{run_id}/export.json", response_model=RunExport)
def export_json(run_id: str, store: StoreDep, settings: SettingsDep) -> dict[str, Any]:
    """The whole run as JSON: detail, every series and every histogram snapshot."""
    return views.export_json(store, run_id, settings.stale_after_s)


@router.get(
    "/{run_id}/export.csv",
    response_model=None,
    responses={
        200: {
            "description": "CSV, one row per stored bucket",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
)
def export_csv(run_id: str, store: StoreDep) -> PlainTextResponse:
    """Every series as CSV: instrument, key, step, wall_time, value, min, max."""
    return PlainTextResponse(
        views.export_csv(store, run_id),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{run_id}.csv"'},
    )


@router.get(
    "/{run_id}/frames",
    response_model=None,
    responses={
        200: {
            "description": "The run's frame log as stored",
            "content": {
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"}
                }
            },
        }
    },
)
def export_frames(run_id: str, store: StoreDep) -> StreamingResponse:
    """The raw frame log (needs GLASSCOCKPIT_DATA_DIR).

    Records of ``<u32 length><u32 crc32><msgpack frame>``, little-endian, in the
    order the server accepted them; ``glasscockpit.server.framelog.read_records``
    reads them back.
    """
    if store.logs is None:
        raise NoFrameLog("The raw frame log is only kept with GLASSCOCKPIT_DATA_DIR")
    try:
        path = store.logs.path(run_id)
    except ProtocolError:
        raise UnknownRun(f"No run {run_id[:40]!r} is stored") from None
    if store.get(run_id) is None or not path.exists():
        raise UnknownRun(f"No run {run_id!r} is stored")
    chunks: Iterator[bytes] = store.logs.snapshot(run_id)
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{run_id}.frames"'},
    )


@router.delete("/{run_id}", response_model=Deleted)
def delete_run(run_id: str, store: StoreDep) -> dict[str, str]:
    """Forget a run (and delete its frame log)."""
    if not store.delete(run_id):
        raise UnknownRun(f"No run {run_id!r} is stored")
    return {"deleted": run_id}
