"""create_app(settings) -> FastAPI: ingest, REST API and dashboard in one process."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from glasscockpit import __version__
from glasscockpit.diagnosis import DiagnosisSettings
from glasscockpit.server.auth import AuthMiddleware
from glasscockpit.server.callback_check import CallbackCheckMiddleware
from glasscockpit.server.errors import PublicError
from glasscockpit.server.framelog import FrameLogs
from glasscockpit.server.guards import (
    AuthThrottle,
    HostCheckMiddleware,
    SecurityHeadersMiddleware,
    is_loopback,
)
from glasscockpit.server.provider import StoreProvider
from glasscockpit.server.ratelimit import ConnectionGate
from glasscockpit.server.routes import health, ingest, login, runs
from glasscockpit.server.settings import Settings
from glasscockpit.server.store import Limits, RunStore

log = logging.getLogger("glasscockpit.server")


def create_app(settings: Settings | None = None, dashboard: bool = True) -> FastAPI:
    """Build the server; the store lives as long as the app.

    With ``settings.data_dir`` the store logs every accepted frame there and the
    lifespan replays the logs before the server accepts connections.
    """
    settings = settings or Settings()
    logs = (
        FrameLogs(
            settings.data_dir,
            settings.fsync,
            settings.max_log_bytes_per_run,
            settings.max_log_bytes,
        )
        if settings.data_dir
        else None
    )
    store = RunStore(
        settings.max_points,
        settings.max_histograms,
        settings.max_runs,
        Limits(
            max_instruments=settings.max_instruments,
            max_keys=settings.max_keys,
            max_series=settings.max_series,
            max_array_elements=settings.max_array_elements,
            max_meta_bytes=settings.max_meta_bytes,
        ),
        logs,
        DiagnosisSettings.parse(
            settings.diagnosis_disable, settings.diagnosis_thresholds
        ),
        max_memory_bytes=settings.max_memory_bytes,
    )
    metrics: Counter[str] = Counter()
    throttle = AuthThrottle(settings.auth_failures_per_s, settings.auth_failure_burst)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if logs is not None:
            try:
                replayed = store.replay(settings.max_frame_bytes)
            except Exception:  # the server starts, whatever the logs hold
                log.exception("glasscockpit: replay of %s failed", settings.data_dir)
                replayed = Counter({"replay.failed": 1})
            metrics.update(replayed)
            log.info(
                "glasscockpit: replayed %d frames of %d runs from %s",
                replayed["replay.frames"],
                replayed["replay.runs"],
                settings.data_dir,
            )
        try:
            yield
        finally:
            if logs is not None:
                logs.close()

    app = FastAPI(
        title="glasscockpit",
        version=__version__,
        lifespan=lifespan,
        description="Live training diagnostics: agent ingest (websocket "
        "/v1/agent), runs, series, histograms and exports. With GLASSCOCKPIT_TOKEN "
        "set, send 'Authorization: Bearer <token>' (browsers: sign in at /login).",
    )
    app.state.settings = settings
    app.state.store = store
    app.state.metrics = metrics
    app.state.throttle = throttle
    app.state.gate = ConnectionGate(
        settings.max_connections,
        settings.max_connections_per_client,
        settings.rate_frames_per_s,
        settings.rate_burst,
        settings.rate_bytes_per_s,
        max(settings.rate_bytes_per_s, settings.max_frame_bytes),
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # API clients get one error shape (ErrorOut) for every error, including a
        # path no route matches (e.g. a run id holding an encoded newline).
        if not request.url.path.startswith("/v1/"):
            return await http_exception_handler(request, exc)
        name = HTTPStatus(exc.status_code).phrase.replace(" ", "")
        return JSONResponse(
            {"error": name, "detail": str(exc.detail)},
            exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(PublicError)
    async def public_error(_request: Request, exc: PublicError) -> JSONResponse:
        return JSONResponse(
            {"error": type(exc).__name__, "detail": str(exc)}, exc.http_status
        )

    app.include_router(health.router)
    app.include_router(login.router)
    app.include_router(ingest.router)
    app.include_router(runs.router)

    @app.api_route(
        "/v1/{rest:path}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    async def unknown_api_path(rest: str) -> None:
        # Without this, Dash's catch-all page route would answer 200 with HTML for
        # API paths no route matches (e.g. a run id holding an encoded '/').
        raise StarletteHTTPException(404, f"No API route /v1/{rest[:200]}")

    if dashboard:
        from glasscockpit.dashboard.app import create_dash

        dash_app = create_dash(
            app, StoreProvider(store, settings.stale_after_s), settings.refresh_ms
        )
        # Inside auth: only signed-in clients learn what is wrong with a request.
        app.add_middleware(
            CallbackCheckMiddleware, callbacks=lambda: dash_app.callback_map
        )
    # Dash's pages, assets and callbacks are guarded like the REST API.
    app.add_middleware(AuthMiddleware, token=settings.token, throttle=throttle)
    app.add_middleware(SecurityHeadersMiddleware)
    if is_loopback(settings.host):
        # Outermost: a rebound host name gets nothing, not even the login form.
        app.add_middleware(
            HostCheckMiddleware, allowed=frozenset(settings.allowed_hosts)
        )
    return app
