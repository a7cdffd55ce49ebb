"""The sign-in form in a real browser: cookie set, dashboard loads, token hidden."""

from __future__ import annotations

import pytest

from glasscockpit.server.auth import COOKIE
from tests.conftest import free_port
from tests.e2e.harness import browser
from tests.server.harness import live_server

pytestmark = pytest.mark.e2e
TOKEN = "s3cret-for-the-browser"


def test_browser_signs_in_and_gets_the_dashboard():
    with live_server(free_port(), token=TOKEN) as s, browser() as b:
        page = b.new_page()
        page.goto(s.http + "/")
        assert page.url == s.http + "/login?next=/"
        page.fill("input[name=token]", "wrong")
        page.click("input[type=submit]")
        assert "Wrong token" in page.content()
        page.fill("input[name=token]", TOKEN)
        page.click("input[type=submit]")
        page.wait_for_selector("#react-entry-point", timeout=15_000)
        assert page.url == s.http + "/"
        # Dash's own requests (layout, callbacks) carry the cookie.
        page.wait_for_function(
            "document.querySelector('#react-entry-point').children.length > 0",
            timeout=15_000,
        )
        cookies = {c["name"]: c for c in page.context.cookies()}
        assert cookies[COOKIE]["httpOnly"] is True
        assert cookies[COOKIE]["sameSite"] == "Strict"
        assert TOKEN not in cookies[COOKIE]["value"]
        # Scripts cannot read an HttpOnly cookie.
        assert COOKIE not in page.evaluate("document.cookie")
        assert page.evaluate("fetch('/v1/runs').then(r => r.status)") == 200
