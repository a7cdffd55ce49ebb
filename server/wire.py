"""Ingest's frame decoder: a fast path for the usual readings frame.

``protocol.decode`` checks every field with a helper call per reading, which was a
third of the server's CPU per frame. ``decode_frame`` accepts the common shape of a
readings frame (floats, None and arrays, string names, no errors) with C-level type
checks and hands everything else, including every frame it would have to reject,
to ``protocol.decode``. It therefore returns exactly what ``protocol.decode``
returns and raises exactly what it raises (tests/server/test_wire.py checks both).
"""

from __future__ import annotations

from typing import Any

import msgpack

from glasscockpit.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Array,
    Frame,
    ProtocolError,
    Readings,
    check_run_id,
    decode,
)
from glasscockpit.protocol.codec import ARRAY_EXT, MAX_NAME

#: Value types a reading may have as they come out of msgpack unchanged.
_LEAVES = frozenset({float, type(None), Array})


class _Slow(Exception):
    """Not the usual shape: let ``protocol.decode`` decide (and word any error)."""


def _ext_hook(code: int, payload: bytes) -> Array:
    if code != ARRAY_EXT:
        raise _Slow
    dtype, shape, data = msgpack.unpackb(payload, use_list=True)
    return Array(dtype, tuple(shape), data)


#: Names already found valid. Agents send the same few hundred names in every
#: frame, so a C-level subset test replaces a Python loop over them. Bounded:
#: cleared when full, so odd inputs cannot grow it.
_GOOD_NAMES: set[str] = set()
_MAX_GOOD_NAMES = 4096
#: Run ids already found valid (the same id comes in every frame of a run).
_GOOD_RUNS: set[str] = set()


def _names_ok(names: dict[Any, Any]) -> bool:
    """Every key is a string of 1-MAX_NAME characters (``codec._name``)."""
    if names.keys() <= _GOOD_NAMES:
        return True
    if not all(type(n) is str and 0 < len(n) <= MAX_NAME for n in names):
        return False
    if len(_GOOD_NAMES) + len(names) > _MAX_GOOD_NAMES:
        _GOOD_NAMES.clear()
    _GOOD_NAMES.update(names)
    return True


def _readings(body: dict[str, Any]) -> Readings | None:
    """The readings frame when ``body`` has the usual shape, else None."""
    run, seq, step = body.get("run"), body.get("seq"), body.get("step")
    wall, values = body.get("wall_time"), body.get("values")
    if not (
        type(body.get("v")) is int
        and body["v"] == PROTOCOL_VERSION
        and type(run) is str
        and type(seq) is int
        and seq >= 0
        and type(step) is int
        and type(wall) is float
        and type(values) is dict
        and type(body.get("errors")) is dict
        and not body["errors"]
        and _names_ok(values)
    ):
        return None
    for value in values.values():
        if type(value) is dict:
            if not (_names_ok(value) and _LEAVES.issuperset(map(type, value.values()))):
                return None
        elif type(value) not in _LEAVES:
            return None
    if run not in _GOOD_RUNS:
        try:
            check_run_id(run)
        except ProtocolError:
            return None
        if len(_GOOD_RUNS) >= _MAX_GOOD_NAMES:
            _GOOD_RUNS.clear()
        _GOOD_RUNS.add(run)
    return Readings(run=run, seq=seq, step=step, wall_time=wall, values=values)


def decode_frame(data: bytes, max_size: int) -> Frame | Ack:
    """``protocol.decode(data, max_size)``, faster for the usual readings frame."""
    if len(data) <= max_size:
        try:
            body = msgpack.unpackb(
                data, ext_hook=_ext_hook, raw=False, strict_map_key=True
            )
        except Exception:  # garbage, or an unusual array: decode says which
            body = None
        if type(body) is dict and body.get("t") == "readings":
            frame = _readings(body)
            if frame is not None:
                return frame
    return decode(data, max_size)
