"""Run the server with uvicorn: one worker (the store is in memory)."""

from __future__ import annotations

import gc
import logging
import threading

import uvicorn

from glasscockpit.server.main import create_app
from glasscockpit.server.settings import Settings

log = logging.getLogger("glasscockpit.server")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def make_server(settings: Settings, log_level: str = "warning") -> uvicorn.Server:
    """A configured uvicorn server (not started)."""
    if settings.host not in LOOPBACK and not settings.token:
        log.warning(
            "glasscockpit: serving on %s without GLASSCOCKPIT_TOKEN: anyone who can "
            "reach "
            "this port can read and write runs",
            settings.host,
        )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=log_level,
        ws_max_size=settings.max_frame_bytes + 1024,
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=3,
    )
    return uvicorn.Server(config)


def serve(settings: Settings) -> None:
    """Serve until interrupted."""
    server = make_server(settings, log_level="info")
    # Move everything built so far (FastAPI, Dash, Plotly: ~100k objects) out of
    # the collector's reach. A full collection otherwise scans all of it and
    # stalls ingest for 20-35 ms every few seconds under load, a large part of
    # the ack latency tail (docs/benchmarks-server.md).
    gc.collect()
    gc.freeze()
    server.run()


def serve_in_thread(settings: Settings) -> tuple[uvicorn.Server, threading.Thread]:
    """Start a server in a daemon thread; returns once it accepts connections."""
    server = make_server(settings)
    thread = threading.Thread(
        target=server.run, name="glasscockpit-server", daemon=True
    )
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(
                f"glasscockpit server could not start on port {settings.port}"
            )
        thread.join(0.05)
    return server, thread
