"""A frame the store cannot hold never reaches the log; replay always starts."""

from __future__ import annotations

import json
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from glasscockpit.protocol import Ack, Array, Hello, Readings, decode, encode
from glasscockpit.server.errors import LimitExceeded
from glasscockpit.server.framelog import FrameLogs, read_records
from glasscockpit.server.store import RunStore
from tests.conftest import free_port
from tests.server.harness import live_server, server_subprocess
from tests.server.test_persist import SPECS, frames_of

POISON = [(2**62, 0), (0, 2**40), (2**31, 2**31, 0), (0, 0, 2**62)]


def get(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=5) as r:
        out: dict = json.loads(r.read())
        return out


def array_frame(run: str, seq: int, shape: tuple[int, ...]) -> Readings:
    return Readings(run, seq, seq - 1, 1.0, {"hist": Array("<f4", shape, b"")})


@pytest.mark.parametrize("shape", POISON)
def test_a_zero_size_array_with_a_huge_dimension_is_refused(shape):
    store = RunStore()
    store.ingest(Hello("p", 0, SPECS))
    with pytest.raises(LimitExceeded, match="MAX_ARRAY_ELEMENTS"):
        store.ingest(array_frame("p", 1, shape))
    assert store.runs["p"].frames == 0  # nothing of it stored
    assert not store.runs["p"].histograms


def test_empty_arrays_of_sane_shape_are_still_stored():
    store = RunStore()
    store.ingest(Hello("e", 0, SPECS))
    assert store.ingest(array_frame("e", 1, (0,)))
    assert store.ingest(array_frame("e", 2, (3, 0)))
    assert len(store.runs["e"].histograms["hist"]) == 2


def test_the_poison_frame_is_refused_before_the_log_and_the_server_restarts(tmp_path):
    with live_server(free_port(), data_dir=tmp_path) as s:
        with connect(s.ws + "/v1/agent", compression=None) as ws:
            ws.send(encode(Hello("p", 0, SPECS)))
            assert decode(ws.recv(timeout=5)) == Ack("p", 0)
            ws.send(encode(frames_of("p", 1)[0]))
            assert decode(ws.recv(timeout=5)) == Ack("p", 1)
            with pytest.raises(ConnectionClosed) as closed:
                ws.send(encode(array_frame("p", 2, (2**62, 0))))
                ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    frames, _ = read_records(tmp_path / "p.frames")
    assert len(frames) == 2  # hello and the good frame only
    port = free_port()
    with server_subprocess(port, data_dir=str(tmp_path)):
        base = f"http://127.0.0.1:{port}"
        assert get(base, "/v1/runs/p/series/loss")["step"] == [0]


def test_replay_skips_records_it_cannot_apply_and_starts(tmp_path):
    # A log written by an older version that checked less: the poison record sits
    # between good ones. The server must start, serve the rest, and say so.
    logs = FrameLogs(tmp_path)
    good = frames_of("old", 3)
    for f in [Hello("old", 0, SPECS), good[0], array_frame("old", 2, (2**62, 0))]:
        logs.append("old", encode(f))
    for f in frames_of("old", 2, start=3):
        logs.append("old", encode(f))
    logs.append("old", b"\x93not a frame")
    logs.close()
    port = free_port()
    with server_subprocess(port, data_dir=str(tmp_path)):
        base = f"http://127.0.0.1:{port}"
        assert get(base, "/v1/runs/old/series/loss")["step"] == [0, 2, 3]
        counters = get(base, "/v1/metrics")["counters"]
        assert counters["replay.rejected_frames"] == 2
        assert counters["replay.frames"] == 4
