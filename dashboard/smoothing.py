"""Debiased exponential moving average, as TensorBoard's smoothing slider draws it.

``s_t = w·s_{t-1} + (1-w)·x_t`` started at 0, divided by ``1 - w^n`` (n finite
readings so far) so the first points are not pulled towards 0. Non-finite
readings (None here) are skipped and stay gaps. The state ``(s, n)`` lets live
updates continue the line exactly where the last one stopped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

EmaState = tuple[float, int]
#: Smoothed values this close (relative) to the reading are drawn as the reading.
SNAP = 1e-12


def ema(
    values: Sequence[float | None], weight: float, state: EmaState = (0.0, 0)
) -> tuple[list[float | None], EmaState]:
    """The smoothed values and the state after the last one.

    Args:
        values: Readings, None where missing or non-finite.
        weight: Smoothing weight in [0, 1); 0 returns the values unchanged.
        state: ``(accumulator, finite readings so far)`` from a previous call.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"Smoothing weight must be in [0, 1), got {weight}")
    last, n = state
    out: list[float | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        last = last * weight + (1.0 - weight) * v
        n += 1
        smooth = last / (1.0 - weight**n)
        # A constant reading comes back off by an ulp or two, and a log axis
        # autoranged over [c(1 - 1e-16), c] prints garbage ticks: snap to it.
        out.append(v if math.isclose(smooth, v, rel_tol=SNAP, abs_tol=0.0) else smooth)
    return out, (last, n)
