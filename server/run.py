"""What the server keeps about one run: its metadata, series and histograms."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from glasscockpit.diagnosis import Diagnoser
from glasscockpit.protocol import InstrumentSpec
from glasscockpit.server.history import History
from glasscockpit.server.series import Series

TOTAL = "total"  # series key of scalar instruments and of per-layer totals
#: Memory of one histogram snapshot beyond its arrays (the Histogram, its dict),
#: and of each array beyond its elements (the numpy view and the bytes object).
SNAPSHOT_OVERHEAD = 400
ARRAY_OVERHEAD = 200


@dataclass
class Histogram:
    """One histogram-like reading at one step: named arrays (counts, edges, ...)."""

    step: int
    wall_time: float
    arrays: dict[str, np.ndarray]


@dataclass
class Run:
    """Everything stored about one run."""

    run_id: str
    #: The id the agent asked for (``run_id`` carries a suffix when it was taken).
    origin: str = ""
    #: Which process the run's frames come from (``instance_of`` its metadata).
    instance: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    instruments: dict[str, InstrumentSpec] = field(default_factory=dict)
    series: dict[tuple[str, str], Series] = field(default_factory=dict)
    histograms: dict[str, History[Histogram]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    last_seq: int = -1
    last_step: int | None = None
    frames: int = 0
    nonfinite: int = 0
    status: str = "live"  # live | finished | failed (stale is derived on read)
    connected: int = 0
    created: float = field(default_factory=time.time)
    last_frame_time: float = field(default_factory=time.time)
    #: Instrument names seen in hello or readings frames (bounded by max_instruments).
    names: set[str] = field(default_factory=set)
    #: Series keys per instrument (bounded by max_keys).
    key_count: Counter[str] = field(default_factory=Counter)
    #: ``series`` by instrument, then key: ingest looks a reading's series up here
    #: (no tuple key per reading) and checks "any new key?" on the inner keys.
    by_name: dict[str, dict[str, Series]] = field(default_factory=dict)
    #: The diagnosis rules, evaluated over the readings as frames are stored.
    diagnoser: Diagnoser = field(default_factory=Diagnoser)

    def keys(self, name: str) -> list[str]:
        """Series keys of one instrument: "total" first, then layers as they came."""
        keys = [k for (n, k) in self.series if n == name]
        return sorted(keys, key=lambda k: k != TOTAL)

    @property
    def nbytes(self) -> int:
        """Estimated memory held by the run's series and histograms.

        Counts Python's per-object overhead too (``SERIES_OVERHEAD``,
        ``SNAPSHOT_OVERHEAD``, ``ARRAY_OVERHEAD``), measured against RSS
        (docs/operations.md); the arrays' own bytes were all it counted before.
        """
        total = sum(s.nbytes for s in self.series.values())
        for hist in self.histograms.values():
            for h in hist:
                total += SNAPSHOT_OVERHEAD + sum(
                    ARRAY_OVERHEAD + a.nbytes for a in h.arrays.values()
                )
        return total


def instance_of(meta: dict[str, Any]) -> str:
    """Which run instance (training process) a hello's metadata describes.

    Agents send ``instance`` (random per run object); older ones send ``host``,
    ``pid`` and ``started``, which tell processes apart just as well. Hellos
    without either (hand-made clients) share the instance "", as before.
    """
    given = meta.get("instance")
    if isinstance(given, str) and given:
        return given[:200]
    parts = [meta.get(k) for k in ("host", "pid", "started")]
    if all(p is None for p in parts):
        return ""
    return "/".join(str(p) for p in parts)
