"""JSON-safe numbers: NaN and ±Inf become the strings "NaN", "Infinity", "-Infinity"."""

from __future__ import annotations

import math


def safe(x: float) -> float | str:
    """A float, or its name when JSON cannot carry it."""
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


def safe_list(xs: list[float]) -> list[float | str]:
    """``safe`` over a list."""
    return [safe(x) for x in xs]
