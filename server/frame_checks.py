"""Checks of an incoming frame that need no run state: schema, sizes, limits.

A frame that fails raises ``Rejected`` (or ``LimitExceeded``) with a specific
reason before anything is stored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from glasscockpit.protocol import Array, Frame, Hello, Readings
from glasscockpit.server.errors import LimitExceeded, Rejected
from glasscockpit.server.jsonsafe import safe

#: Largest step and sequence number accepted (exact in float64 and in JSON).
MAX_INT = 2**53


@dataclass(frozen=True)
class Limits:
    """Per-frame and per-run limits; see ``Settings`` for the meaning of each."""

    max_instruments: int = 256
    max_keys: int = 4096
    max_series: int = 10_000
    max_array_elements: int = 65_536
    max_meta_bytes: int = 64 * 2**10


def _plain(value: Any, depth: int = 0) -> Any:
    if isinstance(value, float):
        return safe(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if depth < 32 and isinstance(value, list):
        return [_plain(v, depth + 1) for v in value]
    if (
        depth < 32
        and isinstance(value, dict)
        and all(isinstance(k, str) for k in value)
    ):
        return {k: _plain(v, depth + 1) for k, v in value.items()}
    raise Rejected(
        "schema",
        "Run metadata must be maps with string keys, lists, strings, numbers, "
        f"booleans or null, at most 32 levels deep; got {type(value).__name__}",
    )


def clean_meta(meta: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Metadata as JSON-safe data (NaN/Inf spelled out, like readings), size-checked.

    Non-finite numbers are kept as "NaN"/"Infinity" rather than refused: a
    hyperparameter such as ``max_norm=inf`` is legitimate and must not cost the run.
    """
    clean: dict[str, Any] = _plain(meta)
    size = len(json.dumps(clean))
    if size > limits.max_meta_bytes:
        raise LimitExceeded(
            f"Run metadata of {size} bytes exceeds the limit of "
            f"{limits.max_meta_bytes} (GLASSCOCKPIT_MAX_META_BYTES)"
        )
    return clean


def _check_array(a: Array, where: str, limits: Limits) -> None:
    # Every dimension counts, even next to a zero: a shape like [2**62, 0] holds no
    # bytes but cannot be built as an array (it used to reach the frame log first
    # and stop every later start-up), and [0, 2**40] is no histogram either. With
    # each dimension and their product (zeros as ones) within the cap, and the
    # byte length checked by ``Array``, ``as_numpy`` cannot fail on it later.
    cap = limits.max_array_elements
    shape = a.shape
    if len(shape) == 1:
        too_big = shape[0] > cap
    else:
        too_big = len(shape) > 3 or math.prod(max(n, 1) for n in shape) > cap
    if too_big:
        raise LimitExceeded(
            f"Array {where} of shape {list(shape)} exceeds 3 dimensions or "
            f"{cap} elements (GLASSCOCKPIT_MAX_ARRAY_ELEMENTS; a 0 counts as 1)"
        )


def as_numpy(a: Array) -> np.ndarray:
    """Zero-copy view of a wire array."""
    return np.frombuffer(a.data, dtype=a.dtype).reshape(a.shape)


def check_frame(frame: Frame, limits: Limits) -> None:
    """Checks that need no run state; raise ``Rejected`` with a specific reason."""
    if not 0 <= frame.seq <= MAX_INT:
        raise Rejected("schema", f"Sequence number {frame.seq} is out of [0, 2**53]")
    if isinstance(frame, Hello):
        if len(frame.instruments) > limits.max_instruments:
            raise LimitExceeded(
                f"Hello declares {len(frame.instruments)} instruments; the limit is "
                f"{limits.max_instruments} (GLASSCOCKPIT_MAX_INSTRUMENTS)"
            )
    elif isinstance(frame, Readings):
        if not math.isfinite(frame.wall_time):
            raise Rejected(
                "nonfinite", f"wall_time must be finite, got {frame.wall_time}"
            )
        if not 0 <= frame.step <= MAX_INT:
            raise Rejected("schema", f"Step {frame.step} is out of [0, 2**53]")
        if len(frame.values) > limits.max_instruments or (
            len(frame.errors) > limits.max_instruments
        ):
            raise LimitExceeded(
                f"Readings name more than {limits.max_instruments} instruments "
                "(GLASSCOCKPIT_MAX_INSTRUMENTS)"
            )
        for name, value in frame.values.items():
            if isinstance(value, Array):
                _check_array(value, repr(name), limits)
            elif isinstance(value, dict):
                if len(value) > limits.max_keys:
                    raise LimitExceeded(
                        f"Reading {name!r} has {len(value)} keys; the limit is "
                        f"{limits.max_keys} (GLASSCOCKPIT_MAX_KEYS)"
                    )
                for key, v in value.items():
                    if isinstance(v, Array):
                        _check_array(v, f"{name}.{key}", limits)
