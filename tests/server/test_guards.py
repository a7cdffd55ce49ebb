"""Origin, bearer-only agents, Host check, security headers, throttling, cookie expiry.

Real clients against real servers; the browser's view of the same rules is in
test_guards_browser.py.
"""

from __future__ import annotations

import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from glasscockpit.protocol import Ack, Hello, decode, encode
from glasscockpit.server.auth import COOKIE, session_value
from glasscockpit.server.guards import host_name, is_loopback
from tests.conftest import free_port
from tests.server.harness import live_server
from tests.server.test_persist import SPECS

TOKEN = "guarded-token"


def hello_acked(url: str, **kwargs: object) -> Ack:
    with connect(url + "/v1/agent", compression=None, **kwargs) as ws:  # type: ignore[arg-type]
        ws.send(encode(Hello("g", 0, SPECS)))
        ack = decode(ws.recv(timeout=5))
        assert isinstance(ack, Ack)
        return ack


def refused_status(url: str, **kwargs: object) -> int:
    with pytest.raises(InvalidStatus) as info:
        hello_acked(url, **kwargs)
    return info.value.response.status_code


def test_the_agent_websocket_refuses_browser_origins_even_without_a_token():
    with live_server(free_port()) as s:
        assert refused_status(s.ws, origin="http://127.0.0.1:9999") == 403
        assert refused_status(s.ws, origin=s.http) == 403  # even its own pages
        assert hello_acked(s.ws) == Ack("g", 0)  # agents send no Origin
        assert s.store.get("g") is not None
        metrics = httpx.get(s.http + "/v1/metrics").json()
        assert metrics["counters"]["rejected.origin"] == 2


def test_agents_authenticate_with_the_bearer_token_only():
    with live_server(free_port(), token=TOKEN) as s:
        cookie = {"Cookie": f"{COOKIE}={session_value(TOKEN)}"}
        assert refused_status(s.ws, additional_headers=cookie) == 403
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert hello_acked(s.ws, additional_headers=bearer) == Ack("g", 0)
        # The same cookie still opens the dashboard's REST reads.
        assert httpx.get(s.http + "/v1/runs", headers=cookie).status_code == 200


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:8050", "localhost"),
        ("[::1]:8050", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("Evil.Example:80", "evil.example"),
    ],
)
def test_host_names(header, name):
    assert host_name(header) == name


def test_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "localhost", "::1", "127.1.2.3"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.168.1.2", "evil.example"]))


def test_a_loopback_server_refuses_foreign_host_names():
    with live_server(free_port(), allowed_hosts=["cockpit.lan"]) as s:
        for host, status in [
            (f"127.0.0.1:{s.port}", 200),
            (f"localhost:{s.port}", 200),
            (f"cockpit.lan:{s.port}", 200),
            (f"rebound.example:{s.port}", 400),
            ("", 400),
        ]:
            r = httpx.get(s.http + "/v1/runs", headers={"Host": host})
            assert r.status_code == status, host
        r = httpx.get(s.http + "/", headers={"Host": "rebound.example"})
        assert r.status_code == 400
        assert "GLASSCOCKPIT_ALLOWED_HOSTS" in r.text


def test_every_answer_carries_security_headers():
    with live_server(free_port()) as s:
        for path in ("/", "/v1/runs", "/login", "/healthz", "/v1/runs/nope"):
            r = httpx.get(s.http + path)
            assert r.headers["x-content-type-options"] == "nosniff", path
            assert r.headers["x-frame-options"] == "DENY", path
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            assert r.headers["referrer-policy"] == "no-referrer"


def test_wrong_tokens_are_throttled_per_client():
    settings = {"auth_failures_per_s": 0.25, "auth_failure_burst": 5}
    with live_server(free_port(), token=TOKEN, **settings) as s:
        wrong = {"Authorization": "Bearer guess"}
        statuses = [
            httpx.get(s.http + "/v1/runs", headers=wrong).status_code for _ in range(12)
        ]
        assert statuses == [401] * 5 + [429] * 7
        right = {"Authorization": f"Bearer {TOKEN}"}
        blocked = httpx.get(s.http + "/v1/runs", headers=right)
        assert blocked.status_code == 429  # right or not: no oracle while blocked
        assert int(blocked.headers["retry-after"]) >= 1
        assert httpx.post(s.http + "/login", data={"token": TOKEN}).status_code == 429
        assert refused_status(s.ws, additional_headers=right) == 403
        time.sleep(4.5)  # one token back: the right token works again
        assert httpx.get(s.http + "/v1/runs", headers=right).status_code == 200


def test_the_session_cookie_expires():
    with live_server(free_port(), token=TOKEN, session_max_age_s=3600) as s:
        r = httpx.post(s.http + "/login", data={"token": TOKEN})
        assert r.status_code == 303
        assert "Max-Age=3600" in r.headers["set-cookie"]
        fresh = r.cookies[COOKIE]
        stamp = int(fresh.split(".")[0])
        assert abs(stamp - (time.time() + 3600)) < 60
        ok = httpx.get(s.http + "/v1/runs", cookies={COOKIE: fresh})
        assert ok.status_code == 200
        old = session_value(TOKEN, int(time.time()) - 1)
        gone = httpx.get(s.http + "/v1/runs", cookies={COOKIE: old})
        assert gone.status_code == 401
        # Moving the expiry forward breaks the signature.
        forged = f"{stamp + 10**6}.{fresh.split('.')[1]}"
        bad = httpx.get(s.http + "/v1/runs", cookies={COOKIE: forged})
        assert bad.status_code == 401
