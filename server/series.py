"""A bounded time series that keeps min, max and last of stable, aligned buckets.

A bucket holds every reading whose step falls in ``[k * w, (k + 1) * w)``, where the
width ``w`` is a power of two anchored at step 0 (W&B's full-fidelity buckets with
Trackio's stable bins). When more than ``capacity`` buckets exist, the width doubles
and buckets ``2k`` and ``2k + 1`` merge into ``k``. So:

* memory is bounded: at most ``capacity`` buckets, each a few numbers;
* bucket edges never move between refreshes except when the width doubles, so a live
  plot does not jitter;
* spikes survive as a bucket's ``min`` or ``max`` (random sampling hides them,
  wandb#4177);
* the newest reading is always the ``last`` of the final bucket, exactly.

A reading whose step is lower than the final bucket's range (a restarted step
counter) joins the final bucket rather than reopening an old one, so buckets stay in
arrival order. NaN never wins ``min``/``max`` against a number (``numpy.fmin``), but a
bucket of only NaNs keeps NaN; infinities count as numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Bytes one stored bucket takes in the column arrays (id, step, wall, value, min, max).
BUCKET_BYTES = 6 * 8
_INITIAL = 64  # columns start small and double, so short series stay cheap


@dataclass
class SeriesView:
    """Columns of a (possibly downsampled) series, one entry per bucket."""

    step: list[int] = field(default_factory=list)  # step of the bucket's last reading
    wall_time: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)  # last reading of the bucket
    min: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)


#: (ids, step, wall, value, min, max) columns of buckets.
Cols = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class _Columns:
    """Bucket columns; only the first ``n`` entries are in use."""

    ids: np.ndarray  # [cap] int64, bucket index k (bucket covers k*w .. (k+1)*w - 1)
    step: np.ndarray  # [cap] int64
    wall: np.ndarray  # [cap] float64
    value: np.ndarray  # [cap] float64
    lo: np.ndarray  # [cap] float64
    hi: np.ndarray  # [cap] float64
    n: int = 0

    @classmethod
    def empty(cls, size: int) -> _Columns:
        return cls(
            np.zeros(size, np.int64),
            np.zeros(size, np.int64),
            np.zeros(size, np.float64),
            np.zeros(size, np.float64),
            np.zeros(size, np.float64),
            np.zeros(size, np.float64),
        )

    def arrays(self) -> Cols:
        n = self.n
        return (
            self.ids[:n],
            self.step[:n],
            self.wall[:n],
            self.value[:n],
            self.lo[:n],
            self.hi[:n],
        )


def coarsen(cols: Cols, limit: int) -> tuple[Cols, int]:
    """Halve the resolution (``ids >> 1``) until at most ``limit`` buckets remain.

    ``cols`` are (ids, step, wall, value, min, max). Returns the merged columns and
    how many times the width doubled. Buckets must be in non-decreasing id order
    (they are: ids only grow as readings arrive).
    """
    ids, step, wall, value, lo, hi = cols
    shifts = 0
    limit = max(limit, 1)
    while len(ids) > limit:
        ids = ids >> 1
        shifts += 1
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        if len(starts) == len(ids):
            continue  # sparse steps: nothing merged at this width yet
        ends = np.r_[starts[1:], len(ids)] - 1
        lo = np.fmin.reduceat(lo, starts)
        hi = np.fmax.reduceat(hi, starts)
        ids, step, wall, value = ids[ends], step[ends], wall[ends], value[ends]
    return (ids, step, wall, value, lo, hi), shifts


class Series:
    """Bounded per-step series of floats (NaN/Inf kept as they are)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 4:
            raise ValueError(f"Series capacity must be >= 4, got {capacity}")
        self.capacity = capacity
        self.count = 0  # readings ever appended
        self.shift = 0  # bucket width is 2**shift steps
        self._c = _Columns.empty(min(_INITIAL, capacity + 1))

    def __len__(self) -> int:
        return self._c.n

    @property
    def nbytes(self) -> int:
        """Memory held by the column arrays."""
        return len(self._c.ids) * BUCKET_BYTES

    @property
    def width(self) -> int:
        """Steps per bucket (a power of two)."""
        return 1 << self.shift

    def append(self, step: int, wall_time: float, value: float) -> None:
        """Add one reading (steps are expected to increase; see the module doc)."""
        c = self._c
        self.count += 1
        k = step >> self.shift
        last = c.n - 1
        if last >= 0 and k <= c.ids[last]:
            # Same bucket as the newest reading (or an out-of-order step): update it.
            c.step[last] = step
            c.wall[last] = wall_time
            c.value[last] = value
            c.lo[last] = np.fmin(c.lo[last], value)
            c.hi[last] = np.fmax(c.hi[last], value)
            return
        if c.n == len(c.ids):
            self._grow()
            c = self._c
        i = c.n
        c.ids[i] = k
        c.step[i] = step
        c.wall[i] = wall_time
        c.value[i] = value
        c.lo[i] = value
        c.hi[i] = value
        c.n += 1
        if c.n > self.capacity:
            cols, shifts = coarsen(c.arrays(), self.capacity)
            self.shift += shifts
            n = len(cols[0])
            for dst, src in zip(c.arrays(), cols, strict=True):
                dst[:n] = src
            c.n = n

    def _grow(self) -> None:
        old = self._c
        new = _Columns.empty(min(len(old.ids) * 2, self.capacity + 1))
        new.n = old.n
        for name in ("ids", "step", "wall", "value", "lo", "hi"):
            getattr(new, name)[: old.n] = getattr(old, name)[: old.n]
        self._c = new

    def view(
        self, max_points: int | None = None, after_step: int | None = None
    ) -> SeriesView:
        """The buckets (after ``after_step``), coarsened to at most ``max_points``.

        ``after_step`` keeps the trailing buckets whose last step is greater than it
        (what a live plot has not drawn yet). Coarsening uses the same aligned
        power-of-two edges as storage, so repeated views are stable.
        """
        ids, step, wall, value, lo, hi = self._c.arrays()
        if after_step is not None:
            older = np.flatnonzero(step <= after_step)
            start = int(older[-1]) + 1 if len(older) else 0
            ids, step, wall, value, lo, hi = (
                a[start:] for a in (ids, step, wall, value, lo, hi)
            )
        if max_points is not None:
            (ids, step, wall, value, lo, hi), _ = coarsen(
                (ids, step, wall, value, lo, hi), max_points
            )
        return SeriesView(
            step.tolist(), wall.tolist(), value.tolist(), lo.tolist(), hi.tolist()
        )
