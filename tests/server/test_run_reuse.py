"""A reused run id: another process gets a new run with a suffix, visibly.

The hello's ack names the run the frames are stored under; the same process
(reconnecting, or ``glasscockpit sync`` of its spill file) resumes its own run.
"""

from __future__ import annotations

import json
import threading
import urllib.request

from websockets.sync.client import ClientConnection, connect

from glasscockpit.protocol import Ack, Bye, Hello, decode, encode
from glasscockpit.server.framelog import read_records
from tests.conftest import free_port
from tests.server.harness import live_server
from tests.server.test_persist import SPECS, frames_of


def get(base: str, path: str) -> object:
    with urllib.request.urlopen(base + path, timeout=5) as r:
        return json.loads(r.read())


def meta(pid: int) -> dict[str, object]:
    # What every agent sends (agent/lifecycle/meta.py): this tells processes apart.
    return {"host": "trainer", "pid": pid, "started": 1700000000.0 + pid}


def open_run(ws: ClientConnection, run: str, pid: int) -> Ack:
    ws.send(encode(Hello(run, 0, SPECS, meta(pid))))
    ack = decode(ws.recv(timeout=5))
    assert isinstance(ack, Ack)
    return ack


def deliver(ws: ClientConnection, frames: list) -> int:
    for f in frames:
        ws.send(encode(f))
        ack = decode(ws.recv(timeout=5))
        assert ack.seq == f.seq
    return len(frames)


def steps(base: str, run: str) -> list[int]:
    return get(base, f"/v1/runs/{run}/series/loss")["step"]  # type: ignore[index,no-any-return]


def test_training_twice_with_one_id_stores_both_runs(tmp_path):
    with live_server(free_port(), data_dir=tmp_path) as s:
        url = s.ws + "/v1/agent"
        with connect(url, compression=None) as ws:
            assert open_run(ws, "digits-sgd", 1) == Ack("digits-sgd", 0)
            deliver(ws, [*frames_of("digits-sgd", 30), Bye("digits-sgd", 31)])
        with connect(url, compression=None) as ws:
            # A second process, same id, seq from 0 again: a new run, and the
            # ack says which one (never "0 uploaded, 31 already stored").
            assert open_run(ws, "digits-sgd", 2) == Ack("digits-sgd-2", 0)
            deliver(ws, frames_of("digits-sgd", 10))
        with connect(url, compression=None) as ws:
            assert open_run(ws, "digits-sgd", 3) == Ack("digits-sgd-3", 0)
        assert steps(s.http, "digits-sgd") == list(range(30))
        assert steps(s.http, "digits-sgd-2") == list(range(10))
        # Process 2 reconnects (or syncs its spill file): it resumes its own run.
        with connect(url, compression=None) as ws:
            assert open_run(ws, "digits-sgd", 2) == Ack("digits-sgd-2", 10)
            deliver(ws, frames_of("digits-sgd", 5, start=11))
        assert steps(s.http, "digits-sgd-2") == list(range(15))
        detail = get(s.http, "/v1/runs/digits-sgd-2")
        assert detail["meta"]["pid"] == 2  # type: ignore[index]
    # After a restart the renamed run is still itself and still resumable.
    assert {p.name for p in tmp_path.iterdir()} == {
        "digits-sgd.frames",
        "digits-sgd-2.frames",
        "digits-sgd-3.frames",
    }
    assert len(read_records(tmp_path / "digits-sgd-2.frames")[0]) == 16
    with live_server(free_port(), data_dir=tmp_path) as s:
        assert steps(s.http, "digits-sgd") == list(range(30))
        assert steps(s.http, "digits-sgd-2") == list(range(15))
        with connect(s.ws + "/v1/agent", compression=None) as ws:
            assert open_run(ws, "digits-sgd", 2) == Ack("digits-sgd-2", 15)


def test_two_processes_with_one_id_at_once_both_keep_every_step():
    with live_server(free_port()) as s:
        url = s.ws + "/v1/agent"
        got: dict[int, tuple[str, int]] = {}

        def train(pid: int) -> None:
            with connect(url, compression=None) as ws:
                ack = open_run(ws, "same", pid)
                got[pid] = (ack.run, deliver(ws, frames_of("same", 100)))

        threads = [threading.Thread(target=train, args=(p,)) for p in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(run for run, _ in got.values()) == ["same", "same-2"]
        for run, acked in got.values():
            assert acked == 100
            assert steps(s.http, run) == list(range(100))
        pids = {get(s.http, f"/v1/runs/{r}")["meta"]["pid"] for r, _ in got.values()}  # type: ignore[index]
        assert pids == {1, 2}


def test_a_suffix_keeps_the_id_within_128_characters():
    with live_server(free_port()) as s:
        long = "r" * 128
        with connect(s.ws + "/v1/agent", compression=None) as a:
            open_run(a, long, 1)
            with connect(s.ws + "/v1/agent", compression=None) as b:
                assert open_run(b, long, 2).run == "r" * 126 + "-2"
