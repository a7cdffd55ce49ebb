"""The codec round-trips every frame and rejects malformed bytes by name."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glasscockpit.protocol import (
    PROTOCOL_VERSION,
    Array,
    FrameTooLarge,
    MalformedFrame,
    ProtocolError,
    Readings,
    UnsupportedVersion,
    decode,
    encode,
)
from tests.protocol.strategies import frames


@given(frames)
def test_round_trip(frame):
    data = encode(frame)
    again = decode(data)
    # NaN != NaN, so compare canonical bytes, then types and identities.
    assert encode(again) == data
    assert type(again) is type(frame)
    assert (again.run, again.seq) == (frame.run, frame.seq)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_garbage_never_crashes(data):
    with contextlib.suppress(ProtocolError):
        decode(data)


def test_array_is_raw_little_endian_bytes():
    arr = Array("<f4", (2,), b"\x00\x00\x80\x3f\x00\x00\x00\x40")  # 1.0, 2.0
    frame = Readings("r", 1, 0, 0.0, {"h": arr})
    decoded = decode(encode(frame))
    assert decoded.values["h"] == arr


def _body(**over):
    body = {
        "v": PROTOCOL_VERSION,
        "t": "readings",
        "run": "r",
        "seq": 1,
        "step": 0,
        "wall_time": 0.0,
        "values": {},
        "errors": {},
    }
    body.update(over)
    return msgpack.packb({k: v for k, v in body.items() if v is not ...})


@pytest.mark.parametrize(
    ("data", "error", "text"),
    [
        (b"\xc1", MalformedFrame, "Not a msgpack frame"),
        (msgpack.packb([1, 2]), MalformedFrame, "must be a map"),
        (_body(v=99), UnsupportedVersion, "version 99"),
        (_body(t="nope"), MalformedFrame, "Unknown frame type"),
        (_body(run="../etc"), MalformedFrame, "Invalid run id"),
        (_body(run="x" * 10_000), MalformedFrame, "Invalid run id"),
        (_body(seq=-1), MalformedFrame, "Sequence number"),
        (_body(step="3"), MalformedFrame, "'step' must be int"),
        (_body(seq=...), MalformedFrame, "'seq' is missing"),
        (_body(values={"loss": "high"}), MalformedFrame, "must be a number"),
        (_body(values={"loss": [1, 2]}), MalformedFrame, "must be a number"),
    ],
)
def test_malformed_frames_are_named(data, error, text):
    with pytest.raises(error, match=text):
        decode(data)


def test_oversized_frame():
    with pytest.raises(FrameTooLarge, match="exceeds the limit of 100"):
        decode(b"\x00" * 101, max_size=100)


def test_array_with_wrong_length_is_rejected():
    bad = msgpack.ExtType(1, msgpack.packb(["<f4", [3], b"\x00" * 4]))
    with pytest.raises(MalformedFrame, match="needs 12 bytes"):
        decode(_body(values={"h": bad}))
