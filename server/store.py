"""RunStore: every run's metadata, series and histograms, bounded in memory."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from glasscockpit.protocol import (
    Array,
    Bye,
    Frame,
    Hello,
    InstrumentSpec,
    Readings,
    Value,
)
from glasscockpit.server.series import Series

TOTAL = "total"  # series key of scalar instruments and of per-layer totals


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
    meta: dict[str, Any] = field(default_factory=dict)
    instruments: dict[str, InstrumentSpec] = field(default_factory=dict)
    series: dict[tuple[str, str], Series] = field(default_factory=dict)
    histograms: dict[str, deque[Histogram]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    last_seq: int = -1
    last_step: int | None = None
    frames: int = 0
    nonfinite: int = 0
    status: str = "live"  # live | finished | failed (stale is derived on read)
    connected: int = 0
    created: float = field(default_factory=time.time)
    last_frame_time: float = field(default_factory=time.time)

    def keys(self, name: str) -> list[str]:
        """Series keys of one instrument: "total" first, then layers as they came."""
        keys = [k for (n, k) in self.series if n == name]
        return sorted(keys, key=lambda k: k != TOTAL)


def as_numpy(a: Array) -> np.ndarray:
    """Zero-copy view of a wire array."""
    return np.frombuffer(a.data, dtype=a.dtype).reshape(a.shape)


class RunStore:
    """Thread-safe store of runs; ingest is idempotent per (run, seq)."""

    def __init__(
        self, max_points: int = 4096, max_histograms: int = 256, max_runs: int = 100
    ):
        self.max_points = max_points
        self.max_histograms = max_histograms
        self.max_runs = max_runs
        self.runs: dict[str, Run] = {}
        self.evicted: list[str] = []
        self.lock = threading.RLock()

    def ingest(self, frame: Frame) -> bool:
        """Store one frame; False when it is a duplicate (already stored)."""
        with self.lock:
            run = self.runs.get(frame.run)
            if run is None:
                run = self._new_run(frame.run)
            run.last_frame_time = time.time()
            if isinstance(frame, Hello):
                run.meta = dict(frame.meta)
                run.instruments = {s.name: s for s in frame.instruments}
                if run.status != "live" and frame.seq > run.last_seq:
                    run.status = "live"
                return True
            if frame.seq <= run.last_seq:
                return False
            run.last_seq = frame.seq
            run.frames += 1
            if isinstance(frame, Bye):
                run.status = frame.status
            elif isinstance(frame, Readings):
                self._add_readings(run, frame)
            return True

    def _new_run(self, run_id: str) -> Run:
        if len(self.runs) >= self.max_runs:
            done = [r for r in self.runs.values() if r.status != "live"]
            victim = min(done or self.runs.values(), key=lambda r: r.last_frame_time)
            del self.runs[victim.run_id]
            self.evicted.append(victim.run_id)
        run = Run(run_id)
        self.runs[run_id] = run
        return run

    def _add_readings(self, run: Run, frame: Readings) -> None:
        run.last_step = (
            frame.step if run.last_step is None else max(run.last_step, frame.step)
        )
        run.errors.update(frame.errors)
        for name, value in frame.values.items():
            self._add_value(run, name, frame.step, frame.wall_time, value)

    def _add_value(
        self, run: Run, name: str, step: int, wall: float, value: Value
    ) -> None:
        if value is None:
            return
        if isinstance(value, dict):
            arrays = {k: as_numpy(v) for k, v in value.items() if isinstance(v, Array)}
            if arrays:
                hist = run.histograms.setdefault(
                    name, deque(maxlen=self.max_histograms)
                )
                hist.append(Histogram(step, wall, arrays))
            for key, v in value.items():
                if isinstance(v, float):
                    self._append(run, name, key, step, wall, v)
            return
        if isinstance(value, Array):
            hist = run.histograms.setdefault(name, deque(maxlen=self.max_histograms))
            hist.append(Histogram(step, wall, {"counts": as_numpy(value)}))
            return
        self._append(run, name, TOTAL, step, wall, value)

    def _append(
        self, run: Run, name: str, key: str, step: int, wall: float, v: float
    ) -> None:
        series = run.series.get((name, key))
        if series is None:
            series = run.series[(name, key)] = Series(self.max_points)
        if v != v or v in (float("inf"), float("-inf")):
            run.nonfinite += 1
        series.append(step, wall, v)

    # -- reads ------------------------------------------------------------------
    def get(self, run_id: str) -> Run | None:
        """The run, or None."""
        with self.lock:
            return self.runs.get(run_id)

    def status(self, run: Run, stale_after_s: float) -> str:
        """live, stale (no frame for a while or connection lost), finished or failed."""
        if run.status != "live":
            return run.status
        silent = time.time() - run.last_frame_time > stale_after_s
        return "stale" if silent or not run.connected else "live"

    def delete(self, run_id: str) -> bool:
        """Remove a run; False if unknown."""
        with self.lock:
            return self.runs.pop(run_id, None) is not None
