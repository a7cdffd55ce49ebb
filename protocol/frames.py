"""Frame types of the agent → server wire format (pure data, no I/O).

A run sends one ``Hello`` (run metadata and instrument descriptions), then one
``Readings`` per tracked step, then a ``Bye``. Every frame carries the run id and
a per-run sequence number that increases by one per frame, so the server can
acknowledge cumulatively and insert idempotently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

PROTOCOL_VERSION = 1

#: Array element types allowed on the wire (always little-endian).
DTYPES: dict[str, int] = {
    "<f4": 4,
    "<f8": 8,
    "<i4": 4,
    "<i8": 8,
    "|u1": 1,
}


class Kind(StrEnum):
    """How an instrument's readings are shaped, and so how they are drawn."""

    SCALAR = "scalar"  # one float per step
    PER_LAYER = "per_layer"  # {"total": float, parameter name: float, ...}
    HISTOGRAM = "histogram"  # Array [bins] counts + "edges" Array [bins + 1]
    HEATMAP = "heatmap"  # Array [ny, nx] counts + x/y edges


#: Values of ``PanelSpec.distribution``.
DISTRIBUTIONS = frozenset({"", "histogram", "alpha"})


@dataclass(frozen=True, slots=True)
class PanelSpec:
    """How the dashboard should show an instrument; plain data, no plotting code.

    Every field after ``help`` was added later with a default, and the codec
    fills the default when a frame lacks it, so old agents keep working.

    Attributes:
        title: Panel title.
        y_label: Value-axis label (for heatmaps: the y axis).
        log_y: Start the panel with a logarithmic value axis.
        group: Section of the grid: "step size", "gradients", "curvature",
            "performance" (Cockpit's columns), or any other name.
        help: One line on how to read the panel, shown as its tooltip.
        ref_lines: Values drawn as dashed horizontal reference lines, e.g.
            ``(0.0,)`` for a criterion that says "stop above 0".
        band: ``(low, high)`` range shaded as the healthy/tolerance band, e.g.
            ``(0.0, 1.0)`` for the gradient tests (signal dominates noise below 1).
        smooth: Readings are noisy per-step estimates: draw them as faint dots
            under a debiased-EMA line, even while the smoothing slider is at 0.
        distribution: Next to the time series, also draw the distribution of the
            readings: "" (no), "histogram" (all readings and the last 10 %), or
            "alpha" (as "histogram", over Cockpit's normalised parabola with
            reference lines at -1, 0 and 1).
        card: Instruments of one run with the same non-empty ``card`` share one
            panel titled ``card`` (e.g. "Gradient tests" for the three tests).
        x_label: Value-axis label of histogram panels, x-axis label of heatmaps.
    """

    title: str
    y_label: str = ""
    log_y: bool = False
    group: str = "other"
    help: str = ""
    ref_lines: tuple[float, ...] = ()
    band: tuple[float, float] | None = None
    smooth: bool = False
    distribution: str = ""
    card: str = ""
    x_label: str = ""

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"PanelSpec.distribution must be one of {sorted(DISTRIBUTIONS)}, "
                f"got {self.distribution!r}"
            )
        if self.band is not None and (
            len(self.band) != 2 or not self.band[0] <= self.band[1]
        ):
            raise ValueError(
                f"PanelSpec.band must be (low, high) with low <= high, got {self.band}"
            )


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """Description of one instrument, sent in the hello frame."""

    name: str
    kind: Kind
    panel: PanelSpec
    schedule: str = ""


@dataclass(frozen=True, slots=True)
class Array:
    """An n-dimensional array as raw little-endian bytes with dtype and shape."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(
                f"Unsupported dtype {self.dtype!r}; expected {sorted(DTYPES)}"
            )
        if any(not isinstance(n, int) or n < 0 for n in self.shape):
            raise ValueError(f"Shape must be non-negative ints, got {self.shape!r}")
        expected = math.prod(self.shape) * DTYPES[self.dtype]
        if len(self.data) != expected:
            raise ValueError(
                f"Array of dtype {self.dtype} and shape {self.shape} needs "
                f"{expected} bytes, got {len(self.data)}"
            )


#: One instrument's reading at one step: a number (NaN/Inf allowed), a mapping of
#: names to numbers or arrays, an array, or None when undefined at this step.
Value: TypeAlias = "float | None | Array | dict[str, float | None | Array]"


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of a connection: who the run is and what it will send."""

    run: str
    seq: int
    instruments: tuple[InstrumentSpec, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Readings:
    """All readings of one tracked step."""

    run: str
    seq: int
    step: int
    wall_time: float
    values: dict[str, Value]
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Bye:
    """Last frame of a run; ``status`` is "finished" or "failed"."""

    run: str
    seq: int
    status: str = "finished"


Frame: TypeAlias = Hello | Readings | Bye


@dataclass(frozen=True, slots=True)
class Ack:
    """Server → agent: every frame of ``run`` up to and including ``seq`` is stored.

    The ack of a hello carries the highest ``seq`` the server holds for the run
    (0 if none), so a reconnecting agent knows what to resend; servers that ack a
    hello with 0 are still correct, the agent then resends what it still holds.
    Its ``run`` is the id the server stores the run under: the hello's own, or
    that id with a suffix (``digits-sgd-2``) when it belongs to another run
    instance. The agent keeps sending frames with the id it asked for.
    """

    run: str
    seq: int
