"""Memory bounds: series per run, array elements, the store's memory budget."""

from __future__ import annotations

import time

import httpx
import pytest

from glasscockpit.protocol import Array, Bye, Hello, Readings
from glasscockpit.server.errors import LimitExceeded, Rejected
from glasscockpit.server.memory import MemoryBudget
from glasscockpit.server.settings import Settings
from glasscockpit.server.store import Limits, RunStore


def layers(run: str, seq: int, keys: range) -> Readings:
    return Readings(run, seq, seq - 1, 0.0, {"g": {f"l{k}": 1.0 for k in keys}})


def test_series_per_run_are_capped():
    store = RunStore(limits=Limits(max_series=10, max_keys=100))
    store.ingest(Hello("r", 0, ()))
    store.ingest(layers("r", 1, range(8)))
    store.ingest(Readings("r", 2, 1, 0.0, {"loss": 1.0, "lr": 0.1}))  # 10 series
    with pytest.raises(LimitExceeded, match="GLASSCOCKPIT_MAX_SERIES"):
        store.ingest(Readings("r", 3, 2, 0.0, {"acc": 1.0}))
    with pytest.raises(LimitExceeded, match="11 series"):
        store.ingest(layers("r", 3, range(9)))
    store.ingest(layers("r", 3, range(8)))  # known series keep growing
    assert len(store.runs["r"].series) == 10


def test_defaults_fit_a_small_container():
    s = Settings()
    assert s.max_memory_bytes is not None and s.max_memory_bytes <= 2**30
    assert s.max_array_elements <= 65_536
    assert s.max_series <= 10_000


def budget_store(limit: int) -> RunStore:
    store = RunStore(max_points=64)
    store.budget = MemoryBudget(limit, every_s=0)  # re-estimate on every frame
    return store


def fill(store: RunStore, run: str, keys: int, connected: bool) -> None:
    store.ingest(Hello(run, 0, ()))
    store.runs[run].connected = int(connected)
    for seq in range(1, 65):
        store.ingest(layers(run, seq, range(keys)))


def test_over_budget_finished_runs_are_evicted_first():
    store = budget_store(10**9)
    fill(store, "old", 20, connected=False)
    store.ingest(Bye("old", 65))
    fill(store, "idle", 20, connected=False)
    one_run = store.runs["old"].nbytes
    store.budget.limit = int(2.5 * one_run)
    fill(store, "live", 20, connected=True)
    assert sorted(store.runs) == ["idle", "live"]  # the finished one went first
    assert store.evicted == ["old"]


def test_over_budget_with_only_live_runs_growth_waits_with_1013():
    store = budget_store(10**9)
    fill(store, "a", 20, connected=True)
    store.budget.limit = store.runs["a"].nbytes - 1  # full now
    with pytest.raises(Rejected) as refused:
        store.ingest(layers("a", 65, range(21)))  # a new series
    assert (refused.value.reason, refused.value.ws_code) == ("memory", 1013)
    with pytest.raises(Rejected):
        store.ingest(Hello("b", 0, ()))  # a new run
    hist = Array("<f4", (4,), bytes(16))
    with pytest.raises(Rejected):
        store.ingest(Readings("a", 65, 64, 0.0, {"h": hist}))  # a snapshot
    # Readings of known series still go in (each series is bounded).
    assert store.ingest(layers("a", 65, range(20)))
    assert "b" not in store.runs
    # Once the run finishes, a new one may evict it.
    store.ingest(Bye("a", 66))
    store.ingest(Hello("b", 0, ()))
    assert sorted(store.runs) == ["b"]


def test_connections_are_capped_per_client_and_in_total():
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from glasscockpit.protocol import decode, encode
    from tests.conftest import free_port
    from tests.server.harness import live_server

    def opened(url: str, run: str):  # type: ignore[no-untyped-def]
        ws = connect(url, compression=None)
        ws.send(encode(Hello(run, 0, ())))
        decode(ws.recv(timeout=5))
        return ws

    for setting in ("max_connections", "max_connections_per_client"):
        with live_server(free_port(), **{setting: 2}) as s:
            url = s.ws + "/v1/agent"
            a, b = opened(url, "a"), opened(url, "b")
            metrics = httpx.get(s.http + "/v1/metrics").json()
            assert metrics["connections_open"] == 2
            assert metrics["memory_limit_bytes"] == 2**30
            with pytest.raises(ConnectionClosed) as closed:
                opened(url, "c")
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1013  # the agent retries later
            assert setting.upper() in closed.value.rcvd.reason
            a.close()
            for _ in range(50):  # room again once the server has seen a leave
                try:
                    opened(url, "c").close()
                    break
                except ConnectionClosed:
                    time.sleep(0.1)
            b.close()
            assert "c" in s.store.runs
