"""Wire format shared by the agent and the server (stdlib + msgpack only)."""

from __future__ import annotations

from glasscockpit.protocol.codec import check_run_id, decode, encode
from glasscockpit.protocol.errors import (
    FrameTooLarge,
    InvalidRunId,
    MalformedFrame,
    NotMsgpack,
    ProtocolError,
    UnsupportedVersion,
)
from glasscockpit.protocol.frames import (
    PROTOCOL_VERSION,
    Ack,
    Array,
    Bye,
    Frame,
    Hello,
    InstrumentSpec,
    Kind,
    PanelSpec,
    Readings,
    Value,
)

__all__ = [
    "PROTOCOL_VERSION",
    "Ack",
    "Array",
    "Bye",
    "Frame",
    "FrameTooLarge",
    "Hello",
    "InstrumentSpec",
    "InvalidRunId",
    "Kind",
    "MalformedFrame",
    "NotMsgpack",
    "PanelSpec",
    "ProtocolError",
    "Readings",
    "UnsupportedVersion",
    "Value",
    "check_run_id",
    "decode",
    "encode",
]
