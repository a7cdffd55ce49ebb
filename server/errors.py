"""Errors whose text may reach clients, with their HTTP status and websocket close code.

Tree::

    PublicError
    ├── Unauthorized       HTTP 401 / ws 1008 (before accept: HTTP 403)
    ├── UnknownRun         HTTP 404
    ├── UnknownInstrument  HTTP 404
    ├── NoFrameLog         HTTP 404 (raw frame export without GLASSCOCKPIT_DATA_DIR)
    └── Rejected           a frame was refused; ``reason`` names a metrics counter
        └── LimitExceeded  ws 1008: too many instruments/keys, too large arrays/meta;
                           ws 1013 (try again later): every stored run is live
        (reason log_full)  ws 1008: the run's frame log is at its cap; ws 1013: all
                           frame logs together are (server/framelog.py)

Every rejected frame closes its connection with ``Rejected.ws_code`` and a reason
text, and increments ``rejected.<reason>`` on ``/v1/metrics``. The codes follow
RFC 6455: 1002 protocol error (wrong version), 1003 unsupported data (text frame),
1007 invalid payload (bad msgpack, wrong schema, bad run id, NaN where none may be),
1008 policy (limits, auth), 1009 too big, 1011 server bug, 1013 try again later
(the store is full of live runs, or the frame logs are full). The agent treats
1002, 1003, 1007, 1008 and 1009 as fatal (resending the same frame cannot help) and
retries after 1011 and 1013.
"""

from __future__ import annotations

from glasscockpit.protocol import (
    FrameTooLarge,
    InvalidRunId,
    MalformedFrame,
    NotMsgpack,
    ProtocolError,
    UnsupportedVersion,
)


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


class NoFrameLog(PublicError, LookupError):
    """The raw frame log is only kept when GLASSCOCKPIT_DATA_DIR is set."""

    http_status = 404


class Rejected(PublicError):
    """A frame the server will not store; closes the connection."""

    def __init__(self, reason: str, message: str, ws_code: int = 1007) -> None:
        super().__init__(message)
        self.reason = reason
        self.ws_code = ws_code


class LimitExceeded(Rejected):
    """A frame would push a run past a configured limit."""

    def __init__(self, message: str, ws_code: int = 1008) -> None:
        super().__init__("limit", message, ws_code)


def rejection(exc: ProtocolError) -> Rejected:
    """The ``Rejected`` for a frame the decoder refused, with its reason slug."""
    if isinstance(exc, UnsupportedVersion):
        return Rejected("version", str(exc), 1002)
    if isinstance(exc, FrameTooLarge):
        return Rejected("too_large", str(exc), 1009)
    if isinstance(exc, NotMsgpack):
        return Rejected("bad_msgpack", str(exc), 1007)
    if isinstance(exc, InvalidRunId):
        return Rejected("run_id", str(exc), 1007)
    if isinstance(exc, MalformedFrame):
        return Rejected("schema", str(exc), 1007)
    return Rejected("protocol", str(exc), 1007)
