"""A server in a subprocess (the command docker-compose runs) and a browser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@contextmanager
def server_process(port: int, **env: str) -> Iterator[str]:
    """``glasscockpit serve --host 127.0.0.1 --port PORT`` until the block ends."""
    cmd = [
        sys.executable,
        "-m",
        "glasscockpit",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    # Drain the server's output: a full pipe (64 KiB of access logs) blocks the
    # server's event loop in its next log write. The tail is kept for errors.
    tail: deque[bytes] = deque(maxlen=200)
    reader = threading.Thread(
        target=lambda: tail.extend(iter(proc.stdout.readline, b"")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if get_json(base + "/healthz") == {"status": "ok"}:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                reader.join(5)
                out = b"".join(tail).decode(errors="replace")
                raise RuntimeError(f"server did not start: {out}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)
        if proc.stdout:
            proc.stdout.close()


@contextmanager
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield b
        finally:
            b.close()
