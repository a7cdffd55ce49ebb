"""The ingest decoder returns and raises exactly what protocol.decode does."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glasscockpit.protocol import (
    PROTOCOL_VERSION,
    Array,
    ProtocolError,
    Readings,
    decode,
    encode,
)
from glasscockpit.server.wire import decode_frame
from tests.protocol import strategies as proto
from tests.server.strategies import junk, wire_bytes

MAX_SIZE = 4096


def outcome(fn: Any, data: bytes) -> tuple[Any, ...]:
    """What a decoder makes of ``data``: the frame re-encoded, or the error."""
    try:
        frame = fn(data, MAX_SIZE)
    except ProtocolError as exc:
        return ("error", type(exc), str(exc))
    # Re-encoding compares NaN, float-vs-int and array bytes exactly.
    return ("frame", type(frame), encode(frame))


def assert_same(data: bytes) -> None:
    assert outcome(decode_frame, data) == outcome(decode, data)


def packed(body: dict[str, Any]) -> bytes:
    def default(obj: Any) -> Any:
        payload = msgpack.packb([obj.dtype, list(obj.shape), obj.data])
        return msgpack.ExtType(1, payload)

    out: bytes = msgpack.packb(body, default=default, use_bin_type=True)
    return out


def usual(**changes: Any) -> dict[str, Any]:
    """The body of a usual readings frame, with some fields changed."""
    body: dict[str, Any] = {
        "t": "readings",
        "v": PROTOCOL_VERSION,
        "run": "run-1",
        "seq": 3,
        "step": 2,
        "wall_time": 1.5,
        "values": {"loss": 0.5, "grad_norm": {"total": 1.0, "w": float("nan")}},
        "errors": {},
    }
    body.update(changes)
    return body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wire_bytes)
def test_any_bytes_decode_the_same(data):
    assert_same(data)


@settings(max_examples=300, deadline=None)
@given(proto.readings)
def test_readings_frames_decode_the_same(frame):
    data = encode(frame)
    assert_same(data)
    assert isinstance(decode_frame(data, MAX_SIZE), Readings)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(
        ["v", "run", "seq", "step", "wall_time", "values", "errors", "t"]
    ),
    value=st.one_of(
        junk,
        st.dictionaries(st.text(max_size=3), junk, max_size=3),
        st.dictionaries(
            st.one_of(st.text(max_size=210), st.binary(max_size=3)),
            st.one_of(junk, st.dictionaries(st.text(max_size=3), junk, max_size=3)),
            max_size=3,
        ),
    ),
)
def test_usual_frames_with_one_odd_field_decode_the_same(field, value):
    assert_same(packed(usual(**{field: value})))


def test_edge_cases_decode_the_same():
    hist = Array("<f4", (2,), bytes(8))
    bodies = [
        usual(),
        usual(v=True),
        usual(v=1.0),
        usual(seq=True),
        usual(seq=-1),
        usual(step=False),
        usual(wall_time=True),
        usual(wall_time=7),
        usual(wall_time=float("inf")),
        usual(run="a..b"),
        usual(run="x" * 129),
        usual(run=b"run"),
        usual(errors={"loss": "boom"}),
        usual(extra=[1, 2]),
        usual(values={"loss": 1}),
        usual(values={"loss": True}),
        usual(values={"": 1.0}),
        usual(values={"x" * 200: 1.0}),
        usual(values={"x" * 201: 1.0}),
        usual(values={b"loss": 1.0}),
        usual(values={"g": {"w": 1}}),
        usual(values={"g": {"w": {"deeper": 1.0}}}),
        usual(values={"g": {"": 1.0}}),
        usual(values={"g": {"w": None, "h": hist}, "h": hist, "n": None}),
        usual(values={"g": [1.0]}),
    ]
    for body in bodies:
        assert_same(packed(body))
    big = packed(usual(values={"loss": 0.5, "pad": {f"k{i}": 0.0 for i in range(500)}}))
    assert len(big) > MAX_SIZE
    assert_same(big)
    # Arrays whose payload breaks the Array rules, or an unknown extension type.
    bad_shape = msgpack.ExtType(1, msgpack.packb(["<f4", [3], bytes(8)]))
    unknown = msgpack.ExtType(7, b"")
    for ext in (bad_shape, unknown):
        data = msgpack.packb(usual(values={"h": ext}), use_bin_type=True)
        assert outcome(decode_frame, data)[0] == "error"
        assert_same(data)
