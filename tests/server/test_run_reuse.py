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


def test_two_real_agents_with_one_id_both_deliver_and_the_second_knows_its_id(
    tmp_path, monkeypatch
):
    import time

    import torch
    from torch import nn

    from glasscockpit.agent import Cockpit
    from glasscockpit.agent.transport.websocket import TransportOptions

    monkeypatch.setenv("GLASSCOCKPIT_SPILL_DIR", str(tmp_path / "spill"))
    x, y = torch.randn(16, 10), torch.randint(0, 5, (16,))

    def cockpit(server: str) -> Cockpit:
        model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 5))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        return Cockpit(
            model,
            opt,
            run="digits-sgd",  # the README's fixed id
            server=server,
            instruments=["loss", "grad_norm"],
            budget=None,
            transport_options=TransportOptions(backoff=(0.05, 0.2)),
        )

    def train(c: Cockpit, steps: int) -> None:
        for step in range(steps):
            c.optimizer.zero_grad()
            loss = nn.functional.cross_entropy(c.model(x), y)
            with c.step(step, loss=loss):
                loss.backward()
            c.optimizer.step()

    with live_server(free_port()) as s:
        first = cockpit(s.ws)
        train(first, 30)
        second = cockpit(s.ws)  # live at the same time
        train(second, 20)
        started = time.monotonic()
        second.close()
        first.close()
        assert time.monotonic() - started < 10  # no hang for the whole timeout
        assert first.stats.run_id == ""
        assert second.stats.run_id == "digits-sgd-2"
        for c, run, steps in ((first, "digits-sgd", 30), (second, "digits-sgd-2", 20)):
            stored = s.store.get(run)
            assert stored is not None and stored.status == "finished"
            assert stored.series[("loss", "total")].view().step == list(range(steps))
            # Acknowledged means stored: the hello, every step's frame, the bye.
            assert c.stats.acked == stored.frames
            assert c.stats.dropped == 0


def test_default_run_ids_of_one_second_differ():
    from glasscockpit.agent.lifecycle.meta import default_run_id
    from glasscockpit.protocol import check_run_id

    ids = {default_run_id() for _ in range(50)}  # one second, one script
    assert len(ids) == 50
    assert all(check_run_id(i) == i for i in ids)
