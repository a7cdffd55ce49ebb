"""Bounded windows of a run's readings: what the rules read.

Each (instrument, key) keeps its newest ``WINDOW`` readings, its first ``HEAD``
readings (a run's starting level) and running extremes; each histogram-like
instrument keeps its newest snapshot, converted to floats only when a rule asks.
Values come as the wire carries them: numbers, None, ``{key: number | array}``
and arrays (anything with ``tolist()``, or the protocol's ``Array`` with
``dtype``/``shape``/``data``), so the agent and the server feed the same values.
"""

from __future__ import annotations

import math
import statistics
from array import array
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TOTAL = "total"
#: Readings kept per series (the rules' windows are shorter).
WINDOW = 64
#: First readings kept per series (the run's starting level).
HEAD = 10
_CODES = {"<f4": "f", "<f8": "d", "<i4": "i", "<i8": "q", "|u1": "B"}


class Window:
    """The newest readings of one series plus its start and extremes."""

    __slots__ = ("count", "head", "hi", "lo", "nonfinite", "steps", "values")

    def __init__(self) -> None:
        self.steps: deque[int] = deque(maxlen=WINDOW)
        self.values: deque[float] = deque(maxlen=WINDOW)
        self.head: list[float] = []
        self.count = 0
        self.nonfinite = 0
        self.lo = math.inf
        self.hi = -math.inf

    def add(self, step: int, value: float) -> None:
        """Append one reading."""
        self.steps.append(step)
        self.values.append(value)
        self.count += 1
        if len(self.head) < HEAD:
            self.head.append(value)
        if math.isfinite(value):
            self.lo = min(self.lo, value)
            self.hi = max(self.hi, value)
        else:
            self.nonfinite += 1

    def __len__(self) -> int:
        return len(self.values)

    @property
    def last(self) -> float:
        """The newest reading (NaN when there is none)."""
        return self.values[-1] if self.values else math.nan

    @property
    def last_step(self) -> int:
        """Step of the newest reading (-1 when there is none)."""
        return self.steps[-1] if self.steps else -1

    def tail(self, n: int) -> list[float]:
        """The newest ``n`` readings, oldest first."""
        if n >= len(self.values):
            return list(self.values)
        return list(self.values)[-n:]

    def tail_steps(self, n: int) -> list[int]:
        """Steps of ``tail(n)``."""
        if n >= len(self.steps):
            return list(self.steps)
        return list(self.steps)[-n:]


_EMPTY = Window()


@dataclass
class Snapshot:
    """The newest reading of a histogram-like instrument: named arrays at a step."""

    step: int
    raw: dict[str, Any]
    _floats: dict[str, list[float]] = field(default_factory=dict)

    def get(self, name: str) -> list[float] | None:
        """The array ``name`` as a flat list of floats (converted once), or None."""
        if name not in self._floats:
            value = self.raw.get(name)
            if value is None:
                return None
            self._floats[name] = floats(value)
        return self._floats[name]

    def scalar(self, name: str) -> float:
        """A number stored with the arrays (e.g. the NaN count), NaN if absent."""
        value = self.raw.get(name)
        if isinstance(value, int | float):
            return float(value)
        got = self.get(name)
        return got[0] if got else math.nan


def floats(value: Any) -> list[float]:
    """A numeric array-like (list, numpy/torch array, protocol ``Array``) as floats."""
    if isinstance(value, list | tuple):
        return [float(v) for v in value]
    if hasattr(value, "dtype") and hasattr(value, "data") and hasattr(value, "shape"):
        code = _CODES.get(str(value.dtype))
        if code is not None and isinstance(value.data, bytes | bytearray):
            out = array(code)
            out.frombytes(value.data)
            return [float(v) for v in out]
    if hasattr(value, "tolist"):
        got = value.tolist()
        if isinstance(got, list):
            return [float(v) for v in _flatten(got)]
        return [float(got)]
    return [float(value)]


def _flatten(xs: Iterable[Any]) -> Iterable[Any]:
    for x in xs:
        if isinstance(x, list):
            yield from _flatten(x)
        else:
            yield x


def _is_number(v: Any) -> bool:
    return isinstance(v, float | int) and not isinstance(v, bool)


