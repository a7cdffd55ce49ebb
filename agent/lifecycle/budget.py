"""Overhead budget: default schedules track as often as a share of step time allows.

Fixed cadences cannot suit every model: a moderate instrument every 10 steps adds
1 % to a large network's step and 100 % to a 1 ms MLP step. So the Cockpit
measures, on the training thread, what the agent costs per step interval and
sets the stride of every instrument on its default (``auto``) schedule such that
the measured overhead stays near ``fraction`` of the plain step time.

Per interval (entry of ``cockpit.step`` to the next entry) the agent's own time
(its phases, the optimizer hook, arming) is timed directly; what an untracked
step costs (schedule checks, the context manager) comes off the budget first.
When the engine recorded a step, the extra time of the user's forward and
backward is the interval minus agent time minus the plain interval (median of
recent intervals the engine did not record). Each tracked instrument is
charged its own timed compute, a share of the step's fixed work in proportion
to it, and the engine users share the engine's part. Strides come from
water-filling: cheap instruments that fit their equal share run every step, the
rest split what is left equally; strides are rounded up to 1, 2, 5, 10, 20, ...
so that similar instruments share tracked steps.

The budget governs from step 0 (``auto.governed``): cheap instruments run
from the start; every other instrument first runs on one probe step of its own,
after the plain step is known (from step 2 on), with an ``allowance`` of
``(cap − 1)`` plain steps for its work, so that no step but the first two runs
an instrument of unknown cost next to another one. Once measured, instruments
are placed at offsets of their stride such that the instruments that meet on a
step add at most ``(cap − 1)`` plain steps where they can; each gets what is
left of that as its allowance (instruments with a work knob, such as the
curvature estimators, size their readings to it and state their error).

Times are host times: on a GPU they include what the agent waits for, not
kernels still queued; a training loop that syncs each step (``loss.item()``)
makes the interval, and so the budget, exact.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from glasscockpit.agent.lifecycle.schedules import auto, every

#: A tracked step of default schedules may take this many plain steps.
DEFAULT_CAP = 3.0
#: Probe steps are searched this far ahead for one without costly instruments.
_PROBE_SEARCH = 64
#: Offsets tried per instrument when spreading costly ones over steps.
_OFFSETS = 64
#: A cost is the median of this many recent observations.
_RECENT = 3
#: Own time below this (seconds) counts as this, so fixed work is spread.
_FLOOR = 5e-6
#: Plain intervals remembered for the median.
_WINDOW = 32
_MAX_STRIDE = 10**6


def nice_stride(x: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that is at least ``x``."""
    if not x > 1:
        return 1
    if not math.isfinite(x) or x >= _MAX_STRIDE:
        return _MAX_STRIDE
    scale = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * scale >= x * (1 - 1e-12):
            return int(m * scale)
    return int(10 * scale)  # pragma: no cover - the loop always returns


def allocate(costs: Mapping[str, float], budget: float) -> dict[str, float]:
    """Strides ≥ 1 with ``Σ cost / stride ≤ budget`` (water-filling).

    Instruments are visited cheapest first; each may spend an equal share of what
    is left: one that fits runs every step, the others are thinned to the share.
    """
    out: dict[str, float] = {}
    left = max(budget, 0.0)
    items = sorted(costs.items(), key=lambda kv: kv[1])
    for i, (key, cost) in enumerate(items):
        share = left / (len(items) - i)
        if cost <= share:
            out[key] = 1.0
        else:
            out[key] = cost / share if share > 0 else math.inf
        left -= cost / out[key]
    return out


@dataclass
class _Interval:
    """What happened since the last entry of ``cockpit.step``."""

    start: float
    agent: float = 0.0  # seconds in the agent's code on the training thread
    recorded: bool = False  # the engine recorded this step's forward/backward
    tracked: set[str] = field(default_factory=set)
    engine_users: set[str] = field(default_factory=set)
    own: dict[str, float] = field(default_factory=dict)  # timed compute per key
    shared: float = 0.0  # engine work every engine user of the step draws on


