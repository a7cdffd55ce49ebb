"""Hypothesis strategies for the server: series readings, agent sessions, raw bytes."""

from __future__ import annotations

import msgpack
from hypothesis import strategies as st

from glasscockpit.protocol import (
    PROTOCOL_VERSION,
    Array,
    Bye,
    Frame,
    Hello,
    InstrumentSpec,
    Kind,
    PanelSpec,
    Readings,
    encode,
)
from tests.protocol import strategies as proto

#: Any float a reading can carry, NaN and infinities included.
reading_values = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def series_readings(
    draw: st.DrawFn, max_size: int = 400
) -> list[tuple[int, float, float]]:
    """(step, wall_time, value) readings with non-decreasing steps.

    Steps advance by 0 (two readings at one step), 1, or a random jump, so bucket
    boundaries, repeated steps and sparse logging are all exercised.
    """
    gaps = draw(
        st.lists(
            st.one_of(st.just(1), st.integers(0, 3), st.integers(4, 5000)),
            max_size=max_size,
        )
    )
    values = draw(st.lists(reading_values, min_size=len(gaps), max_size=len(gaps)))
    start = draw(st.integers(0, 10**6))
    out = []
    step = start
    for i, (gap, value) in enumerate(zip(gaps, values, strict=True)):
        step += gap if i else 0
        out.append((step, float(i), value))
    return out


def _hist(bins: int) -> Array:
    return Array("<f4", (bins,), bytes(4 * bins))


@st.composite
def sessions(draw: st.DrawFn, run: str = "fuzz") -> list[Frame]:
    """One run as an agent sends it: hello, readings of every kind, maybe a bye.

    Readings carry scalars (NaN/Inf included), per-layer dicts with a "total" and
    layer keys, and histogram arrays, with seq increasing by one per frame.
    """
    layers = draw(st.lists(st.sampled_from(["w1", "b1", "w2", "b2"]), unique=True))
    hello = Hello(
        run=run,
        seq=0,
        instruments=(
            InstrumentSpec("loss", Kind.SCALAR, PanelSpec("Loss")),
            InstrumentSpec("grad_norm", Kind.PER_LAYER, PanelSpec("Grad norm")),
            InstrumentSpec("hist", Kind.HISTOGRAM, PanelSpec("Hist")),
        ),
        meta={"lr": draw(reading_values), "layers": layers},
    )
    frames: list[Frame] = [hello]
    n = draw(st.integers(0, 60))
    for seq in range(1, n + 1):
        values: dict[str, object] = {"loss": draw(reading_values)}
        if draw(st.booleans()):
            values["grad_norm"] = {
                "total": draw(reading_values),
                **{k: draw(reading_values) for k in layers},
            }
        if draw(st.booleans()):
            values["hist"] = {"counts": _hist(8), "edges": _hist(9)}
        frames.append(
            Readings(run, seq, step=seq - 1, wall_time=float(seq), values=values)  # type: ignore[arg-type]
        )
    if draw(st.booleans()):
        frames.append(Bye(run, n + 1, draw(st.sampled_from(["finished", "failed"]))))
    return frames


@st.composite
def resent(draw: st.DrawFn, frames: list[Frame]) -> list[Frame]:
    """``frames`` as delivered across reconnects: each reconnect resends the hello
    and a suffix of the frames already sent (the agent's unacknowledged window)."""
    out: list[Frame] = []
    for i, frame in enumerate(frames):
        out.append(frame)
        if i and draw(st.integers(0, 9)) == 0:
            back = draw(st.integers(0, i))
            out.append(frames[0])
            out.extend(frames[max(1, i - back) : i + 1])
    return out


#: msgpack-able junk: nested maps and lists of scalars, bytes and strings.
junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


@st.composite
def frame_like_maps(draw: st.DrawFn) -> bytes:
    """Maps that look like frames (right version and type) with junk in the fields."""
    body = {
        "v": draw(st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION, 0, 2, "1"])),
        "t": draw(st.sampled_from(["hello", "readings", "bye", "ack", "x"])),
        "run": draw(st.one_of(proto.run_ids, st.text(max_size=12), junk)),
        "seq": draw(st.one_of(st.integers(-5, 2**64 - 1), junk)),
    }
    for key in ("step", "wall_time", "values", "errors", "instruments", "meta"):
        if draw(st.booleans()):
            body[key] = draw(junk)
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid encoded frame with bytes flipped, cut off or appended."""
    data = bytearray(encode(draw(proto.frames)))
    for _ in range(draw(st.integers(0, 4))):
        if data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    tail = draw(st.binary(max_size=8))
    return bytes(data[:cut]) + tail if draw(st.booleans()) else bytes(data) + tail


#: Bytes an agent (or anything else) might send: garbage, junk maps, damaged frames.
wire_bytes = st.one_of(
    st.binary(max_size=200),
    junk.map(lambda obj: msgpack.packb(obj, use_bin_type=True)),
    frame_like_maps(),
    mutated_frames(),
    proto.frames.map(encode),
)
