"""Store invariants: bounded memory, exact latest point, preserved bucket extremes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glasscockpit.protocol import Bye, Hello, InstrumentSpec, Kind, PanelSpec, Readings
from glasscockpit.server import views
from glasscockpit.server.errors import LimitExceeded
from glasscockpit.server.history import History
from glasscockpit.server.run import ARRAY_OVERHEAD, SNAPSHOT_OVERHEAD
from glasscockpit.server.series import BUCKET_BYTES, FOLD_AT, SERIES_OVERHEAD, Series
from glasscockpit.server.store import TOTAL, Limits, RunStore
from tests.server.strategies import (
    reading_values,
    resent,
    series_readings,
    sessions,
)


def same(a: float, b: float) -> bool:
    """Equal, with NaN equal to NaN."""
    return a == b or (math.isnan(a) and math.isnan(b))


def fmin(xs: list[float]) -> float:
    return float(np.fmin.reduce(np.array(xs, dtype=np.float64)))


def fmax(xs: list[float]) -> float:
    return float(np.fmax.reduce(np.array(xs, dtype=np.float64)))


def members(readings: list[tuple[int, float, float]], steps: list[int]) -> list[list]:
    """Readings of each bucket: those with step in (previous bucket's step, step]."""
    out, i = [], 0
    for last in steps:
        group = []
        while i < len(readings) and readings[i][0] <= last:
            group.append(readings[i])
            i += 1
        out.append(group)
    assert i == len(readings)
    return out


@settings(max_examples=150, deadline=None)
@given(readings=series_readings(), capacity=st.integers(4, 40))
def test_series_invariants(readings, capacity):
    series = Series(capacity)
    for step, wall, value in readings:
        series.append(step, wall, value)
    view = series.view()
    assert series.count == len(readings)
    assert len(series) == len(view.step) <= capacity
    assert series.nbytes <= SERIES_OVERHEAD + (capacity + 1) * BUCKET_BYTES * 9 // 8
    if not readings:
        assert view.step == []
        return
    # The latest reading is exact.
    step, wall, value = readings[-1]
    assert (view.step[-1], view.wall_time[-1]) == (step, wall)
    assert same(view.value[-1], value)
    groups = members(readings, view.step)
    width = series.width
    for i, group in enumerate(groups):
        assert group, "every bucket holds at least one reading"
        values = [v for _, _, v in group]
        # min/max of every bucket are those of its readings; value is its last one.
        assert same(view.min[i], fmin(values))
        assert same(view.max[i], fmax(values))
        assert same(view.value[i], values[-1])
        # A NaN/Inf in a bucket stays visible even when min/max cannot show it.
        assert view.nonfinite[i] == sum(not math.isfinite(v) for v in values)
        # Stable, aligned buckets: one power-of-two cell of steps per bucket.
        cells = {s // width for s, _, _ in group}
        assert len(cells) == 1
        if i:
            assert min(cells) > groups[i - 1][-1][0] // width


@settings(max_examples=100, deadline=None)
@given(
    readings=series_readings(),
    capacity=st.integers(4, 40),
    max_points=st.integers(1, 50),
)
def test_series_views_keep_extremes_and_the_latest_point(
    readings, capacity, max_points
):
    series = Series(capacity)
    for step, wall, value in readings:
        series.append(step, wall, value)
    full = series.view()
    small = series.view(max_points)
    assert len(small.step) <= max(max_points, 1)
    if readings:
        assert small.step[-1] == full.step[-1]
        assert same(small.value[-1], full.value[-1])
        assert same(fmin(small.min), fmin(full.min))
        assert same(fmax(small.max), fmax(full.max))
        for i, group in enumerate(members(readings, small.step)):
            values = [v for _, _, v in group]
            assert same(small.min[i], fmin(values))
            assert same(small.max[i], fmax(values))
            assert small.nonfinite[i] == sum(not math.isfinite(v) for v in values)
        # The same request twice gives the same buckets (no jitter between refreshes).
        again = series.view(max_points)
        assert again.step == small.step
        cut = full.step[len(full.step) // 2]
        tail = series.view(None, after_step=cut)
        assert all(s > cut for s in tail.step)
        assert tail.step == full.step[len(full.step) - len(tail.step) :]


def fmin2(a: float, b: float) -> float:
    """numpy.fmin of two floats: NaN loses against a number."""
    return b if a != a else a if b != b else min(a, b)


def fmax2(a: float, b: float) -> float:
    return b if a != a else a if b != b else max(a, b)


class OneByOne:
    """Reference: fold each reading into the buckets on arrival, in plain Python."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.shift = 0
        self.buckets: list[list] = []  # [id, step, wall, value, min, max, nonfinite]

    def append(self, step: int, wall: float, value: float) -> None:
        k = step >> self.shift
        bad = 0 if math.isfinite(value) else 1
        if self.buckets and k <= self.buckets[-1][0]:
            b = self.buckets[-1]
            b[1:6] = [step, wall, value, fmin2(b[4], value), fmax2(b[5], value)]
            b[6] += bad
            return
        self.buckets.append([k, step, wall, value, value, value, bad])
        while len(self.buckets) > self.capacity:
            self.shift += 1
            merged: list[list] = []
            for k, step, wall, value, lo, hi, bad in self.buckets:
                if merged and merged[-1][0] == k >> 1:
                    m = merged[-1]
                    m[1:6] = [step, wall, value, fmin2(m[4], lo), fmax2(m[5], hi)]
                    m[6] += bad
                else:
                    merged.append([k >> 1, step, wall, value, lo, hi, bad])
            self.buckets = merged


@settings(max_examples=100, deadline=None)
@given(
    readings=st.lists(
        st.tuples(
            st.one_of(st.integers(0, 3000), st.integers(0, 2**53)), reading_values
        ),
        max_size=3 * FOLD_AT,
    ),
    reads=st.sets(st.integers(0, 3 * FOLD_AT)),
    capacity=st.integers(4, 40),
)
def test_batched_folds_equal_folding_each_reading(readings, reads, capacity):
    """Queued readings fold into exactly the buckets of one-by-one folding, for any
    step order (restarted counters included) and wherever reads force a fold."""
    series, reference = Series(capacity), OneByOne(capacity)
    for i, (step, value) in enumerate(readings):
        if i in reads:
            len(series)  # a read folds whatever is queued
        series.append(step, float(i), value)
        reference.append(step, float(i), value)
    view = series.view()
    assert series.width == 1 << reference.shift
    expected = reference.buckets
    assert view.step == [b[1] for b in expected]
    assert view.wall_time == [b[2] for b in expected]
    assert view.nonfinite == [b[6] for b in expected]
    for got, want in (
        (view.value, [b[3] for b in expected]),
        (view.min, [b[4] for b in expected]),
        (view.max, [b[5] for b in expected]),
    ):
        assert all(same(g, w) for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize("seed", range(4))
def test_batched_folds_equal_folding_each_reading_over_many_folds(seed):
    """Long streams: folds at FOLD_AT and at reads, restarts, NaN, Inf, spikes."""
    rng = np.random.default_rng(seed)
    n = 5 * FOLD_AT + 17
    gaps = rng.choice([0, 1, 1, 1, 2, 7, 300], n)
    steps = np.cumsum(gaps)
    steps[rng.integers(0, n, 3)] = 0  # restarted step counters
    values = rng.normal(size=n)
    values[rng.integers(0, n, 20)] = np.nan
    values[rng.integers(0, n, 5)] = np.inf
    reads = set(rng.integers(0, n, 10).tolist())
    series, reference = Series(32), OneByOne(32)
    for i in range(n):
        if i in reads:
            len(series)
        step, value = int(steps[i]), float(values[i])
        series.append(step, float(i), value)
        reference.append(step, float(i), value)
    view = series.view()
    assert series.width == 1 << reference.shift > 1
    assert view.step == [b[1] for b in reference.buckets]
    assert view.nonfinite == [b[6] for b in reference.buckets]
    for got, want in ((view.min, 4), (view.max, 5), (view.value, 3)):
        assert all(
            same(g, b[want]) for g, b in zip(got, reference.buckets, strict=True)
        )


def test_spike_survives_a_long_series():
    series = Series(64)
    for step in range(100_000):
        series.append(step, float(step), 1e6 if step == 31_337 else 0.5)
    view = series.view(50)
    assert max(view.max) == 1e6
    assert min(view.min) == 0.5
    assert (view.step[-1], view.value[-1]) == (99_999, 0.5)
    assert len(series) <= 64


def test_a_nan_inside_a_downsampled_bucket_stays_visible_in_the_api():
    store = RunStore(max_points=16)
    store.ingest(Hello("r", 0, (InstrumentSpec("loss", Kind.SCALAR, PanelSpec("L")),)))
    bad = {500: math.nan, 700: math.inf, 701: -math.inf}
    for step in range(1000):
        value = bad.get(step, 1.0 + step % 7)
        store.ingest(Readings("r", step + 1, step, float(step), {"loss": value}))
    run = store.get("r")
    assert run is not None and run.nonfinite == 3
    data = views.series_view(store, "r", "loss", TOTAL, max_points=4)
    json.dumps(data, allow_nan=False)  # JSON-safe
    assert len(data["step"]) <= 4
    # min/max show the infinities but not the NaN; the counts show all three.
    assert sum(data["nonfinite"]) == 3
    (nan_bucket,) = (
        i
        for i, last in enumerate(data["step"])
        if last >= 500 and (i == 0 or data["step"][i - 1] < 500)
    )
    assert data["nonfinite"][nan_bucket] >= 1
    assert "NaN" not in data["min"] + data["max"]
    csv_rows = views.export_csv(store, "r").splitlines()
    assert csv_rows[0].endswith(",nonfinite")
    assert sum(int(row.rsplit(",", 1)[1]) for row in csv_rows[1:]) == 3


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 500), capacity=st.integers(2, 40))
def test_history_is_bounded_and_keeps_first_and_recent(n, capacity):
    history: History[int] = History(capacity)
    for i in range(n):
        history.append(i)
    items = list(history)
    assert len(items) <= capacity
    assert history.count == n
    assert items == sorted(set(items))
    if n:
        assert items[0] == 0
        recent = min(n, capacity // 2)
        assert items[-recent:] == list(range(n - recent, n))
        assert history.thinned == n - len(items)
        assert history.last(3) == items[-3:]


def ingest_all(store: RunStore, frames) -> None:
    for frame in frames:
        store.ingest(frame)


def snapshot(store: RunStore, run_id: str) -> str:
    """Everything a client can read about a run, as JSON (must be JSON-safe)."""
    data = views.export_json(store, run_id, 60.0)
    for key in ("created", "last_frame_time", "status"):
        data["run"].pop(key)
    return json.dumps(data, allow_nan=False, sort_keys=True)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), capacity=st.integers(4, 16))
def test_resent_frames_change_nothing(data, capacity):
    frames = data.draw(sessions())
    once = RunStore(max_points=capacity, max_histograms=4)
    ingest_all(once, frames)
    twice = RunStore(max_points=capacity, max_histograms=4)
    ingest_all(twice, data.draw(resent(frames)))
    assert snapshot(once, "fuzz") == snapshot(twice, "fuzz")
    run = once.get("fuzz")
    assert run is not None
    # Hello frames are resent on every reconnect, so they do not advance last_seq.
    assert run.last_seq == max((f.seq for f in frames[1:]), default=-1)
    assert all(len(s) <= capacity for s in run.series.values())
    assert all(len(h) <= 4 for h in run.histograms.values())


def finished_run(store: RunStore, run_id: str, steps: int = 3) -> None:
    store.ingest(
        Hello(run_id, 0, (InstrumentSpec("loss", Kind.SCALAR, PanelSpec("L")),))
    )
    for seq in range(1, steps + 1):
        store.ingest(Readings(run_id, seq, seq, float(seq), {"loss": float(seq)}))
    store.ingest(Bye(run_id, steps + 1))


def test_max_runs_evicts_oldest_finished_first(caplog):
    store = RunStore(max_runs=3)
    finished_run(store, "old-finished")
    store.ingest(Hello("live", 0, ()))
    store.runs["live"].connected = 1
    finished_run(store, "new-finished")
    with caplog.at_level("WARNING", logger="glasscockpit.server"):
        finished_run(store, "fourth")
    assert set(store.runs) == {"live", "new-finished", "fourth"}
    assert store.evicted == ["old-finished"]
    assert store.evicted_count == 1
    assert "evicted run 'old-finished'" in caplog.text
    finished_run(store, "fifth")
    assert "live" in store.runs  # a connected live run goes last
    assert store.evicted == ["old-finished", "new-finished"]


def test_all_runs_live_and_connected_refuses_a_new_run():
    store = RunStore(max_runs=2)
    for run_id in ("a", "b"):
        store.ingest(Hello(run_id, 0, ()))
        store.runs[run_id].connected = 1
    with pytest.raises(LimitExceeded, match="GLASSCOCKPIT_MAX_RUNS") as info:
        store.ingest(Hello("c", 0, ()))
    assert info.value.ws_code == 1013  # try again later: the agent retries
    store.runs["a"].connected = 0  # a disconnected (stale) run may go
    store.ingest(Hello("c", 0, ()))
    assert set(store.runs) == {"b", "c"}


def test_memory_stays_bounded_with_steps_and_runs():
    store = RunStore(max_points=32, max_histograms=8, max_runs=5)
    hist = {"counts": np.zeros(16, "<f4"), "edges": np.zeros(17, "<f4")}
    from glasscockpit.protocol import Array

    arrays = {k: Array("<f4", v.shape, v.tobytes()) for k, v in hist.items()}
    sizes = []
    for r in range(12):
        run_id = f"run-{r}"
        store.ingest(Hello(run_id, 0, ()))
        for seq in range(1, 401):
            values = {
                "loss": float(seq),
                "grad_norm": {"total": 1.0, "w": 2.0, "b": 3.0},
                "hist": arrays,
            }
            store.ingest(Readings(run_id, seq, seq, float(seq), values))  # type: ignore[arg-type]
        store.ingest(Bye(run_id, 401))
        sizes.append(store.nbytes())
    # 4 series x (32 + 1) buckets + 8 snapshots x 33 floats, per run, 5 runs at most,
    # with the measured per-object overheads.
    series = SERIES_OVERHEAD + (33 * BUCKET_BYTES + FOLD_AT * 24) * 9 // 8
    snapshot = SNAPSHOT_OVERHEAD + 2 * ARRAY_OVERHEAD + 33 * 4
    bound = 5 * (4 * series + 8 * snapshot)
    assert max(sizes) <= bound
    assert sizes[-1] == sizes[5]  # flat once max_runs is reached
    assert len(store.runs) == 5
    assert store.evicted_count == 7


def test_per_run_limits_refuse_without_storing_anything():
    store = RunStore(limits=Limits(max_instruments=3, max_keys=2))
    store.ingest(Hello("r", 0, ()))
    store.ingest(Readings("r", 1, 0, 0.0, {"a": 1.0, "b": {"x": 1.0, "y": 2.0}}))
    with pytest.raises(LimitExceeded, match="keys"):
        store.ingest(Readings("r", 2, 1, 1.0, {"b": {"z": 3.0}}))
    with pytest.raises(LimitExceeded, match="instruments"):
        store.ingest(Readings("r", 2, 1, 1.0, {"c": 1.0, "d": 1.0}))
    run = store.get("r")
    assert run is not None
    assert run.last_seq == 1
    assert sorted(run.series) == [("a", "total"), ("b", "x"), ("b", "y")]
