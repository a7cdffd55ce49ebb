"""The transport against real uvicorn servers and real training loops.

Each test drives a real model through ``Cockpit`` and checks, in the server's
store or in the spill file, that every tracked step arrived exactly once, or is
on disk and uploads exactly once with ``glasscockpit sync``.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch
from torch import nn
from websockets.sync.server import ServerConnection, serve

from glasscockpit.agent import Cockpit
from glasscockpit.agent.transport.spill import iter_records, scan
from glasscockpit.agent.transport.websocket import (
    TransportOptions,
    WebSocketTransport,
    wait_delivered,
)
from glasscockpit.cli import main as cli_main
from glasscockpit.protocol import Ack, Array, Bye, Hello, Readings, decode, encode
from glasscockpit.sync import sync_files
from tests.conftest import free_port
from tests.server.harness import LiveServer, live_server

FAST = TransportOptions(backoff=(0.05, 0.2), open_timeout=1.0)


@pytest.fixture
def spill_dir(tmp_path, monkeypatch):
    path = tmp_path / "spill"
    monkeypatch.setenv("GLASSCOCKPIT_SPILL_DIR", str(path))
    return path


def _cockpit(run: str, server: str | None, **kw) -> Cockpit:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    kw.setdefault("transport_options", FAST)
    # One frame per step: the counts below follow it (after-step instruments of
    # the presets would add a second frame per step).
    kw.setdefault("instruments", ["loss", "grad_norm", "lr"])
    # Every step tracked (no overhead budget thinning the cadence).
    kw.setdefault("budget", None)
    return Cockpit(model, opt, run=run, server=server, **kw)


def _train(cockpit: Cockpit, steps: range, pause: float = 0.0) -> list[float]:
    """A real loop; returns the loss of every step, as the agent saw it."""
    x, y = torch.randn(16, 10), torch.randint(0, 5, (16,))
    losses = []
    for step in steps:
        cockpit.optimizer.zero_grad()
        loss = nn.functional.cross_entropy(cockpit.model(x), y)
        with cockpit.step(step, loss=loss):
            loss.backward()
        cockpit.optimizer.step()
        losses.append(loss.item())
        if pause:
            time.sleep(pause)
    return losses


def _stored_steps(srv: LiveServer, run: str) -> tuple[list[int], int]:
    """Steps of the stored loss series and how many values were appended."""
    stored = srv.store.get(run)
    assert stored is not None, f"run {run!r} is not in the store"
    series = stored.series[("loss", "total")]
    return [int(s) for s in series.view(None, None).step], series.count


def _wait_state(cockpit: Cockpit, state: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while cockpit.stats.state != state and time.monotonic() < deadline:
        time.sleep(0.01)
    return cockpit.stats.state


def _frames_in(path) -> list:
    return [decode(r.payload) for r in iter_records(path)]


def test_live_delivery_every_frame_once_no_spill_file(torch_threads, spill_dir):
    with live_server(free_port()) as srv:
        cockpit = _cockpit("live-ok", srv.ws)
        losses = _train(cockpit, range(30))
        cockpit.close()
        steps, count = _stored_steps(srv, "live-ok")
        assert steps == list(range(30)) and count == 30
        stored = srv.store.get("live-ok")
        assert stored.status == "finished" and stored.last_seq == 31
        values = stored.series[("loss", "total")].view(None, None).value
        assert list(values) == pytest.approx(losses, rel=1e-6)
    s = cockpit.stats
    assert (s.sent, s.acked, s.spilled, s.dropped, s.pending) == (31, 31, 0, 0, 0)
    assert s.state == "closed"
    assert not spill_dir.exists() or not any(spill_dir.iterdir())


def test_server_restart_without_persistence_gets_every_step(
    torch_threads, spill_dir, caplog
):
    caplog.set_level(logging.WARNING, logger="glasscockpit.agent")
    port = free_port()
    with live_server(port) as srv:
        cockpit = _cockpit("restart", srv.ws)
        _train(cockpit, range(0, 20), pause=0.005)
        deadline = time.monotonic() + 10
        while cockpit.stats.acked < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
    # The server is gone: training goes on, frames go to the spill file.
    assert _wait_state(cockpit, "reconnecting") == "reconnecting"
    _train(cockpit, range(20, 40), pause=0.005)
    assert cockpit.stats.spilled > 0
    with live_server(port) as srv:
        _train(cockpit, range(40, 60), pause=0.005)
        cockpit.close()
        # The new, empty server got the history it lost, the spill and the rest.
        steps, count = _stored_steps(srv, "restart")
        assert steps == list(range(60)) and count == 60
        assert srv.store.get("restart").status == "finished"
    assert cockpit.stats.resent >= 20
    assert cockpit.stats.dropped == 0 and cockpit.stats.pending == 0
    # One warning per state change: lost, then back; none per step.
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "lost the connection" in messages[0] and "again" in messages[1]


def test_server_never_started_then_sync_uploads_exactly_once(
    torch_threads, spill_dir, capsys
):
    port = free_port()
    cockpit = _cockpit("never", f"ws://127.0.0.1:{port}")
    _train(cockpit, range(25))
    cockpit.close()
    s = cockpit.stats
    assert s.state == "closed" and s.sent == 0 and s.dropped == 0
    path = spill_dir / "never.gcp"
    frames = _frames_in(path)
    assert isinstance(frames[0], Hello)
    assert sorted(f.step for f in frames if isinstance(f, Readings)) == list(range(25))
    assert sum(isinstance(f, Bye) for f in frames) == 1
    assert s.pending == 26  # 25 readings + bye, all saved
    with live_server(port) as srv:
        assert cli_main(["sync", str(path), "--server", srv.http, "--quiet"]) == 0
        assert "26 frame(s) uploaded, 0 already" in capsys.readouterr().out
        steps, count = _stored_steps(srv, "never")
        assert steps == list(range(25)) and count == 25
        frames_before = srv.store.get("never").frames
        assert cli_main(["sync", str(path), "--server", srv.ws, "--quiet"]) == 0
        assert "0 frame(s) uploaded, 26 already" in capsys.readouterr().out
        assert srv.store.get("never").frames == frames_before
        assert _stored_steps(srv, "never")[1] == 25


def test_wrong_token_stops_retrying_warns_once_records_locally(
    torch_threads, spill_dir, caplog
):
    caplog.set_level(logging.WARNING, logger="glasscockpit.agent")
    with live_server(free_port(), token="right") as srv:
        cockpit = _cockpit("badtoken", srv.ws, token="wrong")
        _train(cockpit, range(15), pause=0.01)
        state = _wait_state(cockpit, "rejected")
        cockpit.close()
        assert state == "rejected"
        assert cockpit.stats.reconnects == 0 and cockpit.stats.sent == 0
        rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
        assert len(rejected) == 1 and "HTTP 403" in rejected[0].getMessage()
        assert srv.store.get("badtoken") is None
        path = spill_dir / "badtoken.gcp"
        results = sync_files([path], srv.http, token="right", progress=False)
        assert [(r.uploaded, r.error) for r in results] == [(16, "")]
        assert _stored_steps(srv, "badtoken") == (list(range(15)), 15)
        bad = sync_files([path], srv.http, token="wrong", progress=False)
        assert "HTTP 403" in bad[0].error


class _SilentServer:
    """A websocket server that reads every frame but acknowledges only the hello."""

    def __init__(self, port: int) -> None:
        self.received = 0
        self._server = serve(self._handler, "127.0.0.1", port, compression=None)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _handler(self, ws: ServerConnection) -> None:
        for raw in ws:
            frame = decode(raw if isinstance(raw, bytes) else raw.encode())
            self.received += 1
            if isinstance(frame, Hello):
                ws.send(encode(Ack(frame.run, 0)))

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(5)


def test_server_that_never_acks_spills_and_training_finishes(torch_threads, spill_dir):
    port = free_port()
    silent = _SilentServer(port)
    try:
        options = TransportOptions(
            max_inflight=4, max_memory_frames=8, open_timeout=1.0, backoff=(0.05, 0.2)
        )
        cockpit = _cockpit(
            "silent",
            f"ws://127.0.0.1:{port}",
            close_timeout=0.5,
            transport_options=options,
        )
        assert _wait_state(cockpit, "live") == "live"
        _train(cockpit, range(40))
        stats = cockpit.stats
        assert stats.state == "live"
        cockpit.close()
    finally:
        silent.stop()
    assert stats.acked == 0 and stats.dropped == 0
    assert stats.sent <= 4 + 1  # the in-flight window, plus the bye at close
    assert stats.spilled >= 40 - 8
    # Everything is in the spill file and uploads to a real server.
    with live_server(port) as srv:
        results = sync_files([spill_dir / "silent.gcp"], srv.ws, progress=False)
        assert results[0].error == "" and results[0].uploaded == 41
        assert _stored_steps(srv, "silent") == (list(range(40)), 40)


class _Stalled:
    """A deferred frame whose device copy never finishes until released."""

    def __init__(self, frame: Readings) -> None:
        self.seq = frame.seq
        self.frame = frame
        self.started = threading.Event()
        self.release = threading.Event()

    def resolve(self) -> Readings:
        self.started.set()
        self.release.wait(10)
        return self.frame


def test_full_hand_off_drops_and_counts_without_blocking(tmp_path):
    hello = Hello(run="stall", seq=0, instruments=())
    path = tmp_path / "stall.gcp"
    transport = WebSocketTransport(
        None, hello, record=path, options=TransportOptions(max_queue=4)
    )
    stalled = _Stalled(Readings("stall", 1, 0, 0.0, {"loss": 1.0}))
    transport.send(stalled)
    assert stalled.started.wait(5)
    for seq in range(2, 12):  # 4 fit in the hand-off, 6 are dropped
        transport.send(Readings("stall", seq, seq - 1, 0.0, {"loss": 1.0}))
    assert transport.stats.dropped == 6
    stalled.release.set()
    transport.close(5)
    seqs = [f.seq for f in _frames_in(path)]
    assert seqs == [0, 1, 2, 3, 4, 5]
    assert transport.stats.recorded == 5


def test_disk_budget_exhausted_drops_are_counted(torch_threads, spill_dir):
    budget = 3000
    options = TransportOptions(spill_max_bytes=budget, backoff=(0.05, 0.2))
    cockpit = _cockpit(
        "budget", f"ws://127.0.0.1:{free_port()}", transport_options=options
    )
    _train(cockpit, range(60))
    cockpit.close()
    s = cockpit.stats
    assert s.dropped > 0
    path = spill_dir / "budget.gcp"
    assert path.stat().st_size <= budget
    kept = [f for f in _frames_in(path) if not isinstance(f, Hello)]
    assert len(kept) + s.dropped == 61
    assert s.pending == len(kept)


def test_record_while_live_then_sync_adds_nothing(torch_threads, spill_dir, tmp_path):
    path = tmp_path / "rec.gcp"
    with live_server(free_port()) as srv:
        cockpit = _cockpit("rec", srv.ws, record=path)
        _train(cockpit, range(20))
        cockpit.close()
        assert cockpit.stats.recorded == 21 and cockpit.stats.acked == 21
        assert scan(path).records == 22  # hello + 20 readings + bye
        frames_before = srv.store.get("rec").frames
        for _ in range(2):
            results = sync_files([path], srv.ws, progress=False)
            assert [(r.uploaded, r.already_held) for r in results] == [(0, 21)]
        assert srv.store.get("rec").frames == frames_before
        assert _stored_steps(srv, "rec") == (list(range(20)), 20)


def test_record_without_server_keeps_readings_and_file(torch_threads, tmp_path):
    path = tmp_path / "offline.gcp"
    cockpit = _cockpit("offline-rec", None, record=path)
    losses = _train(cockpit, range(12))
    cockpit.close()
    assert [cockpit.readings[i]["loss"] for i in range(12)] == pytest.approx(losses)
    frames = _frames_in(path)
    assert [f.seq for f in frames] == list(range(14))
    assert [f.values["loss"] for f in frames[1:13]] == pytest.approx(losses)


def test_host_copy_on_cpu_is_ready_and_exact():
    from glasscockpit.agent.transport.host_copy import HostCopy, pack_readings

    counts = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    readings = {"loss": torch.tensor(0.25), "hist": {"counts": counts, "n": 3.0}}
    copy = HostCopy(readings)
    assert not copy.on_device
    values = copy.values()
    assert values["loss"] == 0.25
    arr = values["hist"]["counts"]
    assert arr.shape == (2, 3) and arr.dtype == "<f8"
    assert values["hist"]["n"] == 3.0
    # Converted off the training thread, where the frame is resolved.
    frame = pack_readings("r", 1, 0, 0.0, readings, {}).resolve()
    assert isinstance(frame, Readings) and frame.values == values


@pytest.mark.cuda
def test_host_copy_on_cuda_is_deferred_and_exact():
    from glasscockpit.agent.transport.host_copy import DeferredReadings, pack_readings

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x = torch.randn(1000, device="cuda")
    readings = {"loss": x.sum(), "norms": {"a": x.norm(), "b": x[:10]}}
    frame = pack_readings("r", 1, 0, 0.0, readings, {})
    assert isinstance(frame, DeferredReadings)
    values = frame.resolve().values
    assert values["loss"] == pytest.approx(x.sum().item(), rel=1e-6)
    assert values["norms"]["a"] == pytest.approx(x.norm().item(), rel=1e-6)
    assert values["norms"]["b"].shape == (10,)


def test_protocol_version_close_is_fatal(torch_threads, spill_dir, caplog):
    caplog.set_level(logging.WARNING, logger="glasscockpit.agent")

    def handler(ws: ServerConnection) -> None:
        ws.recv()
        ws.close(1002, "protocol version 1 is not supported; this side speaks 2")

    port = free_port()
    server = serve(handler, "127.0.0.1", port, compression=None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cockpit = _cockpit("oldproto", f"ws://127.0.0.1:{port}")
        _train(cockpit, range(10), pause=0.01)
        state = _wait_state(cockpit, "rejected")
        cockpit.close()
    finally:
        server.shutdown()
        thread.join(5)
    assert state == "rejected" and cockpit.stats.reconnects == 0
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 1 and "1002" in rejected[0]
    # Frames held in memory while connecting are saved at close, after the ones
    # spilled since the rejection: the file is complete, not sorted (sync sorts).
    frames = _frames_in(spill_dir / "oldproto.gcp")
    assert sorted(f.seq for f in frames) == list(range(12))


def test_sync_of_a_file_cut_mid_record_uploads_every_complete_frame(
    torch_threads, tmp_path, caplog
):
    path = tmp_path / "cut.gcp"
    cockpit = _cockpit("cut", None, record=path)
    _train(cockpit, range(30))
    cockpit.close()
    records = list(iter_records(path))
    # Killed while writing the 21st reading: 20 readings survive.
    cut = records[21].offset + 7
    with open(path, "r+b") as f:
        f.truncate(cut)
    with live_server(free_port()) as srv:
        results = sync_files([path], srv.ws, progress=False)
        assert [(r.uploaded, r.error) for r in results] == [(20, "")]
        assert _stored_steps(srv, "cut") == (list(range(20)), 20)
    torn = [r.getMessage() for r in caplog.records if "incomplete" in r.getMessage()]
    assert len(torn) == 1


def test_large_spill_backlog_is_read_back_in_order(tmp_path):
    port = free_port()
    hello = Hello(run="backlog", seq=0, instruments=())
    transport = WebSocketTransport(
        f"ws://127.0.0.1:{port}/v1/agent", hello, spill_dir=tmp_path, options=FAST
    )
    # 3 MB of ordinary frames and one frame larger than a read-back slice (1 MiB).
    small = Array("<f8", (256,), bytes(range(256)) * 8)
    # 1.6 MB in four arrays: each within the server's 65,536 elements per array.
    part = Array("<f8", (50_000,), bytes(400_000))
    big = {f"h{i}": part for i in range(1, 4)}
    for seq in range(1, 1501):
        values = {"loss": float(seq), "h": part if seq == 700 else small}
        if seq == 700:
            values.update(big)
        transport.send(Readings("backlog", seq, seq - 1, 0.0, values))
        if seq % 200 == 0:
            time.sleep(0.02)  # let the packer keep up, as a training loop would
    deadline = time.monotonic() + 10
    while transport.stats.spilled < 1500 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert transport.stats.spilled == 1500 and transport.stats.state == "offline"
    with live_server(port) as srv:
        assert wait_delivered(transport, 30)
        transport.close(5)
        stored = srv.store.get("backlog")
        series = stored.series[("loss", "total")]
        assert [int(s) for s in series.view(None, None).step] == list(range(1500))
        assert series.count == 1500
        assert stored.histograms["h"].last(1)[0].step == 1499
    assert transport.stats.dropped == 0 and transport.stats.acked == 1500


def test_unwritable_spill_folder_drops_counted_and_training_finishes(
    torch_threads, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.WARNING, logger="glasscockpit.agent")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the spill folder should be")
    monkeypatch.setenv("GLASSCOCKPIT_SPILL_DIR", str(blocker))
    cockpit = _cockpit("nodisk", f"ws://127.0.0.1:{free_port()}")
    _train(cockpit, range(20))
    cockpit.close()
    s = cockpit.stats
    assert s.dropped == 21 and s.spilled == 0 and s.pending == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot write the spill file" in m for m in messages) == 1
    # One warning per reason: the packer's failed spill, and (when close() wins the
    # race against the packer under load) close()'s own failed save.
    assert 1 <= sum("is dropping frames" in m for m in messages) <= 2
    assert len(messages) <= 5, messages  # per state change or reason, not per step
