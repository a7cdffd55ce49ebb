"""Ingest over a real websocket to a real server: acks, idempotency, rejections."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import msgpack
import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from glasscockpit.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Bye,
    Hello,
    InstrumentSpec,
    Kind,
    PanelSpec,
    Readings,
    decode,
    encode,
)
from tests.conftest import free_port
from tests.server.harness import LiveServer, live_server

SPEC = InstrumentSpec("loss", Kind.SCALAR, PanelSpec("Loss"), "every step")


@pytest.fixture(scope="module")
def server():
    with live_server(free_port(), max_frame_bytes=4096) as s:
        yield s


def get(server: LiveServer, path: str, token: str | None = None):
    req = urllib.request.Request(server.http + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def hello(run: str) -> Hello:
    return Hello(run=run, seq=0, instruments=(SPEC,), meta={"model": "mlp"})


def reading(run: str, seq: int, value: float = 1.0) -> Readings:
    return Readings(run, seq, step=seq - 1, wall_time=1.0, values={"loss": value})


def test_frames_are_stored_and_acked(server):
    with connect(server.ws + "/v1/agent", compression=None) as ws:
        ws.send(encode(hello("acked")))
        assert decode(ws.recv(timeout=5)) == Ack("acked", 0)
        for seq in range(1, 6):
            ws.send(encode(reading("acked", seq, float(seq))))
            assert decode(ws.recv(timeout=5)) == Ack("acked", seq)
        ws.send(encode(Bye("acked", 6)))
        assert decode(ws.recv(timeout=5)) == Ack("acked", 6)
    series = get(server, "/v1/runs/acked/series/loss")
    assert series["step"] == [0, 1, 2, 3, 4]
    assert series["value"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    runs = {r["run"]: r for r in get(server, "/v1/runs")}
    assert runs["acked"]["status"] == "finished"


def test_resent_frames_are_stored_once(server):
    for attempt in range(2):  # the second connection resends everything
        with connect(server.ws + "/v1/agent", compression=None) as ws:
            ws.send(encode(hello("dup")))
            # The hello's ack says what is already stored: nothing, then seq 3.
            acked = decode(ws.recv(timeout=5)).seq
            assert acked == (0 if attempt == 0 else 3)
            for seq in range(1, 4):
                ws.send(encode(reading("dup", seq)))
                if seq > acked:
                    assert decode(ws.recv(timeout=5)).seq == seq
    assert get(server, "/v1/runs/dup/series/loss")["step"] == [0, 1, 2]
    assert get(server, "/v1/metrics")["counters"]["frames.duplicate"] >= 3


def test_nan_and_inf_are_stored_and_served_json_safe(server):
    with connect(server.ws + "/v1/agent", compression=None) as ws:
        ws.send(encode(hello("nan")))
        ws.recv(timeout=5)
        for seq, v in enumerate(
            [1.0, float("nan"), float("inf"), -float("inf")], start=1
        ):
            ws.send(encode(reading("nan", seq, v)))
            ws.recv(timeout=5)
    assert get(server, "/v1/runs/nan/series/loss")["value"] == [
        1.0,
        "NaN",
        "Infinity",
        "-Infinity",
    ]


def _rejected(server: LiveServer, frames: list[bytes | str]) -> ConnectionClosedError:
    with connect(server.ws + "/v1/agent", compression=None) as ws:
        for f in frames[:-1]:
            ws.send(f)
            ws.recv(timeout=5)
        ws.send(frames[-1])
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=5)
    return info.value


@pytest.mark.parametrize(
    ("frames", "code", "reason"),
    [
        ([b"\xc1garbage"], 1007, "Not a msgpack frame"),
        (["text"], 1003, "binary msgpack"),
        (
            [msgpack.packb({"v": 99, "t": "hello", "run": "r", "seq": 0})],
            1002,
            "version 99",
        ),
        ([encode(reading("early", 1))], 1007, "first frame"),
        (
            [encode(hello("a")), encode(reading("b", 1))],
            1007,
            "on the connection of 'a'",
        ),
        (
            [
                msgpack.packb(
                    {"v": PROTOCOL_VERSION, "t": "hello", "run": "x" * 10_000, "seq": 0}
                )
            ],
            1009,
            "exceeds",
        ),
        (
            [
                msgpack.packb(
                    {
                        "v": PROTOCOL_VERSION,
                        "t": "hello",
                        "run": "../../x",
                        "seq": 0,
                        "instruments": [],
                        "meta": {},
                    }
                )
            ],
            1007,
            "Invalid run id",
        ),
    ],
    ids=[
        "bad-msgpack",
        "text-frame",
        "wrong-version",
        "no-hello",
        "run-switch",
        "oversized",
        "path-like-run",
    ],
)
def test_bad_frames_close_with_specific_code_and_reason(server, frames, code, reason):
    closed = _rejected(server, frames)
    assert closed.rcvd is not None
    assert closed.rcvd.code == code
    assert reason in closed.rcvd.reason
    # ... and the server keeps serving other runs.
    assert get(server, "/healthz") == {"status": "ok"}


def test_wrong_token_is_refused_before_accept():
    with live_server(free_port(), token="s3cret") as s:
        with pytest.raises(InvalidStatus) as info:
            connect(
                s.ws + "/v1/agent", additional_headers={"Authorization": "Bearer nope"}
            )
        assert info.value.response.status_code == 403
        with pytest.raises(urllib.error.HTTPError) as http:
            get(s, "/v1/runs")
        assert http.value.code == 401
        http.value.close()
        assert get(s, "/v1/runs", token="s3cret") == []
        with connect(
            s.ws + "/v1/agent", additional_headers={"Authorization": "Bearer s3cret"}
        ) as ws:
            ws.send(encode(hello("authed")))
            assert decode(ws.recv(timeout=5)) == Ack("authed", 0)


def test_unknown_run_is_a_404_with_a_reason(server):
    with pytest.raises(urllib.error.HTTPError) as info:
        get(server, "/v1/runs/nope")
    assert info.value.code == 404
    assert "No run 'nope'" in json.loads(info.value.read())["detail"]
    info.value.close()
