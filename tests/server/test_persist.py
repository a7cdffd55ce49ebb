"""Restart without loss: frame logs on disk, replayed by the next server."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect

from glasscockpit.protocol import (
    Ack,
    Array,
    Bye,
    Hello,
    InstrumentSpec,
    Kind,
    PanelSpec,
    Readings,
    decode,
    encode,
)
from glasscockpit.server.framelog import FrameLogs, read_records, record
from glasscockpit.server.store import RunStore
from tests.conftest import free_port
from tests.server.harness import live_server, server_subprocess

SPECS = (
    InstrumentSpec("loss", Kind.SCALAR, PanelSpec("Loss")),
    InstrumentSpec("grad_norm", Kind.PER_LAYER, PanelSpec("Grad norm")),
    InstrumentSpec("hist", Kind.HISTOGRAM, PanelSpec("Hist")),
)


def get(base: str, path: str) -> object:
    with urllib.request.urlopen(base + path, timeout=5) as r:
        return json.loads(r.read())


def frames_of(run: str, n: int, start: int = 1) -> list[Readings]:
    counts = Array("<f4", (4,), bytes(16))
    return [
        Readings(
            run,
            seq,
            step=seq - 1,
            wall_time=float(seq),
            values={
                "loss": float("nan") if seq == 3 else 1.0 / seq,
                "grad_norm": {"total": float(seq), "fc.weight": 2.0 * seq},
                "hist": counts,
            },
        )
        for seq in range(start, start + n)
    ]


def send(ws_url: str, run: str, frames: list, hello: bool = True) -> None:
    with connect(ws_url + "/v1/agent", compression=None) as ws:
        acked = -1
        if hello:
            ws.send(encode(Hello(run, 0, SPECS, {"lr": 0.1})))
            # The hello's ack names the newest frame the server already holds.
            acked = decode(ws.recv(timeout=5)).seq
        for f in frames:
            ws.send(encode(f))
            if f.seq > acked:  # frames the hello's ack covered get no ack of their own
                assert decode(ws.recv(timeout=5)) == Ack(run, f.seq)
                acked = f.seq


def everything(base: str, run: str) -> dict:
    """What clients can read about a run, minus times that legitimately change."""
    data = get(base, f"/v1/runs/{run}/export.json")
    assert isinstance(data, dict)
    for key in ("created", "last_frame_time", "status"):
        data["run"].pop(key)
    return data


def test_a_restarted_server_serves_everything_it_acked(tmp_path):
    port = free_port()
    with live_server(port, data_dir=tmp_path) as s:
        send(s.ws, "kept", [*frames_of("kept", 20), Bye("kept", 21)])
        send(s.ws, "open", frames_of("open", 5))
        before = {r: everything(s.http, r) for r in ("kept", "open")}
        csv_before = urllib.request.urlopen(s.http + "/v1/runs/kept/export.csv").read()
    with live_server(free_port(), data_dir=tmp_path) as s:
        assert {r: everything(s.http, r) for r in ("kept", "open")} == before
        assert urllib.request.urlopen(s.http + "/v1/runs/kept/export.csv").read() == (
            csv_before
        )
        runs = {r["run"]: r["status"] for r in get(s.http, "/v1/runs")}  # type: ignore[union-attr]
        assert runs == {"kept": "finished", "open": "stale"}
        counters = get(s.http, "/v1/metrics")["counters"]  # type: ignore[index]
        assert counters["replay.frames"] == 2 + 21 + 5
        assert counters["replay.runs"] == 2
        # The agent of "open" reconnects, resends its unacked tail and goes on.
        send(s.ws, "open", frames_of("open", 5, start=4))
        series = get(s.http, "/v1/runs/open/series/loss")
        assert series["step"] == list(range(8))  # type: ignore[index]


def test_a_torn_last_record_is_skipped_and_the_log_stays_usable(tmp_path):
    with live_server(free_port(), data_dir=tmp_path) as s:
        send(s.ws, "torn", frames_of("torn", 6))
    log = tmp_path / "torn.frames"
    whole = log.stat().st_size
    # A crash in the middle of a write: half of the next record reached the disk.
    log.write_bytes(log.read_bytes() + record(encode(frames_of("torn", 1, 7)[0]))[:25])
    with live_server(free_port(), data_dir=tmp_path) as s:
        assert get(s.http, "/v1/runs/torn/series/loss")["step"] == list(range(6))  # type: ignore[index]
        counters = get(s.http, "/v1/metrics")["counters"]  # type: ignore[index]
        assert counters["replay.torn_bytes"] == 25
        assert log.stat().st_size == whole  # cut back to the last whole record
        send(s.ws, "torn", frames_of("torn", 2, start=7))
    with live_server(free_port(), data_dir=tmp_path) as s:
        assert get(s.http, "/v1/runs/torn/series/loss")["step"] == list(range(8))  # type: ignore[index]


def test_a_corrupt_record_ends_the_replay_there(tmp_path):
    logs = FrameLogs(tmp_path)
    for f in [Hello("c", 0, SPECS), *frames_of("c", 4)]:
        logs.append("c", encode(f))
    logs.close()
    blob = bytearray((tmp_path / "c.frames").read_bytes())
    frames, end = read_records(tmp_path / "c.frames")
    assert (len(frames), end) == (5, len(blob))
    third = sum(8 + len(f) for f in frames[:3])
    blob[third + 8] ^= 0xFF  # flip a byte inside the fourth record
    (tmp_path / "c.frames").write_bytes(bytes(blob))
    store = RunStore(logs=FrameLogs(tmp_path))
    stats = store.replay(2**20)
    assert stats["replay.frames"] == 3
    assert stats["replay.torn_bytes"] == len(blob) - third
    assert store.runs["c"].last_seq == 2


def test_delete_and_eviction_remove_the_log(tmp_path):
    with live_server(free_port(), data_dir=tmp_path, max_runs=2) as s:
        send(s.ws, "first", [*frames_of("first", 2), Bye("first", 3)])
        send(s.ws, "second", [*frames_of("second", 2), Bye("second", 3)])
        send(s.ws, "third", frames_of("third", 2))  # evicts "first"
        assert not (tmp_path / "first.frames").exists()
        req = urllib.request.Request(s.http + "/v1/runs/second", method="DELETE")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.loads(r.read()) == {"deleted": "second"}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["third.frames"]
        metrics = get(s.http, "/v1/metrics")
        assert metrics["runs_evicted"] == 1  # type: ignore[index]
    with live_server(free_port(), data_dir=tmp_path, max_runs=2) as s:
        assert [r["run"] for r in get(s.http, "/v1/runs")] == ["third"]  # type: ignore[union-attr]


def test_raw_frame_log_export_reads_back_the_acked_frames(tmp_path):
    sent = [Hello("raw", 0, SPECS, {"lr": 0.1}), *frames_of("raw", 4)]
    with live_server(free_port(), data_dir=tmp_path) as s:
        send(s.ws, "raw", sent[1:])
        with urllib.request.urlopen(s.http + "/v1/runs/raw/frames", timeout=5) as r:
            assert r.headers["content-type"] == "application/octet-stream"
            blob = r.read()
    out = tmp_path / "export.frames"
    out.write_bytes(blob)
    frames, end = read_records(out)
    assert end == len(blob)
    # The log holds the exact bytes the agent sent, in order (encode is deterministic).
    assert frames == [encode(f) for f in sent]


def test_frames_export_without_data_dir_is_a_404_with_a_reason():
    with live_server(free_port()) as s:
        send(s.ws, "mem", frames_of("mem", 1))
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(s.http + "/v1/runs/mem/frames", timeout=5)
        assert info.value.code == 404
        assert "GLASSCOCKPIT_DATA_DIR" in json.loads(info.value.read())["detail"]
        info.value.close()


def test_sigkill_mid_run_loses_no_frame_with_the_agents_resend(tmp_path: Path):
    """A real agent transport keeps sending while the server is SIGKILLed."""
    from glasscockpit.agent.transport.websocket import (
        TransportOptions,
        WebSocketTransport,
        wait_delivered,
    )

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    hello = Hello("survivor", 0, SPECS, {"lr": 0.1})
    n = 300
    with server_subprocess(port, data_dir=str(tmp_path)) as proc:
        transport = WebSocketTransport(
            f"ws://127.0.0.1:{port}/v1/agent",
            hello,
            spill_dir=tmp_path / "spill",
            options=TransportOptions(backoff=(0.05, 0.2)),
        )
        frames = frames_of("survivor", n)
        for f in frames[:100]:
            transport.send(f)
        assert wait_delivered(transport, 20)
        sender = threading.Thread(
            target=lambda: [
                (transport.send(f), time.sleep(0.002)) for f in frames[100:]
            ]
        )
        sender.start()
        time.sleep(0.1)
        proc.kill()  # no graceful shutdown: only what reached the log survives
        proc.wait()
    with server_subprocess(port, data_dir=str(tmp_path)):
        sender.join(30)
        assert wait_delivered(transport, 30), transport.stats
        transport.close(5)
        assert transport.stats.dropped == 0
        assert transport.stats.reconnects >= 1
        series = get(base, "/v1/runs/survivor/series/loss?max_points=100000")
        assert series["step"] == list(range(n))  # type: ignore[index]
        assert series["count"] == n  # type: ignore[index]


def test_lowering_max_runs_evicts_at_replay_and_deletes_those_logs(tmp_path):
    logs = FrameLogs(tmp_path)
    for i in range(4):
        for f in [Hello(f"r{i}", 0, SPECS), *frames_of(f"r{i}", 2), Bye(f"r{i}", 3)]:
            logs.append(f"r{i}", encode(f))
        logs.close()
        time.sleep(0.01)  # replay order follows modification times
    store = RunStore(max_runs=2, logs=FrameLogs(tmp_path))
    stats = store.replay(2**20)
    assert stats["replay.runs"] == 4
    assert sorted(store.runs) == ["r2", "r3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r2.frames", "r3.frames"]


def test_a_full_run_log_refuses_frames_and_every_acked_frame_survives(tmp_path):
    from websockets.exceptions import ConnectionClosed

    hello = encode(Hello("capped", 0, SPECS, {"lr": 0.1}))
    frames = frames_of("capped", 15)
    room = 8 + len(hello) + sum(8 + len(encode(f)) for f in frames[:10])
    acked = []
    with live_server(free_port(), data_dir=tmp_path, max_log_bytes_per_run=room) as s:
        with connect(s.ws + "/v1/agent", compression=None) as ws:
            ws.send(hello)
            ws.recv(timeout=5)
            with pytest.raises(ConnectionClosed) as closed:
                for f in frames:
                    ws.send(encode(f))
                    acked.append(decode(ws.recv(timeout=5)).seq)
        assert acked == list(range(1, 11))  # the 11th frame is refused, not acked
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008  # resending cannot help
        assert "GLASSCOCKPIT_MAX_LOG_BYTES_PER_RUN" in closed.value.rcvd.reason
        metrics = get(s.http, "/v1/metrics")
        assert metrics["counters"]["rejected.log_full"] == 1  # type: ignore[index]
        assert metrics["log_bytes"] == (tmp_path / "capped.frames").stat().st_size  # type: ignore[index]
        assert metrics["log_bytes"] == room  # type: ignore[index]
        # The run can still be finished: bye frames are exempt from the cap.
        send(s.ws, "capped", [Bye("capped", 11)])
        steps = get(s.http, "/v1/runs/capped/series/loss")["step"]  # type: ignore[index]
        assert steps == list(range(10))
    with live_server(free_port(), data_dir=tmp_path) as s:
        assert get(s.http, "/v1/runs/capped/series/loss")["step"] == steps  # type: ignore[index]
        assert get(s.http, "/v1/runs/capped")["status"] == "finished"  # type: ignore[index]


def test_full_logs_refuse_with_try_again_later_until_a_run_is_deleted(tmp_path):
    from glasscockpit.server.errors import Rejected

    one = 8 + len(encode(frames_of("a", 1)[0]))
    hello = 8 + len(encode(Hello("a", 0, SPECS)))
    cap = 2 * hello + 5 * one
    store = RunStore(logs=FrameLogs(tmp_path, max_total_bytes=cap))
    for run in ("a", "b"):
        store.ingest(Hello(run, 0, SPECS), raw=encode(Hello(run, 0, SPECS)))
    for f in frames_of("a", 4):
        store.ingest(f, raw=encode(f))
    extra = frames_of("b", 2)
    store.ingest(extra[0], raw=encode(extra[0]))  # the 5th frame fits exactly
    with pytest.raises(Rejected) as refused:
        store.ingest(extra[1], raw=encode(extra[1]))
    assert (refused.value.reason, refused.value.ws_code) == ("log_full", 1013)
    assert "GLASSCOCKPIT_MAX_LOG_BYTES=" in str(refused.value)
    assert store.runs["b"].last_seq == 1  # nothing of the refused frame is stored
    assert store.logs is not None and store.logs.total == cap
    assert sum(p.stat().st_size for p in tmp_path.glob("*.frames")) == cap
    store.delete("a")
    store.ingest(extra[1], raw=encode(extra[1]))
    assert store.runs["b"].last_seq == 2
    store.logs.close()
    # A restarted server counts what is on disk against the cap.
    assert FrameLogs(tmp_path).total == store.logs.total == hello + 2 * one
