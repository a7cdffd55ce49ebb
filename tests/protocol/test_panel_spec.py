"""PanelSpec's later, optional fields: round trip, defaults for old frames, checks."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from glasscockpit.protocol import (
    PROTOCOL_VERSION,
    Hello,
    InstrumentSpec,
    Kind,
    MalformedFrame,
    PanelSpec,
    decode,
    encode,
)

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


def hello(panel: PanelSpec) -> Hello:
    return Hello(run="r", seq=0, instruments=(InstrumentSpec("a", Kind.SCALAR, panel),))


@given(
    ref_lines=st.lists(finite, max_size=4).map(tuple),
    band=st.none() | st.tuples(finite, finite).map(lambda t: tuple(sorted(t))),
    smooth=st.booleans(),
    distribution=st.sampled_from(["", "histogram", "alpha"]),
    card=st.text(max_size=20),
    x_label=st.text(max_size=20),
)
def test_new_fields_round_trip(ref_lines, band, smooth, distribution, card, x_label):
    panel = PanelSpec(
        "T",
        ref_lines=ref_lines,
        band=band,
        smooth=smooth,
        distribution=distribution,
        card=card,
        x_label=x_label,
    )
    frame = decode(encode(hello(panel)))
    assert isinstance(frame, Hello)
    assert frame.instruments[0].panel == panel


def old_hello_bytes(panel: dict[str, object]) -> bytes:
    """A hello frame as the first protocol-1 agents wrote it (five panel fields)."""
    body = {
        "t": "hello",
        "v": PROTOCOL_VERSION,
        "run": "old-agent",
        "seq": 0,
        "protocol": PROTOCOL_VERSION,
        "meta": {},
        "instruments": [
            {"name": "loss", "kind": "scalar", "panel": panel, "schedule": ""}
        ],
    }
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def test_frames_without_the_new_fields_still_decode_with_defaults():
    old = {"title": "Loss", "y_label": "loss", "log_y": True, "group": "g", "help": ""}
    frame = decode(old_hello_bytes(old))
    assert isinstance(frame, Hello)
    panel = frame.instruments[0].panel
    assert panel == PanelSpec("Loss", "loss", True, "g", "")
    assert (panel.ref_lines, panel.band, panel.smooth) == ((), None, False)
    assert (panel.distribution, panel.card, panel.x_label) == ("", "", "")


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        ({"band": [2.0, 1.0]}, "low <= high"),
        ({"band": [1.0]}, "band"),
        ({"ref_lines": [float("nan")]}, "finite"),
        ({"ref_lines": ["1"]}, "numbers"),
        ({"distribution": "violin"}, "distribution"),
        ({"smooth": "yes"}, "smooth"),
    ],
)
def test_bad_new_fields_are_rejected_by_name(extra, text):
    panel = {"title": "T", "y_label": "", "log_y": False, "group": "", "help": ""}
    with pytest.raises(MalformedFrame, match=text):
        decode(old_hello_bytes({**panel, **extra}))


def test_constructor_rejects_bad_values():
    with pytest.raises(ValueError, match="distribution"):
        PanelSpec("T", distribution="kde")
    with pytest.raises(ValueError, match="band"):
        PanelSpec("T", band=(1.0, 0.0))
