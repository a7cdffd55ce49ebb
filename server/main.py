"""create_app(settings) -> FastAPI: ingest, REST API and dashboard in one process."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from glasscockpit import __version__
from glasscockpit.server.errors import PublicError
from glasscockpit.server.provider import StoreProvider
from glasscockpit.server.routes import health, ingest, runs
from glasscockpit.server.settings import Settings
from glasscockpit.server.store import RunStore

log = logging.getLogger("glasscockpit.server")


def create_app(settings: Settings | None = None, dashboard: bool = True) -> FastAPI:
    """Build the server; the store lives as long as the app."""
    settings = settings or Settings()
    store = RunStore(settings.max_points, settings.max_histograms, settings.max_runs)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(title="glasscockpit", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.store = store
    app.state.metrics = Counter()

    @app.exception_handler(PublicError)
    async def public_error(_request: Request, exc: PublicError) -> JSONResponse:
        return JSONResponse(
            {"error": type(exc).__name__, "detail": str(exc)}, exc.http_status
        )

    app.include_router(health.router)
    app.include_router(ingest.router)
    app.include_router(runs.router)
    if dashboard:
        from glasscockpit.dashboard.app import create_dash

        create_dash(
            app, StoreProvider(store, settings.stale_after_s), settings.refresh_ms
        )
    return app
