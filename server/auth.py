"""Token auth for agents, REST clients and browsers (only when a token is set).

* Agents and REST clients send ``Authorization: Bearer <token>``.
* Browsers cannot set headers on page loads or Dash's requests, so ``/login`` shows
  a form whose POST sets the ``glasscockpit_session`` cookie: HttpOnly (scripts
  cannot read it), SameSite=Strict (other sites cannot make the browser send it),
  ``Secure`` when served over https. The cookie holds an HMAC of the token, not the
  token, so a leaked cookie does not reveal the token for agents, and its expiry
  time (``GLASSCOCKPIT_SESSION_MAX_AGE_S``, a week by default), checked by the
  server as well as the browser.
* The agent websocket takes the bearer header only, never the cookie, and refuses
  any handshake with an ``Origin`` header: browsers always send one, agents never
  do, so no web page (not even one on another port of this host, which is
  same-site for the cookie) can write, evict or delete runs.
* Wrong tokens are throttled per client (``guards.AuthThrottle``).
* The token is never accepted in a query string: URLs end up in logs and history.

``AuthMiddleware`` guards everything except ``/healthz``, ``/login``, ``/logout``
and the agent websocket (which checks the header itself to count rejections and
refuse before accepting). Unauthenticated page loads are redirected to the login
form; other HTTP requests get 401, websockets are refused before accept (HTTP 403).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time
from urllib.parse import parse_qs, quote

from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from glasscockpit.server.guards import AuthThrottle

COOKIE = "glasscockpit_session"
OPEN_PATHS = frozenset({"/healthz", "/login", "/logout", "/v1/agent"})
MAX_FORM_BYTES = 4096

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>glasscockpit: sign in</title>
<style>body{{font-family:sans-serif;max-width:24rem;margin:4rem auto}}
input{{width:100%;padding:.4rem;margin:.3rem 0}}.err{{color:#b00}}</style></head>
<body><h1>glasscockpit</h1>
<p>This server needs its token (<code>GLASSCOCKPIT_TOKEN</code>).</p>{error}
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label>Token <input type="password" name="token" autocomplete="current-password"
 autofocus required></label>
<input type="submit" value="Sign in"></form></body></html>
"""


def session_value(token: str, expires: int | None = None) -> str:
    """The cookie value: expiry time and an HMAC of it (never the token itself)."""
    expires = int(time.time()) + 7 * 86400 if expires is None else expires
    mac = hmac.new(
        token.encode(), f"glasscockpit-session-v2/{expires}".encode(), hashlib.sha256
    ).hexdigest()
    return f"{expires}.{mac}"


def session_ok(token: str, cookie: str) -> bool:
    """Whether a cookie value is one ``session_value`` made and has not expired."""
    stamp, _, _mac = cookie.partition(".")
    if not stamp.isdigit() or int(stamp) < time.time():
        return False
    return _same(cookie, session_value(token, int(stamp)))


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def authorized(token: str | None, conn: HTTPConnection) -> bool:
    """True without a token, or with the right bearer header or session cookie."""
    if not token:
        return True
    header = conn.headers.get("authorization", "")
    if header[:7].lower() == "bearer " and _same(header[7:], token):
        return True
    cookie = conn.cookies.get(COOKIE, "")
    return bool(cookie) and session_ok(token, cookie)


def bearer_ok(token: str | None, conn: HTTPConnection) -> bool:
    """True without a token, or with the right bearer header (agents: no cookie)."""
    if not token:
        return True
    header = conn.headers.get("authorization", "")
    return header[:7].lower() == "bearer " and _same(header[7:], token)


def agent_refusal(token: str | None, conn: HTTPConnection) -> str | None:
    """Why an agent websocket handshake is refused (a metrics reason), or None."""
    if "origin" in conn.headers:
        return "origin"  # a browser: agents send no Origin
    return None if bearer_ok(token, conn) else "unauthorized"


def _presented(conn: HTTPConnection) -> bool:
    """Whether a request tried a credential (a page load without one is no guess)."""
    return "authorization" in conn.headers or COOKIE in conn.cookies


def too_many(wait: float) -> Response:
    """429 for a client that guessed too many wrong tokens."""
    return JSONResponse(
        {
            "error": "TooManyRequests",
            "detail": "Too many wrong tokens from this address; try again later",
        },
        429,
        headers={"Retry-After": str(max(1, round(wait)))},
    )


def _safe_next(target: str) -> str:
    # Only same-site paths: an open redirect would let a link send users elsewhere.
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def login_page(next_path: str = "/", error: str = "", status: int = 200) -> Response:
    """The sign-in form."""
    body = LOGIN_PAGE.format(
        next=html.escape(_safe_next(next_path), quote=True),
        error=f'<p class="err">{html.escape(error)}</p>' if error else "",
    )
    return HTMLResponse(body, status, headers={"Cache-Control": "no-store"})


async def login_submit(
    token: str | None, body: bytes, https: bool, max_age_s: int = 7 * 86400
) -> Response:
    """Check a posted form; on success set the cookie and redirect to ``next``."""
    form = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace"))
    given = form.get("token", [""])[0]
    target = _safe_next(form.get("next", ["/"])[0])
    if not token:
        return RedirectResponse(target, 303)
    if not _same(given, token):
        return login_page(target, "Wrong token.", 401)
    response = RedirectResponse(target, 303)
    response.set_cookie(
        COOKIE,
        session_value(token, int(time.time()) + max_age_s),
        max_age=max_age_s,
        httponly=True,
        samesite="strict",
        secure=https,
        path="/",
    )
    return response


def logout() -> Response:
    """Forget the cookie."""
    response = RedirectResponse("/login", 303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


class AuthMiddleware:
    """Pure ASGI middleware: refuse unauthenticated requests when a token is set."""

    def __init__(
        self, app: ASGIApp, token: str | None, throttle: AuthThrottle | None = None
    ) -> None:
        self.app = app
        self.token = token
        self.throttle = throttle or AuthThrottle()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass authorised requests on; answer the others."""
        if (
            not self.token
            or scope["type"] not in ("http", "websocket")
            or scope["path"] in OPEN_PATHS
        ):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        client = conn.client.host if conn.client else ""
        wait = self.throttle.blocked(client)
        if wait == 0 and authorized(self.token, conn):
            await self.app(scope, receive, send)
            return
        if wait == 0 and _presented(conn):
            self.throttle.failed(client)
        if scope["type"] == "websocket":
            # Closing before accept makes the server answer the handshake with 403.
            await send({"type": "websocket.close", "code": 1008, "reason": ""})
            return
        response: Response
        if wait > 0:
            response = too_many(wait)
            await response(scope, receive, send)
            return
        accepts_html = "text/html" in conn.headers.get("accept", "")
        if scope["method"] == "GET" and accepts_html:
            target = scope["path"]
            response = RedirectResponse(f"/login?next={quote(target)}", 303)
        else:
            response = JSONResponse(
                {
                    "error": "Unauthorized",
                    "detail": "Missing or wrong token: send 'Authorization: Bearer "
                    "<token>' or sign in at /login",
                },
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        await response(scope, receive, send)
