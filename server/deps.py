"""Typed dependencies: the store, the settings, the metrics, and the auth check."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from glasscockpit.server.auth import authorized
from glasscockpit.server.errors import Unauthorized
from glasscockpit.server.ratelimit import ConnectionGate
from glasscockpit.server.settings import Settings
from glasscockpit.server.store import RunStore


def get_store(conn: HTTPConnection) -> RunStore:
    """The app's RunStore (created in the lifespan)."""
    store: RunStore = conn.app.state.store
    return store


def get_settings_dep(conn: HTTPConnection) -> Settings:
    """The app's Settings."""
    settings: Settings = conn.app.state.settings
    return settings


def get_metrics(conn: HTTPConnection) -> Counter[str]:
    """Process counters (frames in, rejected by reason, ...)."""
    metrics: Counter[str] = conn.app.state.metrics
    return metrics


def get_gate(conn: HTTPConnection) -> ConnectionGate:
    """Agent connection caps and per-client rate limits."""
    gate: ConnectionGate = conn.app.state.gate
    return gate


def token_ok(settings: Settings, conn: HTTPConnection) -> bool:
    """True when no token is configured or the request presents the right one.

    Agents and REST clients send ``Authorization: Bearer <token>``; browsers carry
    the session cookie set by ``/login`` (see ``server/auth.py``).
    """
    return authorized(settings.token, conn)


def require_token(request: Request) -> None:
    """Dependency for REST routes: raise ``Unauthorized`` on a wrong token."""
    if not token_ok(get_settings_dep(request), request):
        raise Unauthorized(
            "Missing or wrong token: send 'Authorization: Bearer <token>' "
            "or sign in at /login"
        )


StoreDep = Annotated[RunStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
MetricsDep = Annotated[Counter[str], Depends(get_metrics)]
GateDep = Annotated[ConnectionGate, Depends(get_gate)]
