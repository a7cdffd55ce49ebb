"""When an instrument is tracked: ``Schedule = Callable[[int], bool]`` and factories."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

Schedule = Callable[[int], bool]


@dataclass(frozen=True)
class every:  # noqa: N801 - reads as a function at call sites: every(10)
    """Track steps ``start, start + n, start + 2n, ...``."""

    n: int
    start: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"every(n) needs an integer n >= 1, got {self.n!r}")

    def __call__(self, step: int) -> bool:
        """Whether ``step`` is tracked."""
        return step >= self.start and (step - self.start) % self.n == 0

    def __str__(self) -> str:
        return f"every {self.n}" if self.n > 1 else "every step"


@dataclass(frozen=True)
class log_spaced:  # noqa: N801
    """About ``per_decade`` log-spaced steps per decade; every step below ``dense``."""

    per_decade: int = 10
    dense: int = 10

    def __post_init__(self) -> None:
        if self.per_decade < 1 or self.dense < 0:
            raise ValueError("log_spaced needs per_decade >= 1 and dense >= 0")

    def __call__(self, step: int) -> bool:
        """Whether ``step`` is tracked."""
        if step < 0:
            return False
        if step < max(self.dense, 2):
            return True
        # Tracked when [step - 1, step] crosses a grid point 10^(k / per_decade).
        m = self.per_decade
        return math.floor(math.log10(step) * m + 1e-9) > math.floor(
            math.log10(step - 1) * m + 1e-9
        )

    def __str__(self) -> str:
        return f"log-spaced ({self.per_decade}/decade)"


@dataclass
class auto:  # noqa: N801
    """The default schedule: as often as a budget allows; ``fallback`` without one.

    A ``Cockpit`` with an overhead budget (``agent/lifecycle/budget.py``)
    ``governs`` it from step 0: a cheap instrument (fallback every step) runs
    until its cost is measured; any other runs first on one ``probe`` step the
    budget picks once the plain step is known, alone among the unmeasured, and
    from then on on steps ``offset, offset + stride, ...`` (strides 1, 2, 5, 10,
    20, ..., so instruments of similar cost land on the same steps and share
    the per-sample pass; offsets keep costly ones apart). ``allowance`` is the
    seconds of its own work a reading may take: instruments with a knob (probes,
    sampled passes, iterations) choose their work from it and state the
    estimate's error. Outside a budgeted Cockpit ``fallback`` decides (and
    below ``warmup`` before the first stride, for an ungoverned schedule).
    """

    fallback: Schedule
    warmup: int = 10
    stride: int | None = None
    offset: int = 0
    governed: bool = False
    probe: int | None = None
    allowance: float | None = None
    #: Governed: no regular reading before this step (one stride after the probe).
    after: int = 0

    def __call__(self, step: int) -> bool:
        """Whether ``step`` is tracked."""
        if self.governed:
            if step < 0:
                return False
            if self.stride is None:
                return step == self.probe or self.cheap
            if step < self.after:
                return step == self.probe
            return step % self.stride == self.offset % self.stride
        if self.stride is None or step < self.warmup:
            return bool(self.fallback(step))
        return step >= 0 and step % self.stride == 0

    @property
    def cheap(self) -> bool:
        """Whether the fallback tracks every step (a cheap instrument)."""
        fb = self.fallback
        return fb is always or (isinstance(fb, every) and fb.n == 1 and fb.start == 0)

    def __str__(self) -> str:
        # Sent once in the hello frame: name the rule, not the current stride.
        return f"auto: {describe(self.fallback)}, then within the overhead budget"


def allowance(schedule: Schedule) -> float | None:
    """Seconds of work per reading a budget allows ``schedule``'s instrument."""
    return schedule.allowance if isinstance(schedule, auto) else None


def always(step: int) -> bool:
    """Track every step."""
    return step >= 0


def never(step: int) -> bool:  # noqa: ARG001 - schedule signature
    """Track no step."""
    return False


def describe(schedule: Schedule) -> str:
    """A short human-readable label for a schedule, sent in the hello frame."""
    if schedule is always:
        return "every step"
    if schedule is never:
        return "never"
    if isinstance(schedule, every | log_spaced | auto):
        return str(schedule)
    return getattr(schedule, "__name__", "custom")
