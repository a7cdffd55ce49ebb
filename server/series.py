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
bucket of only NaNs keeps NaN; infinities count as numbers. So that a NaN (or an
infinity that a wider bucket's min/max cannot show) never disappears into a
bucket, each bucket also counts its non-finite readings (``nonfinite``); merged
buckets add their counts.

Appends are batched: ``append`` only queues the reading, and the queue is folded
into the buckets with a few numpy operations once it holds ``FOLD_AT`` readings or
whenever the series is read (``view``, ``len``, ``width``). Folding a
batch gives exactly the buckets that folding each reading on arrival would: bucket
ids are the running maximum of ``step >> shift``, and min/max/last merge the same
way whether a batch is coarsened once at the end or each time it overflows. This
makes ingest ~10x cheaper per reading than folding one reading at a time in Python.
The queue adds at most ``FOLD_AT`` readings (24 bytes each) to a series' memory.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

import numpy as np

#: Bytes one stored bucket takes in its columns (id, step, wall, value, min, max,
#: non-finite count).
BUCKET_BYTES = 7 * 8
#: Queued readings that trigger a fold into the buckets (see the module doc).
FOLD_AT = 256
#: Memory of a series beyond its buckets, measured (RSS growth over 4,000 series
#: of 10 readings, docs/operations.md): the Series, its column object, ten
#: ``array`` headers and their smallest buffers, the run's two dict entries and the
#: key. ``array`` buffers also grow ahead of their contents by about 1/8.
SERIES_OVERHEAD = 3_300


@dataclass
class SeriesView:
    """Columns of a (possibly downsampled) series, one entry per bucket."""

    step: list[int] = field(default_factory=list)  # step of the bucket's last reading
    wall_time: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)  # last reading of the bucket
    min: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)
    nonfinite: list[int] = field(default_factory=list)  # NaN/Inf readings in it


#: (ids, step, wall, value, min, max, nonfinite) columns of buckets, as numpy arrays.
Cols = tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray
]


class _Columns:
    """Bucket columns as ``array.array``: 8 bytes an entry, cheap appends.

    Unlike numpy arrays they grow in place (amortised), so a fold appends its new
    buckets without copying the older ones.
    """

    __slots__ = ("bad", "hi", "ids", "lo", "step", "value", "wall")

    def __init__(self, cols: Cols | None = None) -> None:
        empty = np.zeros(0)
        ids, step, wall, value, lo, hi, bad = cols or (empty,) * 7
        self.ids: array[int] = _ints(ids)
        self.step: array[int] = _ints(step)
        self.wall: array[float] = _floats(wall)
        self.value: array[float] = _floats(value)
        self.lo: array[float] = _floats(lo)
        self.hi: array[float] = _floats(hi)
        self.bad: array[int] = _ints(bad)

    def __len__(self) -> int:
        return len(self.ids)

    def numpy(self) -> Cols:
        """Copies as numpy arrays (copies, so the arrays stay resizable)."""
        return (
            np.array(self.ids, np.int64),
            np.array(self.step, np.int64),
            np.array(self.wall, np.float64),
            np.array(self.value, np.float64),
            np.array(self.lo, np.float64),
            np.array(self.hi, np.float64),
            np.array(self.bad, np.int64),
        )


def _ints(col: np.ndarray) -> array[int]:
    out = array("q")
    out.frombytes(np.ascontiguousarray(col, dtype=np.int64).tobytes())
    return out


def _floats(col: np.ndarray) -> array[float]:
    out = array("d")
    out.frombytes(np.ascontiguousarray(col, dtype=np.float64).tobytes())
    return out


def coarsen(cols: Cols, limit: int) -> tuple[Cols, int]:
    """Halve the resolution (``ids >> 1``) until at most ``limit`` buckets remain.

    ``cols`` are (ids, step, wall, value, min, max, nonfinite). Returns the merged
    columns and how many times the width doubled. Buckets must be in non-decreasing
    id order (they are: ids only grow as readings arrive).
    """
    ids, step, wall, value, lo, hi, bad = cols
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
        bad = np.add.reduceat(bad, starts)
        ids, step, wall, value = ids[ends], step[ends], wall[ends], value[ends]
    return (ids, step, wall, value, lo, hi, bad), shifts


