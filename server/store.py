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

A frame is first checked on its own (``frame_checks.py``), then against its run;
what is kept per run is defined in ``run.py``. Both modules' public names are
re-exported here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import Counter

from glasscockpit.diagnosis import Diagnoser, DiagnosisSettings
from glasscockpit.protocol import Array, Bye, Frame, Hello, Readings
from glasscockpit.server.errors import LimitExceeded, Rejected
from glasscockpit.server.frame_checks import (
    MAX_INT,
    Limits,
    as_numpy,
    check_frame,
    clean_meta,
)
from glasscockpit.server.framelog import FrameLogs, LogWriteError
from glasscockpit.server.history import History
from glasscockpit.server.memory import MemoryBudget
from glasscockpit.server.run import TOTAL, Histogram, Run, instance_of
from glasscockpit.server.series import Series

log = logging.getLogger("glasscockpit.server")
_NO_SERIES: dict[str, Series] = {}  # read-only stand-in for an instrument's series
_NO_ARRAYS = frozenset({float, type(None)})  # reading types that hold no array


class RunStore:
    """Thread-safe store of runs; ingest is idempotent per (run, seq)."""

    def __init__(
        self,
        max_points: int = 4096,
        max_histograms: int = 256,
        max_runs: int = 100,
        limits: Limits | None = None,
        logs: FrameLogs | None = None,
        diagnosis: DiagnosisSettings | None = None,
        max_memory_bytes: int | None = None,
    ):
        if max_runs < 1:
            raise ValueError(f"max_runs must be >= 1, got {max_runs}")
        self.max_points = max_points
        self.max_histograms = max_histograms
        self.max_runs = max_runs
        self.limits = limits or Limits()
        self.logs = logs
        self.budget = MemoryBudget(max_memory_bytes)
        #: Diagnosis rules turned off and thresholds changed (checked here).
        self.diagnosis = diagnosis or DiagnosisSettings()
        Diagnoser(settings=self.diagnosis)
        self.runs: dict[str, Run] = {}
        self.evicted: list[str] = []  # the last 100 evicted run ids
        self.evicted_count = 0
        self.lock = threading.RLock()

    def ingest(
        self, frame: Frame, raw: bytes | None = None, run_id: str | None = None
    ) -> bool:
        """Check and store one frame; False when it is a duplicate (already stored).

        Raises ``Rejected`` (nothing stored, nothing logged) when the frame breaks a
        limit or its log write fails. ``raw`` (the frame's wire bytes) is appended to
        the run's log when the store has one. ``run_id``: the stored run the frame
        belongs to, when its hello was given another id (``hello``).
        """
        if isinstance(frame, Hello):
            self.hello(frame, raw, run_id)
            return True
        check_frame(frame, self.limits)
        if run_id is not None and run_id != frame.run:
            frame = dataclasses.replace(frame, run=run_id)
        with self.lock:
            run = self.runs.get(frame.run)
            if run is not None and frame.seq <= run.last_seq:
                return False
            if isinstance(frame, Readings):
                self._check_readings(run or Run(frame.run), frame)
            fresh_run = run is None
            if fresh_run:
                self._make_room(frame.run)
            # Everything that can refuse the frame has run: log it, then store it.
            self._log(frame, raw, fresh_run)
            run = run or self._new_run(frame.run)
            run.last_frame_time = time.time()
            run.last_seq = frame.seq
            run.frames += 1
            if isinstance(frame, Bye):
                run.status = frame.status
            elif isinstance(frame, Readings):
                self._add_readings(run, frame)
                self._diagnose(run, frame)
            return True

    def hello(
        self, frame: Hello, raw: bytes | None = None, run_id: str | None = None
    ) -> str:
        """Store a hello frame; returns the id of the run it opens or resumes.

        The same run instance (``instance_of`` its metadata) resumes its run, under
        whatever id it was given. Another instance asking for a stored id gets a new
        run with a suffix (``digits-sgd-2``): its frames must not be mistaken for
        the stored run's (their sequence numbers start again at 0). ``run_id``
        forces the id (replay: the log's file name says it).
        """
        check_frame(frame, self.limits)
        instruments = {s.name: s for s in frame.instruments}
        meta = clean_meta(frame.meta, self.limits)
        instance = instance_of(meta)
        with self.lock:
            resolved = run_id is None
            if run_id is None:
                run_id = self._resolve(frame.run, instance)
            run = self.runs.get(run_id)
            fresh_run = run is None
            reopen = (
                run is not None and run.status != "live" and frame.seq > run.last_seq
            )
            if run is not None:
                self._check_names(run, set(instruments))
                same = run.meta == meta and run.instruments == instruments
                if same and not reopen:
                    run.last_frame_time = time.time()
                    return run_id  # a reconnect's hello: nothing new to log
            else:
                self._make_room(run_id)
            self._log(frame, raw, fresh_run, run_id)
            if run is None:
                run = self._new_run(run_id)
                run.origin, run.instance = frame.run, instance
                if resolved and run_id != frame.run:
                    log.warning(
                        "glasscockpit: run id %r is taken by another run instance; "
                        "this one is stored as %r",
                        frame.run,
                        run_id,
                    )
            run.meta = meta
            run.instruments = instruments
            run.names |= set(instruments)
            run.diagnoser.declare(instruments, meta)
            if reopen:
                run.status = "live"
            run.last_frame_time = time.time()
            return run_id

    def _resolve(self, wanted: str, instance: str) -> str:
        """The run a hello for ``wanted`` from ``instance`` goes to (lock held)."""
        for run in self.runs.values():
            if run.origin == wanted and run.instance == instance:
                return run.run_id  # the same process (or its spill file) again
        if wanted not in self.runs:
            return wanted
        n = 2
        while True:
            suffix = f"-{n}"
            candidate = wanted[: 128 - len(suffix)] + suffix
            if candidate not in self.runs:
                return candidate
            n += 1

    def _log(
        self, frame: Frame, raw: bytes | None, fresh_run: bool, run_id: str = ""
    ) -> None:
        """Append ``raw`` to the run's log, or refuse the frame (nothing stored)."""
        if self.logs is None or raw is None:
            return
        run_id = run_id or frame.run
        # Bye frames are exempt from the caps (a few bytes; a run can still finish).
        full = (
            None
            if isinstance(frame, Bye)
            else self.logs.full(run_id, len(raw), fresh_run)
        )
        if full is not None:
            # Per run: resending cannot help (fatal 1008). All logs: retry (1013)
            # once a run is deleted or evicted. See framelog.py for the policy.
            why, per_run = full
            raise Rejected("log_full", why, 1008 if per_run else 1013)
        if fresh_run:
            self.logs.delete(run_id)  # a stale file of a run evicted earlier
        try:
            self.logs.append(run_id, raw)
        except LogWriteError as exc:
            # Rolled back and not acknowledged: 1013 makes the agent keep the
            # frame and retry, so a full disk delays frames but loses none.
            log.error("glasscockpit: %s", exc)
            reason = "disk_full" if exc.full else "log_write"
            raise Rejected(reason, str(exc), 1013) from exc

    def _check_names(self, run: Run, names: set[str]) -> None:
        total = len(run.names | names)
        if total > self.limits.max_instruments:
            raise LimitExceeded(
                f"Run {run.run_id!r} would have {total} instruments; the limit is "
                f"{self.limits.max_instruments} (GLASSCOCKPIT_MAX_INSTRUMENTS)"
            )

    def _check_readings(self, run: Run, frame: Readings) -> None:
        names = run.names
        # Fast paths (C-level set checks) for the usual frame: nothing new.
        if not (names.issuperset(frame.values) and names.issuperset(frame.errors)):
            self._check_names(run, set(frame.values) | set(frame.errors))
        added = 0  # new series
        arrays = False
        by_name = run.by_name
        values = frame.values
        if not by_name.keys() >= values.keys():  # the usual frame skips this
            added = sum(
                1
                for n, v in values.items()
                if v.__class__ is float and n not in by_name
            )
        for name, value in values.items():
            if isinstance(value, dict):
                known = by_name.get(name)
                if known is not None and known.keys() >= value.keys():
                    if not arrays and not _NO_ARRAYS.issuperset(
                        map(type, value.values())
                    ):
                        arrays = True
                    continue  # no new series: the key count cannot grow
                new = sum(1 for k in value if (name, k) not in run.series)
                arrays = arrays or any(isinstance(v, Array) for v in value.values())
                if run.key_count[name] + new > self.limits.max_keys:
                    raise LimitExceeded(
                        f"Instrument {name!r} of run {run.run_id!r} would have "
                        f"{run.key_count[name] + new} keys; the limit is "
                        f"{self.limits.max_keys} (GLASSCOCKPIT_MAX_KEYS)"
                    )
                added += new
            elif value.__class__ is Array:
                arrays = True
        if added and len(run.series) + added > self.limits.max_series:
            raise LimitExceeded(
                f"Run {run.run_id!r} would have {len(run.series) + added} series; "
                f"the limit is {self.limits.max_series} (GLASSCOCKPIT_MAX_SERIES)"
            )
        # Re-estimated once a second on any frame, so finished runs are evicted as
        # the live ones fill their series; refused only if this frame would grow.
        self.budget.check(self, run.run_id, grows=bool(added or arrays))

    def _make_room(self, run_id: str) -> None:
        if len(self.runs) >= self.max_runs:
            self._evict_one(run_id)
        self.budget.check(self, run_id, grows=True)

    def _diagnose(self, run: Run, frame: Readings) -> None:
        """Evaluate the diagnosis rules on a stored frame (live, replay and sync)."""
        try:
            run.diagnoser.feed(frame.step, frame.values)
        except Exception:  # noqa: BLE001 - a diagnosis bug never refuses a frame
            log.exception("glasscockpit: diagnosis of run %r failed", run.run_id)

    def _new_run(self, run_id: str) -> Run:
        run = Run(run_id, origin=run_id, diagnoser=Diagnoser(settings=self.diagnosis))
        self.runs[run_id] = run
        return run

    def _evict_one(self, for_run: str, why: str = "GLASSCOCKPIT_MAX_RUNS") -> int:
        """Evict the finished, else disconnected run with the oldest last frame.

        Returns its estimated memory; raises ``LimitExceeded`` (1013) when every
        other run is live and connected.
        """
        others = [r for r in self.runs.values() if r.run_id != for_run]
        done = [r for r in others if r.status != "live"]
        idle = [r for r in others if r.status == "live" and not r.connected]
        pool = done or idle
        if not pool:
            # 1013 "try again later": the agent backs off and retries, and gets in
            # as soon as any run finishes or disconnects.
            raise LimitExceeded(
                f"Cannot store run {for_run!r}: all {len(self.runs)} stored runs are "
                f"live and connected ({why})",
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
            "for %r: %s",
            victim.run_id,
            victim.status,
            time.time() - victim.last_frame_time,
            for_run,
            why,
        )
        return victim.nbytes

    def _add_readings(self, run: Run, frame: Readings) -> None:
        # One loop without helper calls per reading: ingest runs this for every
        # reading of every frame (see bench/ingest.py).
        step, wall = frame.step, frame.wall_time
        run.last_step = step if run.last_step is None else max(run.last_step, step)
        if frame.errors:
            run.errors.update(frame.errors)
            run.names.update(frame.errors)
        if not run.names.issuperset(frame.values):
            run.names.update(frame.values)
        by_name = run.by_name
        isfinite = math.isfinite
        nonfinite = 0
        for name, value in frame.values.items():
            if value is None:
                continue
            if isinstance(value, dict):
                arrays = None
                keyed = by_name.get(name, _NO_SERIES)
                for key, v in value.items():
                    if isinstance(v, float):
                        s = keyed.get(key)
                        if s is None:
                            s = self._new_series(run, name, key)
                        s.append(step, wall, v)
                        if not isfinite(v):
                            nonfinite += 1
                    elif isinstance(v, Array):
                        arrays = arrays or {}
                        arrays[key] = as_numpy(v)
                if arrays:
                    self._history(run, name).append(Histogram(step, wall, arrays))
            elif isinstance(value, Array):
                self._history(run, name).append(
                    Histogram(step, wall, {"counts": as_numpy(value)})
                )
            else:
                s = by_name.get(name, _NO_SERIES).get(TOTAL)
                if s is None:
                    s = self._new_series(run, name, TOTAL)
                s.append(step, wall, value)
                if not isfinite(value):
                    nonfinite += 1
        run.nonfinite += nonfinite

    def _history(self, run: Run, name: str) -> History[Histogram]:
        hist = run.histograms.get(name)
        if hist is None:
            hist = run.histograms[name] = History(self.max_histograms)
        return hist

    def _new_series(self, run: Run, name: str, key: str) -> Series:
        series = run.series[(name, key)] = Series(self.max_points)
        run.key_count[name] += 1
        run.by_name.setdefault(name, {})[key] = series
        return series

    # -- persistence -------------------------------------------------------------
    def replay(self, max_frame_bytes: int) -> Counter[str]:
        """Rebuild runs from the frame logs (start-up); see ``server/replay.py``."""
        from glasscockpit.server.replay import replay

        return replay(self, max_frame_bytes)

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


__all__ = [
    "MAX_INT",
    "TOTAL",
    "Histogram",
    "Limits",
    "Run",
    "RunStore",
    "as_numpy",
    "check_frame",
    "clean_meta",
]
