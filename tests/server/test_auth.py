"""Auth with real clients (httpx, websockets) against a real server with a token."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from glasscockpit.protocol import Ack, Hello, decode, encode
from glasscockpit.server.auth import COOKIE
from tests.conftest import free_port
from tests.server.harness import LiveServer, live_server

TOKEN = "correct horse battery staple"
HTML = {"Accept": "text/html,application/xhtml+xml"}
GUARDED = [
    "/",
    "/_dash-layout",
    "/_dash-dependencies",
    "/_reload-hash",
    "/_favicon.ico",
    "/assets/style.css",
    "/docs",
    "/openapi.json",
    "/v1/runs",
    "/v1/metrics",
    "/v1/runs/x/export.csv",
]


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server(free_port(), token=TOKEN) as s:
        yield s


def client(server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=server.http, follow_redirects=False, timeout=10)


def signed_in(server: LiveServer) -> httpx.Client:
    c = client(server)
    r = c.post("/login", data={"token": TOKEN, "next": "/"})
    assert r.status_code == 303
    return c


@pytest.mark.parametrize("path", GUARDED)
def test_everything_but_health_and_login_needs_auth(server, path):
    with client(server) as c:
        r = c.get(path)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert "sign in at /login" in r.json()["detail"]
        # The token in a query string is never accepted.
        assert c.get(path, params={"token": TOKEN}).status_code == 401
        assert (
            c.get(path, headers={"Authorization": f"Bearer {TOKEN}x"}).status_code
            == 401
        )
        assert c.get(
            path, headers={"Authorization": f"Bearer {TOKEN}"}
        ).status_code in (
            200,
            404,
        )


def test_dash_callbacks_are_guarded(server):
    body = {"output": "x.children", "inputs": [], "changedPropIds": []}
    with client(server) as c:
        assert c.post("/_dash-update-component", json=body).status_code == 401
    # With a same-origin Origin header, so only our guard can refuse it.
    with pytest.raises(InvalidStatus) as info:
        connect(server.ws + "/_dash-ws-callback", origin=server.http)  # type: ignore[arg-type]
    assert info.value.response.status_code == 403


def test_page_loads_redirect_to_the_login_form(server):
    with client(server) as c:
        r = c.get("/", headers=HTML)
        assert r.status_code == 303
        assert r.headers["location"] == "/login?next=/"
        form = c.get(r.headers["location"])
        assert form.status_code == 200
        assert '<form method="post" action="/login">' in form.text
        assert 'name="next" value="/"' in form.text
        assert c.get("/healthz").json() == {"status": "ok"}


def test_login_sets_a_strict_httponly_cookie_that_opens_dash_and_rest(server):
    with client(server) as c:
        wrong = c.post("/login", data={"token": "nope", "next": "/"})
        assert wrong.status_code == 401
        assert "Wrong token" in wrong.text
        assert COOKIE not in c.cookies
        r = c.post("/login", data={"token": TOKEN, "next": "/_dash-layout"})
        assert r.status_code == 303
        assert r.headers["location"] == "/_dash-layout"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert "Path=/" in cookie
        assert TOKEN not in cookie and "staple" not in cookie
        assert c.get("/_dash-layout").status_code == 200
        page = c.get("/", headers=HTML)
        assert page.status_code == 200
        assert "_dash-config" in page.text
        assert c.get("/v1/runs").json() == []
        with connect(
            server.ws + "/_dash-ws-callback",
            origin=server.http,  # type: ignore[arg-type]
            additional_headers={"Cookie": f"{COOKIE}={c.cookies[COOKIE]}"},
        ):
            pass  # accepted: the handshake got past the guard
        out = c.post("/logout")
        assert out.status_code == 303
        assert COOKIE not in c.cookies
        assert c.get("/_dash-layout").status_code == 401


def test_login_only_redirects_within_the_site(server):
    with client(server) as c:
        for target in ("//evil.example/", "https://evil.example/", "\\\\evil"):
            r = c.post("/login", data={"token": TOKEN, "next": target})
            assert r.headers["location"] == "/"


def test_a_cookie_from_another_token_is_refused(server):
    from glasscockpit.server.auth import session_value

    with client(server) as c:
        c.cookies.set(COOKIE, session_value("another token"))
        assert c.get("/v1/runs").status_code == 401
        c.cookies.set(COOKIE, TOKEN)  # the raw token is not a session
        assert c.get("/v1/runs").status_code == 401


def test_agents_use_the_bearer_header(server):
    with pytest.raises(InvalidStatus) as info:
        connect(server.ws + "/v1/agent")
    assert info.value.response.status_code == 403
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with connect(server.ws + "/v1/agent", additional_headers=headers) as ws:
        ws.send(encode(Hello("bearer", 0, ())))
        assert decode(ws.recv(timeout=5)) == Ack("bearer", 0)
    c = signed_in(server)
    try:
        assert [r["run"] for r in c.get("/v1/runs").json()] == ["bearer"]
    finally:
        c.close()


def test_without_a_token_nothing_asks_for_one():
    with live_server(free_port()) as s, client(s) as c:
        assert c.get("/", headers=HTML).status_code == 200
        assert c.get("/_dash-layout").status_code == 200
        assert c.get("/v1/runs").json() == []
        r = c.post("/login", data={"token": "anything", "next": "/v1/runs"})
        assert (r.status_code, r.headers["location"]) == (303, "/v1/runs")


def test_serving_beyond_loopback_without_a_token_warns(caplog):
    from glasscockpit.server.serve import make_server
    from glasscockpit.server.settings import Settings

    with caplog.at_level("WARNING", logger="glasscockpit.server"):
        make_server(Settings(host="127.0.0.1", port=free_port()))
        assert caplog.text == ""
        make_server(Settings(host="0.0.0.0", port=free_port(), token="t"))
        assert caplog.text == ""
        make_server(Settings(host="0.0.0.0", port=free_port()))
    assert "without GLASSCOCKPIT_TOKEN" in caplog.text


def test_nonsense_limits_are_refused_at_start(monkeypatch):
    from pydantic import ValidationError

    from glasscockpit.server.settings import Settings

    monkeypatch.setenv("GLASSCOCKPIT_MAX_RUNS", "0")
    with pytest.raises(ValidationError, match="max_runs"):
        Settings()