class Series:
    """Bounded per-step series of floats (NaN/Inf kept as they are)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 4:
            raise ValueError(f"Series capacity must be >= 4, got {capacity}")
        self.capacity = capacity
        self.count = 0  # readings ever appended
        self.shift = 0  # bucket width is 2**shift steps
        self._c = _Columns()
        # Readings not folded into the buckets yet: array.array columns, so a fold
        # reads them as numpy arrays without converting Python objects.
        self._steps: array[int] = array("q")
        self._walls: array[float] = array("d")
        self._values: array[float] = array("d")

    def __len__(self) -> int:
        self._fold()
        return len(self._c)

    @property
    def nbytes(self) -> int:
        """Estimated memory of the series: overhead, buckets and queued readings.

        Does not fold (the store sums it over every series once a second).
        """
        held = len(self._c) * BUCKET_BYTES + len(self._steps) * 24
        return SERIES_OVERHEAD + held * 9 // 8

    @property
    def width(self) -> int:
        """Steps per bucket (a power of two)."""
        self._fold()
        return 1 << self.shift

    def append(self, step: int, wall_time: float, value: float) -> None:
        """Add one reading (steps are expected to increase; see the module doc)."""
        self.count += 1
        steps = self._steps
        steps.append(step)
        self._walls.append(wall_time)
        self._values.append(value)
        if len(steps) >= FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        """Merge the queued readings into the buckets (vectorised)."""
        n = len(self._steps)
        if not n:
            return
        steps: np.ndarray = np.frombuffer(self._steps, np.int64)
        walls: np.ndarray = np.frombuffer(self._walls, np.float64)
        values: np.ndarray = np.frombuffer(self._values, np.float64)
        self._steps, self._walls, self._values = array("q"), array("d"), array("d")
        c = self._c
        ids: np.ndarray = steps >> self.shift
        if len(c):
            # A step below the newest bucket joins that bucket (running maximum).
            ids[0] = max(int(ids[0]), c.ids[-1])
        np.maximum.accumulate(ids, out=ids)
        new = ids[1:] != ids[:-1]
        lo: np.ndarray
        hi: np.ndarray
        bad: np.ndarray = (~np.isfinite(values)).astype(np.int64)
        if new.all():  # every reading starts a bucket (the usual case at width 1)
            lo = hi = values
        else:
            starts = np.flatnonzero(new) + 1
            ends = np.append(starts - 1, n - 1)
            starts = np.insert(starts, 0, 0)
            lo = np.fmin.reduceat(values, starts)
            hi = np.fmax.reduceat(values, starts)
            bad = np.add.reduceat(bad, starts)
            ids, steps, walls, values = (a[ends] for a in (ids, steps, walls, values))
        if len(c) and ids[0] == c.ids[-1]:
            # The first group continues the newest bucket.
            c.step[-1] = int(steps[0])
            c.wall[-1] = float(walls[0])
            c.value[-1] = float(values[0])
            c.lo[-1] = float(np.fmin(c.lo[-1], lo[0]))
            c.hi[-1] = float(np.fmax(c.hi[-1], hi[0]))
            c.bad[-1] += int(bad[0])
            ids, steps, walls, values, lo, hi, bad = (
                a[1:] for a in (ids, steps, walls, values, lo, hi, bad)
            )
        c.ids.frombytes(ids.tobytes())
        c.step.frombytes(steps.tobytes())
        c.wall.frombytes(walls.tobytes())
        c.value.frombytes(values.tobytes())
        c.lo.frombytes(lo.tobytes())
        c.hi.frombytes(hi.tobytes())
        c.bad.frombytes(bad.tobytes())
        if len(c) > self.capacity:
            cols, shifts = coarsen(c.numpy(), self.capacity)
            self.shift += shifts
            self._c = _Columns(cols)

    def view(
        self, max_points: int | None = None, after_step: int | None = None
    ) -> SeriesView:
        """The buckets (after ``after_step``), coarsened to at most ``max_points``.

        ``after_step`` keeps the trailing buckets whose last step is greater than it
        (what a live plot has not drawn yet). Coarsening uses the same aligned
        power-of-two edges as storage, so repeated views are stable.
        """
        self._fold()
        cols = self._c.numpy()
        if after_step is not None:
            older = np.flatnonzero(cols[1] <= after_step)
            start = int(older[-1]) + 1 if len(older) else 0
            cols = tuple(a[start:] for a in cols)  # type: ignore[assignment]
        if max_points is not None:
            cols, _ = coarsen(cols, max_points)
        _ids, step, wall, value, lo, hi, bad = cols
        return SeriesView(
            step.tolist(),
            wall.tolist(),
            value.tolist(),
            lo.tolist(),
            hi.tolist(),
            bad.tolist(),
        )