class History:
    """Everything the rules may read about one run, bounded in memory."""

    def __init__(self, layered: Iterable[str] | None = None) -> None:
        #: Instruments whose per-layer keys are kept (None: all of them).
        self.layered = None if layered is None else frozenset(layered)
        self._series: dict[str, dict[str, Window]] = {}
        self._snapshots: dict[str, Snapshot] = {}
        #: Instruments the run declared (hello) or sent.
        self.tracked: set[str] = set()
        #: Instruments updated by the frame being evaluated.
        self.updated: set[str] = set()
        self.meta: dict[str, Any] = {}
        self.step = -1

    # -- feeding ------------------------------------------------------------------
    def declare(self, instruments: Iterable[str], meta: Mapping[str, Any]) -> None:
        """Record the run's declared instruments and metadata (its hello)."""
        self.tracked.update(name.split(":")[0] for name in instruments)
        self.meta = dict(meta)

    def feed(self, step: int, values: Mapping[str, Any]) -> set[str]:
        """Add one frame's readings; returns the instruments it updated."""
        updated: set[str] = set()
        self.step = max(self.step, step)
        for full, value in values.items():
            if value is None:
                continue
            name = full.split(":")[0]  # labelled instances read as their class
            if _is_number(value):
                self._window(name, TOTAL).add(step, float(value))
            elif isinstance(value, Mapping):
                arrays: dict[str, Any] = {}
                every_key = self.layered is None or name in self.layered
                for key, v in value.items():
                    if type(v) is float or (v is not None and _is_number(v)):
                        if every_key or key == TOTAL:
                            self._window(name, key).add(step, float(v))
                    elif v is not None:
                        arrays[key] = v
                if arrays:
                    self._snapshots[name] = Snapshot(step, arrays)
            else:
                self._snapshots[name] = Snapshot(step, {"counts": value})
            updated.add(name)
        self.tracked |= updated
        self.updated = updated
        return updated

    def _window(self, name: str, key: str) -> Window:
        keyed = self._series.get(name)
        if keyed is None:
            keyed = self._series[name] = {}
        w = keyed.get(key)
        if w is None:
            w = keyed[key] = Window()
        return w

    # -- reading ------------------------------------------------------------------
    def series(self, name: str, key: str = TOTAL) -> Window:
        """The window of one series (empty when never seen)."""
        return self._series.get(name, {}).get(key, _EMPTY)

    def keys(self, name: str) -> list[str]:
        """Per-layer keys of an instrument in arrival order, without "total"."""
        return [k for k in self._series.get(name, {}) if k != TOTAL]

    def snapshot(self, name: str) -> Snapshot | None:
        """The newest histogram-like reading of an instrument, or None."""
        return self._snapshots.get(name)

    @property
    def optimizer(self) -> str:
        """The optimizer's class name from the run's metadata ("" if unknown)."""
        return str(self.meta.get("optimizer", ""))

    def optimizer_default(self, name: str, default: float = 0.0) -> float:
        """A numeric optimizer hyperparameter from the metadata (e.g. momentum)."""
        got = self.meta.get("optimizer_defaults", {})
        value = got.get(name, default) if isinstance(got, Mapping) else default
        return float(value) if _is_number(value) else default


def median(xs: list[float]) -> float:
    """Median of the finite values (NaN when there are none)."""
    finite = [x for x in xs if math.isfinite(x)]
    return statistics.median(finite) if finite else math.nan


def share(xs: list[float], pred: Any) -> float:
    """Fraction of ``xs`` for which ``pred`` holds (0 for an empty list)."""
    return sum(1 for x in xs if pred(x)) / len(xs) if xs else 0.0


def loss_trend(h: History, n: int) -> tuple[float, float]:
    """(median of the newest ``n`` losses, median of the ``n`` before them).

    Early in a run, with fewer than ``2n`` readings, the reference is the lower
    of the older half's median and the run's starting level (its first
    readings), so that a loss that never went down counts as not improving.
    """
    s = h.series("loss")
    vals = s.tail(2 * n)
    if len(vals) < 2:
        return math.nan, math.nan
    half = max(len(vals) // 2, len(vals) - n)
    recent = median(vals[half:])
    before = median(vals[:half])
    if len(vals) < 2 * n:
        before = min(before, median(s.head))
    return recent, before


def improving(h: History, n: int, gain: float) -> bool:
    """Whether the loss fell by more than ``gain`` (a fraction) over ``loss_trend``."""
    recent, before = loss_trend(h, n)
    return math.isfinite(recent) and recent < (1.0 - gain) * before


def first_order_progress(h: History, n: int) -> float | None:
    """Median over the newest ``n`` steps of ‖g‖·‖d‖ / L (None if unknown).

    ‖g‖·‖d‖ bounds how much the update ``d`` can change the loss to first order,
    so the ratio bounds the relative loss change per step. Steps with a zero
    gradient or a non-positive loss are left out (and then too few may remain).
    """
    upd, grad, loss = h.series("update_size"), h.series("grad_norm"), h.series("loss")
    if len(upd) < n:
        return None
    g = dict(zip(grad.tail_steps(2 * n), grad.tail(2 * n), strict=True))
    loss_at = dict(zip(loss.tail_steps(2 * n), loss.tail(2 * n), strict=True))
    ratios = [
        g[s] * d / loss_at[s]
        for s, d in zip(upd.tail_steps(n), upd.tail(n), strict=True)
        if g.get(s, 0.0) > 0 and loss_at.get(s, 0.0) > 0
    ]
    return median(ratios) if len(ratios) == n else None
