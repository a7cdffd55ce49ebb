"""Liveness and counters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from glasscockpit.server import views
from glasscockpit.server.deps import (
    GateDep,
    MetricsDep,
    SettingsDep,
    StoreDep,
    require_token,
)
from glasscockpit.server.models import ErrorOut, MetricsOut

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness probe for docker-compose: always ``{"status": "ok"}`` while serving."""
    return {"status": "ok"}


@router.get(
    "/v1/metrics",
    dependencies=[Depends(require_token)],
    response_model=MetricsOut,
    responses={401: {"model": ErrorOut, "description": "Missing or wrong token"}},
)
def metrics(
    store: StoreDep, counters: MetricsDep, settings: SettingsDep, gate: GateDep
) -> dict[str, Any]:
    """Frames in, frames rejected by reason, runs, evictions, estimated memory."""
    out = views.metrics_view(store, dict(counters), settings.stale_after_s)
    out["memory_limit_bytes"] = store.budget.limit
    out["connections_open"] = sum(gate.open.values())
    return out