class OverheadBudget:
    """Measures the agent's cost per interval and sets ``auto`` strides.

    Args:
        fraction: target overhead as a fraction of the plain step (0.05 = 5 %).
        schedules: the ``auto`` schedules to steer, by instrument key.
    """

    def __init__(
        self,
        fraction: float,
        schedules: Mapping[str, auto],
        cap: float = DEFAULT_CAP,
    ) -> None:
        if not fraction > 0:
            raise ValueError(f"The overhead budget must be > 0, got {fraction!r}")
        if not cap > 1:
            raise ValueError(f"The per-step cap must be > 1 plain step, got {cap!r}")
        self.fraction = fraction
        self.cap = cap
        self.schedules = dict(schedules)
        for sched in self.schedules.values():
            sched.governed = True
        self.costs: dict[str, float] = {}
        self._seen: dict[str, deque[float]] = {}
        self._idle: deque[float] = deque(maxlen=_WINDOW)
        self._first = True
        self._plain: deque[float] = deque(maxlen=_WINDOW)
        self._now: _Interval | None = None
        self._dirty = False
        #: Probe steps given so far, per instrument (a lost probe is repeated).
        self._probes: dict[str, int] = {}

    @property
    def plain_step(self) -> float | None:
        """Median seconds of recent intervals without engine recording."""
        return statistics.median(self._plain) if self._plain else None

    def begin(self, now: float) -> None:
        """Close the running interval at ``now`` (entry of a step), open the next."""
        if self._now is not None:
            self._observe(self._now, now - self._now.start)
        self._now = _Interval(start=now)

    def charge(self, seconds: float) -> None:
        """Add agent time (training thread) to the running interval."""
        if self._now is not None:
            self._now.agent += seconds

    def share(self, seconds: float) -> None:
        """Note that ``seconds`` of the charged time were engine work for all users.

        Work done lazily inside one instrument's compute is subtracted from its
        own time (see ``shared_so_far``).
        """
        if self._now is not None:
            self._now.shared += seconds

    def shared_so_far(self) -> float:
        """Shared seconds noted in the running interval."""
        return 0.0 if self._now is None else self._now.shared

    def attribute(self, key: str, seconds: float) -> None:
        """Note that ``seconds`` of the charged time were ``key``'s own compute."""
        now = self._now
        if now is not None:
            now.own[key] = now.own.get(key, 0.0) + seconds

    def track(
        self, keys: Iterable[str], engine_users: Iterable[str], recorded: bool
    ) -> None:
        """Name the instruments tracked in the running interval."""
        now = self._now
        if now is None:
            return
        now.tracked.update(keys)
        now.engine_users.update(engine_users)
        now.recorded = now.recorded or recorded

    def _observe(self, it: _Interval, total: float) -> None:
        base = max(total - it.agent, 0.0)
        if not it.recorded:
            self._plain.append(base)
        if not it.tracked:
            # What every step pays (schedule checks, the context manager) comes
            # off the budget before any instrument gets a share.
            self._idle.append(it.agent)
            return
        plain = self.plain_step
        extra = max(base - plain, 0.0) if it.recorded and plain is not None else 0.0
        if self._first:  # one-time work (allocations, checks) is not a cost
            self._first = False
            return
        own = {k: max(it.own.get(k, 0.0), _FLOOR) for k in it.tracked}
        # The step's fixed work (frames, copies) in proportion to own compute,
        # the engine's (recording, per-sample passes) equally to its users.
        rest = max(it.agent - sum(own.values()) - it.shared, 0.0) / sum(own.values())
        engine = it.engine_users & it.tracked or it.tracked
        for key in it.tracked:
            cost = own[key] * (1 + rest)
            if key in engine:
                cost += (extra + it.shared) / len(engine)
            self._seen.setdefault(key, deque(maxlen=_RECENT)).append(cost)
            self.costs[key] = statistics.median(self._seen[key])
        self._dirty = True

    def update(self, next_step: int | None = None) -> None:
        """Recompute strides, offsets, allowances; pick the next probe step.

        Call only where no schedule is being consulted, with the number of the
        step that comes next (probes are placed from there on).
        """
        plain = self.plain_step
        if plain is None:
            return
        if self._dirty:
            self._dirty = False
            self._place(plain)
        if next_step is not None:
            self._probe(next_step, plain)

    def _place(self, plain: float) -> None:
        """Strides by water-filling, then offsets and allowances per step load."""
        costs = {k: self.costs[k] for k in self.schedules if k in self.costs}
        idle = statistics.median(self._idle) if self._idle else 0.0
        # Idle costs above the budget (tiny steps) still leave instruments a
        # quarter of it: monitoring that never reads is no monitoring.
        spend = max(self.fraction * plain - idle, 0.25 * self.fraction * plain)
        for key, share in allocate(costs, spend).items():
            self.schedules[key].stride = nice_stride(share)
        room = (self.cap - 1.0) * plain
        placed: list[tuple[str, int, int]] = []  # (key, stride, offset)

        def load(stride: int, offset: int, skip: str = "") -> float:
            # Two progressions meet iff their offsets agree modulo the gcd.
            return sum(
                costs[k]
                for k, s, o in placed
                if k != skip and (o - offset) % math.gcd(s, stride) == 0
            )

        # Cheapest first: they share offset 0 (and the per-sample pass); costly
        # ones then move to the least loaded offsets where the room runs out.
        for key in sorted(costs, key=lambda k: costs[k]):
            sched = self.schedules[key]
            stride = sched.stride or 1
            offset = 0
            if load(stride, 0) + costs[key] > room:
                # Least loaded offset (earliest on ties); offset 0 when it fits,
                # so that instruments share the per-sample pass where they can.
                tries = range(min(stride, _OFFSETS))
                offset = min(tries, key=lambda o: (load(stride, o), o))
            sched.offset = offset
            if sched.probe is not None:  # the probe was this stride's reading
                sched.after = max(sched.after, sched.probe + stride)
            placed.append((key, stride, offset))
        for key, stride, offset in placed:
            others = load(stride, offset, skip=key)
            self.schedules[key].allowance = max(room - others, 0.25 * room)

    def _costly(self, step: int, room: float) -> bool:
        """Whether measured instruments due at ``step`` take up the step's room."""
        due = 0.0
        for key, sched in self.schedules.items():
            if key in self.costs and sched.stride is not None and sched(step):
                due += self.costs[key]
        return due > 0.5 * room

    def _probe(self, next_step: int, plain: float) -> None:
        """Give unmeasured instruments a probe step: the next step, if free.

        The moderate ones (fallback every n > 1 steps: the per-sample tests,
        which share one engine pass) together, then the costly ones one at a
        time, fewest probes first: a probe lost to the first tracked interval
        is repeated, and a disabled instrument does not hold up the others.
        """
        waiting: list[str] = []
        for key, sched in self.schedules.items():
            if key in self.costs or sched.cheap:
                continue
            if sched.probe is not None and sched.probe >= next_step:
                return  # the coming steps' probes are given
            # A probe's interval closes when the next step begins: not yet seen.
            if sched.probe is None or sched.probe < next_step - 1:
                waiting.append(key)
        if not waiting:
            return
        room = (self.cap - 1.0) * plain
        step = next_step
        while self._costly(step, room) and step < next_step + _PROBE_SEARCH:
            step += 1
        moderate = [k for k in waiting if _rank(self.schedules[k]) == 1]
        fewest = min(self._probes.get(k, 0) for k in waiting)
        if moderate and all(self._probes.get(k, 0) == fewest for k in moderate):
            chosen = moderate
        else:
            chosen = [
                min(
                    waiting,
                    key=lambda k: (self._probes.get(k, 0), _rank(self.schedules[k])),
                )
            ]
        for key in chosen:
            sched = self.schedules[key]
            sched.probe, sched.allowance = step, room / len(chosen)
            self._probes[key] = self._probes.get(key, 0) + 1


def _rank(sched: auto) -> int:
    """0: cheap (every step), 1: moderate (every n > 1), 2: costly (other)."""
    if sched.cheap:
        return 0
    return 1 if isinstance(sched.fallback, every) else 2
