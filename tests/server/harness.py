"""A real uvicorn server in a thread, for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
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


@contextmanager
def server_subprocess(port: int, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """``glasscockpit serve`` in a child process (so a test can SIGKILL it)."""
    cmd = [sys.executable, "-m", "glasscockpit", "serve", "--port", str(port)]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **{f"GLASSCOCKPIT_{k.upper()}": v for k, v in env.items()}},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                url = f"http://127.0.0.1:{port}/healthz"
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"server did not start: {err}")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()
