"""Response models of the REST API (they document it in /openapi.json).

Numbers that JSON cannot carry (NaN, ±Inf) travel as the strings "NaN",
"Infinity" and "-Infinity" (``server/jsonsafe.py``), hence ``float | str``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Number = float | str
Status = Literal["live", "stale", "finished", "failed"]


class ErrorOut(BaseModel):
    """Every error response: the error class and a message safe to show."""

    error: str
    detail: str


class RunSummary(BaseModel):
    """One run in the list."""

    run: str
    status: Status = Field(
        description="live: connected and sending; stale: no frame for "
        "GLASSCOCKPIT_STALE_AFTER_S or disconnected; finished/failed: said bye"
    )
    last_step: int | None
    frames: int = Field(description="frames stored (duplicates not counted)")
    last_seq: int
    created: float = Field(description="Unix time the server first saw the run")
    last_frame_time: float
    nonfinite: int = Field(description="NaN/Inf readings stored")


class PanelOut(BaseModel):
    """How the dashboard draws an instrument."""

    title: str
    y_label: str
    log_y: bool
    group: str
    help: str


class InstrumentOut(BaseModel):
    """An instrument as declared in the run's hello frame."""

    name: str
    kind: str
    schedule: str
    panel: PanelOut
    keys: list[str] = Field(description='series keys: "total" first, then layers')


class RunDetail(RunSummary):
    """Summary, metadata, instruments and the last error of each instrument."""

    meta: dict[str, Any]
    instruments: list[InstrumentOut]
    errors: dict[str, str]


class SeriesOut(BaseModel):
    """A series as buckets: ``value`` is each bucket's last reading."""

    run: str
    name: str
    key: str
    count: int = Field(description="readings ever received")
    step: list[int] = Field(description="step of each bucket's last reading")
    wall_time: list[float]
    value: list[Number]
    min: list[Number]
    max: list[Number]
    nonfinite: list[int] = Field(
        default_factory=list,
        description="NaN/Inf readings in each bucket (a NaN never shows as a "
        "bucket's min or max, so this keeps it visible)",
    )


class LayersOut(BaseModel):
    """Every key's series of one (per-layer) instrument."""

    run: str
    name: str
    keys: list[str]
    series: dict[str, SeriesOut]


class SnapshotOut(BaseModel):
    """One histogram reading: flattened arrays and their shapes."""

    step: int
    wall_time: float
    arrays: dict[str, list[Number]]
    shapes: dict[str, list[int]]


class HistogramsOut(BaseModel):
    """Stored snapshots of one histogram instrument, oldest first."""

    run: str
    name: str
    count: int = Field(description="snapshots ever received (old ones are thinned)")
    snapshots: list[SnapshotOut]


class RunExport(BaseModel):
    """Everything stored about a run."""

    run: RunDetail
    series: list[SeriesOut]
    histograms: list[HistogramsOut]


class Deleted(BaseModel):
    """Answer to a delete."""

    deleted: str


class MetricsOut(BaseModel):
    """Process counters and store size."""

    counters: dict[str, int] = Field(
        description="frames.in, frames.duplicate, bytes.in, connections, "
        "ingest.throttled, rejected.<reason> (e.g. rejected.log_full), replay.*"
    )
    runs: int
    runs_by_status: dict[str, int]
    series: int
    points: int = Field(description="buckets stored over all series")
    memory_bytes: int = Field(
        description="estimated bytes of series and histograms, their Python objects "
        "included (docs/operations.md)"
    )
    memory_limit_bytes: int | None = Field(
        None, description="GLASSCOCKPIT_MAX_MEMORY_BYTES (null: no budget)"
    )
    connections_open: int = Field(0, description="agent websockets open now")
    runs_evicted: int
    evicted_runs: list[str] = Field(description="the last 100 evicted run ids")
    log_bytes: int | None = Field(
        None,
        description="bytes of all frame logs (null without GLASSCOCKPIT_DATA_DIR); "
        "frames refused because a log is full count as rejected.log_full",
    )


class DiagnosisOut(BaseModel):
    """One diagnosis: a rule's finding over the steps it held (docs/diagnosis.md)."""

    rule: str
    title: str
    severity: Literal["critical", "warning", "info"]
    key: str = Field(description='what it is about within the rule (a layer), or ""')
    first_step: int
    detected_step: int = Field(description="step of the frame that made it")
    last_step: int
    steps: list[int] = Field(description="steps at which the rule held (bounded)")
    count: int
    evidence: dict[str, Number] = Field(description="the readings that fired")
    thresholds: dict[str, float]
    summary: str
    explanation: str
    remedies: list[str]
    source: str
    panels: list[str] = Field(description="instruments whose panels hold the evidence")


class UnavailableRuleOut(BaseModel):
    """A rule that cannot judge this run, and what it would need."""

    rule: str
    title: str
    needs: list[str] = Field(description="instruments the run does not track")
    reason: str


class DiagnosesOut(BaseModel):
    """A run's diagnoses, most urgent first, and the rules that could not run."""

    run: str
    diagnoses: list[DiagnosisOut]
    unavailable: list[UnavailableRuleOut]
    last_step: int = Field(description="newest step evaluated (-1: none yet)")
    frames: int = Field(description="readings frames evaluated")
    us_per_frame: float = Field(description="mean rule time per frame, µs")
