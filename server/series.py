"""A bounded time series that keeps min, max and last of stable buckets.

Each bucket covers a contiguous range of steps. When more than ``capacity``
buckets exist, adjacent pairs are merged (bucket width doubles), so memory is
bounded, spikes survive as a bucket's min or max, and the newest reading is
always the ``last`` of the final bucket, exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class SeriesView:
    """Columns of a (possibly downsampled) series, one entry per bucket."""

    step: list[int] = field(default_factory=list)
    wall_time: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)  # last reading of the bucket
    min: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)


def _lo(a: float, b: float) -> float:
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return min(a, b)


def _hi(a: float, b: float) -> float:
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return max(a, b)


class Series:
    """Bounded per-step series of floats (NaN/Inf kept as they are)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 4:
            raise ValueError(f"Series capacity must be >= 4, got {capacity}")
        self.capacity = capacity
        self.count = 0  # readings ever appended
        self._b = SeriesView()

    def __len__(self) -> int:
        return len(self._b.step)

    def append(self, step: int, wall_time: float, value: float) -> None:
        """Add one reading; steps are expected to increase."""
        b = self._b
        b.step.append(step)
        b.wall_time.append(wall_time)
        b.value.append(value)
        b.min.append(value)
        b.max.append(value)
        self.count += 1
        if len(b.step) > self.capacity:
            self._b = merge_pairs(b)

    def view(
        self, max_points: int | None = None, after_step: int | None = None
    ) -> SeriesView:
        """The buckets (after ``after_step``), merged down to ``max_points``."""
        b = self._b
        start = 0
        if after_step is not None:
            start = len(b.step)
            while start > 0 and b.step[start - 1] > after_step:
                start -= 1
        out = SeriesView(
            b.step[start:],
            b.wall_time[start:],
            b.value[start:],
            b.min[start:],
            b.max[start:],
        )
        while max_points is not None and len(out.step) > max(max_points, 1):
            out = merge_pairs(out)
        return out


def merge_pairs(b: SeriesView) -> SeriesView:
    """Merge buckets (0,1), (2,3), ...; an odd final bucket stays as it is."""
    out = SeriesView()
    n = len(b.step)
    for i in range(0, n - 1, 2):
        j = i + 1
        out.step.append(b.step[j])
        out.wall_time.append(b.wall_time[j])
        out.value.append(b.value[j])
        out.min.append(_lo(b.min[i], b.min[j]))
        out.max.append(_hi(b.max[i], b.max[j]))
    if n % 2:
        out.step.append(b.step[-1])
        out.wall_time.append(b.wall_time[-1])
        out.value.append(b.value[-1])
        out.min.append(b.min[-1])
        out.max.append(b.max[-1])
    return out
