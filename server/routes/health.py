"""Liveness and counters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from glasscockpit.server.deps import MetricsDep, StoreDep, require_token

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness probe for docker-compose: always ``{"status": "ok"}`` while serving."""
    return {"status": "ok"}


@router.get("/v1/metrics", dependencies=[Depends(require_token)])
def metrics(store: StoreDep, counters: MetricsDep) -> dict[str, Any]:
    """Frames in, frames rejected by reason, runs stored and evicted."""
    with store.lock:
        runs = len(store.runs)
        series = sum(len(r.series) for r in store.runs.values())
    return {
        "counters": dict(counters),
        "runs": runs,
        "series": series,
        "evicted_runs": list(store.evicted[-100:]),
    }
