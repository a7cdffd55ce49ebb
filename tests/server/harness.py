"""A real uvicorn server in a thread, for tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from glasscockpit.server.serve import serve_in_thread
from glasscockpit.server.settings import Settings
from glasscockpit.server.store import RunStore


@dataclass
class LiveServer:
    """Where a test server listens and its store."""

    server: uvicorn.Server
    port: int

    @property
    def http(self) -> str:
        """Base http URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        """Base ws URL."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def store(self) -> RunStore:
        """The app's store."""
        app = self.server.config.loaded_app
        while hasattr(app, "app") and not hasattr(app, "state"):
            app = app.app
        store: RunStore = app.state.store
        return store


@contextmanager
def live_server(port: int, **settings: object) -> Iterator[LiveServer]:
    """Run ``glasscockpit`` on 127.0.0.1:port until the block ends."""
    server, thread = serve_in_thread(Settings(port=port, **settings))  # type: ignore[arg-type]
    try:
        yield LiveServer(server, port)
    finally:
        server.should_exit = True
        thread.join(10)
