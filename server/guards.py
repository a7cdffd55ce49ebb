"""Request guards around the app: Host check, security headers, auth throttling.

* ``HostCheckMiddleware``: a server bound to loopback answers only requests whose
  ``Host`` names loopback (or a name in ``GLASSCOCKPIT_ALLOWED_HOSTS``). A page on
  an attacker's domain that re-resolves its name to 127.0.0.1 (DNS rebinding) is
  same-origin with itself, so the browser lets it read the answers; its requests
  still carry the attacker's host name, and this refuses them (400, like Django's
  ``ALLOWED_HOSTS``).
* ``SecurityHeadersMiddleware``: every HTTP answer says ``nosniff``, may not be
  framed (clickjacking), sends no referrer.
* ``AuthThrottle``: wrong tokens cost each client a token of a bucket refilling at
  one per second (burst 20); an empty bucket answers 429 to that client until it
  refills, right token or not, so guessing runs at ~1 try a second, not ~500.
"""

from __future__ import annotations

import ipaddress

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glasscockpit.server.ratelimit import TokenBucket

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
]


def is_loopback(host: str) -> bool:
    """Whether a bind address or host name is loopback only."""
    if host.lower() in LOOPBACK_NAMES or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name of a Host header without its port (``[::1]:80`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheckMiddleware:
    """Refuse requests whose Host is not loopback or an allowed name."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = frozenset(a.lower() for a in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass requests with an acceptable Host on; answer 400 to the others."""
        if scope["type"] in ("http", "websocket"):
            name = host_name(Headers(scope=scope).get("host", ""))
            if not (is_loopback(name) or name in self.allowed):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": ""})
                    return
                response = PlainTextResponse(
                    "Invalid Host header: this server is bound to loopback; add the "
                    "name to GLASSCOCKPIT_ALLOWED_HOSTS to serve it",
                    400,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SecurityHeadersMiddleware:
    """Add ``SECURITY_HEADERS`` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; add the headers to its response start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                message = {**message, "headers": [*message["headers"], *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class AuthThrottle:
    """Per-client bucket of wrong-token attempts (see the module doc)."""

    def __init__(self, per_s: float = 1.0, burst: int = 20) -> None:
        self.per_s = per_s
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def blocked(self, client: str) -> float:
        """Seconds the client must wait before its next attempt (0: go ahead)."""
        bucket = self._buckets.get(client)
        if bucket is None:
            return 0.0
        bucket.take(0)  # refill
        if bucket.tokens >= bucket.burst:
            del self._buckets[client]  # refilled: forget it (bounded memory)
        # One more wrong guess must be affordable: a whole token.
        return 0.0 if bucket.tokens >= 1 else (1 - bucket.tokens) / bucket.rate

    def failed(self, client: str) -> None:
        """Count one wrong token."""
        if len(self._buckets) > 10_000:
            self._buckets.clear()  # bounded, whatever the number of addresses
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(self.per_s, self.burst)
        bucket.take(1)
