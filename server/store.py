"""RunStore: every run's metadata, series and histograms, bounded in memory.

Bounds: each series keeps at most ``max_points`` buckets (``series.Series``), each
histogram instrument at most ``max_histograms`` snapshots (``history.History``), and
the store at most ``max_runs`` runs. A new run beyond ``max_runs`` evicts the finished
(or failed) run with the oldest last frame, then the disconnected run with the oldest
last frame; if every run is live and connected the new run is refused
(``LimitExceeded``), because evicting a run that is still writing would silently
lose its data. Evictions are logged and counted (``runs_evicted`` on /v1/metrics).

With a ``FrameLogs`` the store writes each accepted frame to disk before it returns,
so an acknowledged frame survives a restart, and ``replay`` rebuilds the store from
the logs at start-up.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from glasscockpit.protocol import (
    Ack,
    Array,
    Bye,
    Frame,
    Hello,
    InstrumentSpec,
    ProtocolError,
    Readings,
    Value,
    decode,
)
from glasscockpit.server.errors import LimitExceeded, Rejected
from glasscockpit.server.framelog import FrameLogs
from glasscockpit.server.history import History
from glasscockpit.server.jsonsafe import safe
from glasscockpit.server.series import Series

TOTAL = "total"  # series key of scalar instruments and of per-layer totals
#: Largest step and sequence number accepted (exact in float64 and in JSON).
MAX_INT = 2**53
log = logging.getLogger("glasscockpit.server")


@dataclass(frozen=True)
class Limits:
    """Per-frame and per-run limits; see ``Settings`` for the meaning of each."""

    max_instruments: int = 256
    max_keys: int = 4096
    max_array_elements: int = 1_000_000
    max_meta_bytes: int = 64 * 2**10


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

    def keys(self, name: str) -> list[str]:
        """Series keys of one instrument: "total" first, then layers as they came."""
        keys = [k for (n, k) in self.series if n == name]
        return sorted(keys, key=lambda k: k != TOTAL)

    @property
    def nbytes(self) -> int:
        """Estimated memory held by the run's series and histograms."""
        total = sum(s.nbytes for s in self.series.values())
        for hist in self.histograms.values():
            total += sum(a.nbytes for h in hist for a in h.arrays.values())
        return total


def as_numpy(a: Array) -> np.ndarray:
    """Zero-copy view of a wire array."""
    return np.frombuffer(a.data, dtype=a.dtype).reshape(a.shape)


