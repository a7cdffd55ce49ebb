"""A real browser cannot reach the agent websocket or a rebound host name.

* A page on another port of the same host (same-site, so the signed-in user's
  cookie goes along) opens the agent websocket and sends a hello: refused, nothing
  stored.
* DNS rebinding: the browser resolves ``rebind.test`` to 127.0.0.1 (Chromium's
  host resolver rules), so a page of that name is same-origin with the server's
  port; the loopback-bound server refuses its Host and the page reads nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from glasscockpit.protocol import Hello, encode
from tests.conftest import free_port
from tests.e2e.harness import CHROMIUM, CHROMIUM_ARGS
from tests.server.harness import live_server
from tests.server.test_persist import SPECS, frames_of, send

pytestmark = pytest.mark.e2e
TOKEN = "browser-guard-token"

OPEN_SOCKET = """async ([url, bytes]) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(new Uint8Array(bytes));
  ws.onmessage = () => resolve("acked");
  ws.onclose = (e) => resolve("closed " + e.code);
  setTimeout(() => resolve("timeout"), 5000);
})"""


@contextmanager
def other_site() -> Iterator[str]:
    """An unrelated page on another port of 127.0.0.1."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b"<!doctype html><title>elsewhere</title><p>hi</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def chromium(*extra: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra], headless=True
        )
        try:
            yield b
        finally:
            b.close()


@pytest.mark.parametrize("token", [None, TOKEN])
def test_a_page_on_another_port_cannot_store_a_run(token):
    hello = list(encode(Hello("from-a-page", 0, SPECS)))
    with live_server(free_port(), token=token) as s, other_site() as elsewhere:
        with chromium() as b:
            page = b.new_page()
            if token:  # the user is signed in: the cookie is same-site
                page.goto(s.http + "/login")
                page.fill("input[name=token]", TOKEN)
                page.click("input[type=submit]")
                page.wait_for_url(s.http + "/")
            page.goto(elsewhere)
            got = page.evaluate(OPEN_SOCKET, [s.ws + "/v1/agent", hello])
        assert got != "acked"
        assert got.startswith("closed")
        assert s.store.get("from-a-page") is None
        assert s.store.runs == {}


def test_a_rebound_host_name_reads_nothing():
    port = free_port()
    rules = "--host-resolver-rules=MAP rebind.test 127.0.0.1"
    with live_server(port) as s, chromium(rules) as b:
        send(s.ws, "secret-run", frames_of("secret-run", 2))
        page = b.new_page()
        # The attacker's page, now resolving to the victim's loopback server.
        response = page.goto(f"http://rebind.test:{port}/")
        assert response is not None and response.status == 400
        status, text = page.evaluate(
            "fetch('/v1/runs').then(async r => [r.status, await r.text()])"
        )
        assert status == 400
        assert "secret-run" not in text
        # The same browser on the real name still gets the dashboard's data.
        page.goto(s.http + "/")
        runs = page.evaluate("fetch('/v1/runs').then(r => r.json())")
        assert [r["run"] for r in runs] == ["secret-run"]
