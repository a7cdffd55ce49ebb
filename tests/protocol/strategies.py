"""Hypothesis strategies for frames."""

from __future__ import annotations

import math

from hypothesis import strategies as st

from glasscockpit.protocol import (
    Array,
    Bye,
    Hello,
    InstrumentSpec,
    Kind,
    PanelSpec,
    Readings,
)

run_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,40}", fullmatch=True)
names = st.text(min_size=1, max_size=30)
floats = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def arrays(draw: st.DrawFn) -> Array:
    """Small arrays of any wire dtype."""
    dtype = draw(st.sampled_from(["<f4", "<f8", "<i4", "<i8", "|u1"]))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    size = {"<f4": 4, "<f8": 8, "<i4": 4, "<i8": 8, "|u1": 1}[dtype] * math.prod(shape)
    return Array(dtype, shape, draw(st.binary(min_size=size, max_size=size)))


leaves = st.one_of(st.none(), floats, arrays())
values = st.one_of(leaves, st.dictionaries(names, leaves, max_size=5))


@st.composite
def hellos(draw: st.DrawFn) -> Hello:
    """Hello frames with unique instrument names."""
    specs = draw(st.lists(names, unique=True, max_size=5))
    return Hello(
        run=draw(run_ids),
        seq=draw(st.integers(0, 2**40)),
        instruments=tuple(
            InstrumentSpec(
                n,
                draw(st.sampled_from(list(Kind))),
                PanelSpec(
                    title=n, y_label="y", log_y=draw(st.booleans()), group="g", help="h"
                ),
                "every step",
            )
            for n in specs
        ),
        meta=draw(
            st.dictionaries(
                st.text(max_size=10),
                st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
            )
        ),
    )


readings = st.builds(
    Readings,
    run=run_ids,
    seq=st.integers(0, 2**40),
    step=st.integers(0, 2**40),
    wall_time=st.floats(0, 2e9),
    values=st.dictionaries(names, values, max_size=6),
    errors=st.dictionaries(names, st.text(max_size=20), max_size=2),
)
byes = st.builds(
    Bye,
    run=run_ids,
    seq=st.integers(0, 2**40),
    status=st.sampled_from(["finished", "failed"]),
)
frames = st.one_of(hellos(), readings, byes)