def _plain(value: Any, depth: int = 0) -> Any:
    if isinstance(value, float):
        return safe(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if depth < 32 and isinstance(value, list):
        return [_plain(v, depth + 1) for v in value]
    if (
        depth < 32
        and isinstance(value, dict)
        and all(isinstance(k, str) for k in value)
    ):
        return {k: _plain(v, depth + 1) for k, v in value.items()}
    raise Rejected(
        "schema",
        "Run metadata must be maps with string keys, lists, strings, numbers, "
        f"booleans or null, at most 32 levels deep; got {type(value).__name__}",
    )


def clean_meta(meta: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Metadata as JSON-safe data (NaN/Inf spelled out, like readings), size-checked.

    Non-finite numbers are kept as "NaN"/"Infinity" rather than refused: a
    hyperparameter such as ``max_norm=inf`` is legitimate and must not cost the run.
    """
    clean: dict[str, Any] = _plain(meta)
    size = len(json.dumps(clean))
    if size > limits.max_meta_bytes:
        raise LimitExceeded(
            f"Run metadata of {size} bytes exceeds the limit of "
            f"{limits.max_meta_bytes} (GLASSCOCKPIT_MAX_META_BYTES)"
        )
    return clean


def _check_array(a: Array, where: str, limits: Limits) -> None:
    size = math.prod(a.shape)
    if len(a.shape) > 3 or size > limits.max_array_elements:
        raise LimitExceeded(
            f"Array {where} of shape {list(a.shape)} exceeds the limits of 3 "
            f"dimensions and {limits.max_array_elements} elements "
            "(GLASSCOCKPIT_MAX_ARRAY_ELEMENTS)"
        )


def check_frame(frame: Frame, limits: Limits) -> None:
    """Checks that need no run state; raise ``Rejected`` with a specific reason."""
    if not 0 <= frame.seq <= MAX_INT:
        raise Rejected("schema", f"Sequence number {frame.seq} is out of [0, 2**53]")
    if isinstance(frame, Hello):
        if len(frame.instruments) > limits.max_instruments:
            raise LimitExceeded(
                f"Hello declares {len(frame.instruments)} instruments; the limit is "
                f"{limits.max_instruments} (GLASSCOCKPIT_MAX_INSTRUMENTS)"
            )
    elif isinstance(frame, Readings):
        if not math.isfinite(frame.wall_time):
            raise Rejected(
                "nonfinite", f"wall_time must be finite, got {frame.wall_time}"
            )
        if not 0 <= frame.step <= MAX_INT:
            raise Rejected("schema", f"Step {frame.step} is out of [0, 2**53]")
        if len(frame.values) > limits.max_instruments or (
            len(frame.errors) > limits.max_instruments
        ):
            raise LimitExceeded(
                f"Readings name more than {limits.max_instruments} instruments "
                "(GLASSCOCKPIT_MAX_INSTRUMENTS)"
            )
        for name, value in frame.values.items():
            if isinstance(value, Array):
                _check_array(value, repr(name), limits)
            elif isinstance(value, dict):
                if len(value) > limits.max_keys:
                    raise LimitExceeded(
                        f"Reading {name!r} has {len(value)} keys; the limit is "
                        f"{limits.max_keys} (GLASSCOCKPIT_MAX_KEYS)"
                    )
                for key, v in value.items():
                    if isinstance(v, Array):
                        _check_array(v, f"{name}.{key}", limits)


class RunStore:
    """Thread-safe store of runs; ingest is idempotent per (run, seq)."""

    def __init__(
        self,
        max_points: int = 4096,
        max_histograms: int = 256,
        max_runs: int = 100,
        limits: Limits | None = None,
        logs: FrameLogs | None = None,
    ):
        if max_runs < 1:
            raise ValueError(f"max_runs must be >= 1, got {max_runs}")
        self.max_points = max_points
        self.max_histograms = max_histograms
        self.max_runs = max_runs
        self.limits = limits or Limits()
        self.logs = logs
        self.runs: dict[str, Run] = {}
        self.evicted: list[str] = []  # the last 100 evicted run ids
        self.evicted_count = 0
        self.lock = threading.RLock()

    def ingest(self, frame: Frame, raw: bytes | None = None) -> bool:
        """Check and store one frame; False when it is a duplicate (already stored).

        Raises ``Rejected`` (nothing stored) when the frame breaks a limit. ``raw``
        (the frame's wire bytes) is appended to the run's log when the store has one.
        """
        check_frame(frame, self.limits)
        with self.lock:
            run = self.runs.get(frame.run)
            fresh_run = run is None
            if isinstance(frame, Hello):
                instruments = {s.name: s for s in frame.instruments}
                meta = clean_meta(frame.meta, self.limits)
                reopen = (
                    run is not None
                    and run.status != "live"
                    and frame.seq > run.last_seq
                )
                if run is not None:
                    self._check_names(run, set(instruments))
                    same = run.meta == meta and run.instruments == instruments
                    if same and not reopen:
                        run.last_frame_time = time.time()
                        return True  # a reconnect's hello: nothing new to log
                run = run or self._new_run(frame.run)
                run.meta = meta
                run.instruments = instruments
                run.names |= set(instruments)
                if reopen:
                    run.status = "live"
                self._log(frame.run, raw, fresh_run)
                run.last_frame_time = time.time()
                return True
            if run is not None and frame.seq <= run.last_seq:
                return False
            if isinstance(frame, Readings):
                self._check_readings(run or Run(frame.run), frame)
            run = run or self._new_run(frame.run)
            self._log(frame.run, raw, fresh_run)
            run.last_frame_time = time.time()
            run.last_seq = frame.seq
            run.frames += 1
            if isinstance(frame, Bye):
                run.status = frame.status
            elif isinstance(frame, Readings):
                self._add_readings(run, frame)
            return True

    def _log(self, run_id: str, raw: bytes | None, fresh_run: bool) -> None:
        if self.logs is None or raw is None:
            return
        if fresh_run:
            self.logs.delete(run_id)  # a stale file of a run evicted earlier
        self.logs.append(run_id, raw)

    def _check_names(self, run: Run, names: set[str]) -> None:
        total = len(run.names | names)
        if total > self.limits.max_instruments:
            raise LimitExceeded(
                f"Run {run.run_id!r} would have {total} instruments; the limit is "
                f"{self.limits.max_instruments} (GLASSCOCKPIT_MAX_INSTRUMENTS)"
            )

    def _check_readings(self, run: Run, frame: Readings) -> None:
        self._check_names(run, set(frame.values) | set(frame.errors))
        for name, value in frame.values.items():
            if isinstance(value, dict):
                new = sum(1 for k in value if (name, k) not in run.series)
                if run.key_count[name] + new > self.limits.max_keys:
                    raise LimitExceeded(
                        f"Instrument {name!r} of run {run.run_id!r} would have "
                        f"{run.key_count[name] + new} keys; the limit is "
                        f"{self.limits.max_keys} (GLASSCOCKPIT_MAX_KEYS)"
                    )

    def _new_run(self, run_id: str) -> Run:
        if len(self.runs) >= self.max_runs:
            self._evict_one(run_id)
        run = Run(run_id)
        self.runs[run_id] = run
        return run

    def _evict_one(self, for_run: str) -> None:
        done = [r for r in self.runs.values() if r.status != "live"]
        idle = [r for r in self.runs.values() if r.status == "live" and not r.connected]
        pool = done or idle
        if not pool:
            # 1013 "try again later": the agent backs off and retries, and gets in
            # as soon as any run finishes or disconnects.
            raise LimitExceeded(
                f"Cannot store run {for_run!r}: all {self.max_runs} stored runs are "
                "live and connected (GLASSCOCKPIT_MAX_RUNS)",
                1013,
            )
        victim = min(pool, key=lambda r: r.last_frame_time)
        del self.runs[victim.run_id]
        if self.logs is not None:
            self.logs.delete(victim.run_id)
        self.evicted = [*self.evicted[-99:], victim.run_id]
        self.evicted_count += 1
        log.warning(
            "glasscockpit: evicted run %r (%s, last frame %.0f s ago) to make room "
            "for %r: GLASSCOCKPIT_MAX_RUNS=%d",
            victim.run_id,
            victim.status,
            time.time() - victim.last_frame_time,
            for_run,
            self.max_runs,
        )

    def _add_readings(self, run: Run, frame: Readings) -> None:
        run.last_step = (
            frame.step if run.last_step is None else max(run.last_step, frame.step)
        )
        run.errors.update(frame.errors)
        run.names |= set(frame.values) | set(frame.errors)
        for name, value in frame.values.items():
            self._add_value(run, name, frame.step, frame.wall_time, value)

    def _history(self, run: Run, name: str) -> History[Histogram]:
        hist = run.histograms.get(name)
        if hist is None:
            hist = run.histograms[name] = History(self.max_histograms)
        return hist

    def _add_value(
        self, run: Run, name: str, step: int, wall: float, value: Value
    ) -> None:
        if value is None:
            return
        if isinstance(value, dict):
            arrays = {k: as_numpy(v) for k, v in value.items() if isinstance(v, Array)}
            if arrays:
                self._history(run, name).append(Histogram(step, wall, arrays))
            for key, v in value.items():
                if isinstance(v, float):
                    self._append(run, name, key, step, wall, v)
            return
        if isinstance(value, Array):
            self._history(run, name).append(
                Histogram(step, wall, {"counts": as_numpy(value)})
            )
            return
        self._append(run, name, TOTAL, step, wall, value)

    def _append(
        self, run: Run, name: str, key: str, step: int, wall: float, v: float
    ) -> None:
        series = run.series.get((name, key))
        if series is None:
            series = run.series[(name, key)] = Series(self.max_points)
            run.key_count[name] += 1
        if not math.isfinite(v):
            run.nonfinite += 1
        series.append(step, wall, v)

    # -- persistence -------------------------------------------------------------
    def replay(self, max_frame_bytes: int) -> Counter[str]:
        """Rebuild runs from the frame logs (start-up); returns what happened."""
        stats: Counter[str] = Counter()
        if self.logs is None:
            return stats
        logs, self.logs = self.logs, None  # replayed frames are not logged again
        loaded: list[str] = []
        try:
            for run_id in logs.run_ids():
                try:
                    frames, torn = logs.load(run_id)
                except (OSError, ProtocolError) as exc:
                    log.warning("glasscockpit: cannot replay %r: %s", run_id, exc)
                    stats["replay.unreadable_logs"] += 1
                    continue
                stats["replay.torn_bytes"] += torn
                stats["replay.runs"] += 1
                loaded.append(run_id)
                for data in frames:
                    try:
                        frame = decode(data, max_frame_bytes)
                        if isinstance(frame, Ack):
                            raise Rejected("schema", "an ack frame in a run's log")
                        self.ingest(frame)
                        stats["replay.frames"] += 1
                    except (ProtocolError, Rejected) as exc:
                        # Limits may have been lowered since the frame was logged.
                        log.warning("glasscockpit: replay of %r: %s", run_id, exc)
                        stats["replay.rejected_frames"] += 1
                run = self.runs.get(run_id)
                if run is not None:
                    run.connected = 0
        finally:
            self.logs = logs
        for run_id in loaded:
            if run_id not in self.runs:  # evicted during replay (MAX_RUNS lowered)
                logs.delete(run_id)
        return stats

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
        """Remove a run (and its log); False if unknown."""
        with self.lock:
            found = self.runs.pop(run_id, None) is not None
            if found and self.logs is not None:
                self.logs.delete(run_id)
            return found

    def nbytes(self) -> int:
        """Estimated memory of every stored series and histogram."""
        with self.lock:
            return sum(r.nbytes for r in self.runs.values())

    def points(self) -> int:
        """Buckets stored over all series."""
        with self.lock:
            return sum(len(s) for r in self.runs.values() for s in r.series.values())
