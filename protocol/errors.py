"""Errors raised while decoding or validating wire frames.

Tree::

    ProtocolError
    ├── MalformedFrame        bytes are not a valid msgpack frame of a known type
    │   ├── NotMsgpack        the bytes are not msgpack at all
    │   └── InvalidRunId      the run id is not a safe name (path-like, too long, ...)
    ├── UnsupportedVersion    the peer speaks another protocol version
    └── FrameTooLarge         the frame exceeds the configured size limit
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """Base class: a frame could not be accepted."""


class MalformedFrame(ProtocolError):
    """The bytes are not a well-formed frame (bad msgpack, wrong schema or types)."""


class NotMsgpack(MalformedFrame):
    """The bytes do not parse as msgpack."""


class InvalidRunId(MalformedFrame):
    """The run id is not 1-128 safe characters (it names files and URLs)."""


class UnsupportedVersion(ProtocolError):
    """The frame's protocol version is not one this side understands."""


class FrameTooLarge(ProtocolError):
    """The encoded frame is larger than the allowed maximum."""
