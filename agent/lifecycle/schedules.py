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
    """The default schedule: ``fallback`` at first, then as often as a budget allows.

    A ``Cockpit`` with an overhead budget (``agent/lifecycle/budget.py``) measures
    what each
    instrument costs and sets ``stride``: from then on steps that are multiples
    of it are tracked (strides are 1, 2, 5, 10, 20, ..., so instruments of similar
    cost land on the same steps and share the per-sample pass). Before the first
    measurement, below ``warmup`` and outside a budgeted Cockpit, ``fallback``
    (the instrument's cadence by cost) decides.
    """

    fallback: Schedule
    warmup: int = 10
    stride: int | None = None

    def __call__(self, step: int) -> bool:
        """Whether ``step`` is tracked."""
        if self.stride is None or step < self.warmup:
            return bool(self.fallback(step))
        return step >= 0 and step % self.stride == 0

    def __str__(self) -> str:
        # Sent once in the hello frame: name the rule, not the current stride.
        return f"auto: {describe(self.fallback)}, then within the overhead budget"


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
