"""Errors whose text may reach clients, with their HTTP status and websocket close code.

Tree::

    PublicError
    ├── Unauthorized       HTTP 401 / ws 1008
    ├── UnknownRun         HTTP 404
    ├── UnknownInstrument  HTTP 404
    └── InvalidFrame       ws 1007 (UnsupportedVersion: 1002, FrameTooLarge: 1009)
"""

from __future__ import annotations

from glasscockpit.protocol import FrameTooLarge, ProtocolError, UnsupportedVersion


class PublicError(Exception):
    """An error whose message is safe to show to clients."""

    http_status = 400
    ws_code = 1008


class Unauthorized(PublicError):
    """Missing or wrong token."""

    http_status = 401
    ws_code = 1008


class UnknownRun(PublicError, LookupError):
    """No run with this id is stored."""

    http_status = 404


class UnknownInstrument(PublicError, LookupError):
    """The run has no such instrument."""

    http_status = 404


def close_code(exc: ProtocolError) -> int:
    """Websocket close code for a rejected frame."""
    if isinstance(exc, UnsupportedVersion):
        return 1002
    if isinstance(exc, FrameTooLarge):
        return 1009
    return 1007
