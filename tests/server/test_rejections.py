"""Every rejection path over real websockets: specific code, reason and counter.

A bystander agent stays connected to the same server the whole time and must keep
getting its frames stored and acknowledged after every rejection.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import msgpack
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from glasscockpit.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Array,
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

SPEC = InstrumentSpec("loss", Kind.SCALAR, PanelSpec("Loss"))
V = PROTOCOL_VERSION


def get(server: LiveServer, path: str) -> object:
    with urllib.request.urlopen(server.http + path, timeout=5) as r:
        return json.loads(r.read())


def counters(server: LiveServer) -> dict[str, int]:
    metrics = get(server, "/v1/metrics")
    assert isinstance(metrics, dict)
    return metrics["counters"]


def hello(run: str, **meta: object) -> bytes:
    return encode(Hello(run=run, seq=0, instruments=(SPEC,), meta=dict(meta)))


def reading(run: str, seq: int, **fields: object) -> bytes:
    """A readings frame; ``fields`` override wire fields with anything, even junk."""
    values = fields.pop("values", {"loss": 1.0})
    if any(isinstance(v, Array) for v in values.values()):  # type: ignore[attr-defined]
        frame = Readings(run, seq, step=seq - 1, wall_time=1.0, values=values)  # type: ignore[arg-type]
    else:
        frame = Readings(run, seq, step=seq - 1, wall_time=1.0, values={})
        fields["values"] = values
    body = msgpack.unpackb(encode(frame), raw=False, ext_hook=msgpack.ExtType)
    body.update(fields)
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def raw(**body: object) -> bytes:
    packed: bytes = msgpack.packb(
        {"v": V, "seq": 0, "run": "r", **body}, use_bin_type=True
    )
    return packed


def arr(n: int) -> Array:
    return Array("<f4", (n,), bytes(4 * n))


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server(
        free_port(),
        max_frame_bytes=64 * 1024,
        max_instruments=4,
        max_keys=3,
        max_array_elements=100,
        max_meta_bytes=200,
    ) as s:
        yield s


@pytest.fixture(scope="module")
def bystander(server: LiveServer) -> Iterator[list]:
    """A connected agent of another run: [connection, next seq]."""
    with connect(server.ws + "/v1/agent", compression=None) as ws:
        ws.send(hello("bystander"))
        assert decode(ws.recv(timeout=5)) == Ack("bystander", 0)
        yield [ws, 1]


def still_served(server: LiveServer, bystander: list) -> None:
    ws: ClientConnection = bystander[0]
    seq = bystander[1]
    ws.send(encode(Readings("bystander", seq, seq, 1.0, {"loss": float(seq)})))
    assert decode(ws.recv(timeout=5)) == Ack("bystander", seq)
    bystander[1] += 1
    series = get(server, "/v1/runs/bystander/series/loss")
    assert isinstance(series, dict)
    assert series["value"] == [float(s) for s in range(1, seq + 1)]


def closed_by(server: LiveServer, frames: list[bytes | str]) -> tuple[int, str]:
    """Send frames (each but the last acked); the close code and reason."""
    with connect(server.ws + "/v1/agent", compression=None, max_size=None) as ws:
        for f in frames[:-1]:
            ws.send(f)
            assert isinstance(decode(ws.recv(timeout=5)), Ack)
        with pytest.raises(ConnectionClosed) as info:
            ws.send(frames[-1])
            ws.recv(timeout=10)
    rcvd = info.value.rcvd
    assert rcvd is not None, "the server must close with a code and a reason"
    return rcvd.code, rcvd.reason


CASES = {
    "bad-msgpack": ([b"\xc1\xc1garbage"], 1007, "bad_msgpack", "Not a msgpack frame"),
    "truncated-msgpack": ([hello("t")[:-3]], 1007, "bad_msgpack", "Not a msgpack"),
    "not-a-map": ([msgpack.packb([1, 2, 3])], 1007, "schema", "must be a map"),
    "text-frame": (["hello"], 1003, "text_frame", "binary msgpack"),
    "wrong-version": ([raw(v=99, t="hello")], 1002, "version", "version 99"),
    "version-as-string": ([raw(v="1", t="hello")], 1007, "schema", "'v' must be int"),
    "unknown-type": ([raw(t="launch")], 1007, "schema", "Unknown frame type"),
    "missing-field": ([raw(t="hello", meta={})], 1007, "schema", "'instruments'"),
    "wrong-type": (
        [raw(t="hello", instruments={}, meta={})],
        1007,
        "schema",
        "'instruments' must be list",
    ),
    "unknown-extension": (
        [raw(t="hello", instruments=[], meta={"x": msgpack.ExtType(7, b"")})],
        1007,
        "schema",
        "extension type 7",
    ),
    "bad-array": (
        [
            hello("ba"),
            reading(
                "ba",
                1,
                values={"loss": msgpack.ExtType(1, b"\x93\xa3<f4\x91\x02\xc4\x01x")},
            ),
        ],
        1007,
        "schema",
        "array",
    ),
    "no-hello": ([reading("early", 1)], 1007, "no_hello", "first frame"),
    "run-switch": (
        [hello("a"), reading("b", 1)],
        1007,
        "run_switch",
        "on the connection of 'a'",
    ),
    "ack-from-agent": ([hello("k"), encode(Ack("k", 1))], 1007, "schema", "ack"),
    "oversized": ([raw(t="hello", run="x" * 70_000)], 1009, "too_large", "exceeds"),
    "nan-wall-time": (
        [hello("nw"), reading("nw", 1, wall_time=float("nan"))],
        1007,
        "nonfinite",
        "wall_time must be finite",
    ),
    "inf-wall-time": (
        [hello("iw"), reading("iw", 1, wall_time=float("inf"))],
        1007,
        "nonfinite",
        "wall_time must be finite",
    ),
    "nan-as-step": (
        [hello("ns"), reading("ns", 1, step=float("nan"))],
        1007,
        "schema",
        "'step' must be int",
    ),
    "nan-as-seq": ([raw(t="hello", seq=float("nan"))], 1007, "schema", "'seq' must"),
    "nan-as-key": (
        [hello("nk"), reading("nk", 1, values={"loss": {1.5: 2.0}})],
        1007,
        "bad_msgpack",
        "",
    ),
    "string-reading": (
        [hello("sr"), reading("sr", 1, values={"loss": "NaN"})],
        1007,
        "schema",
        "must be a number",
    ),
    "negative-step": (
        [hello("neg"), reading("neg", 1, step=-5)],
        1007,
        "schema",
        "out of [0, 2**53]",
    ),
    "huge-seq": ([hello("hs"), reading("hs", 2**60)], 1007, "schema", "2**53"),
    "bytes-in-meta": (
        [raw(t="hello", instruments=[], meta={"blob": b"\x00"})],
        1007,
        "schema",
        "metadata",
    ),
    "meta-too-big": ([hello("mb", notes="x" * 500)], 1008, "limit", "META_BYTES"),
    "too-many-instruments": (
        [hello("ti"), reading("ti", 1, values={str(i): 1.0 for i in range(6)})],
        1008,
        "limit",
        "MAX_INSTRUMENTS",
    ),
    "too-many-keys": (
        [hello("tk"), reading("tk", 1, values={"g": dict.fromkeys("abcd", 1.0)})],
        1008,
        "limit",
        "MAX_KEYS",
    ),
    "array-too-big": (
        [hello("ab"), reading("ab", 1, values={"h": arr(101)})],
        1008,
        "limit",
        "MAX_ARRAY_ELEMENTS",
    ),
}
PATH_LIKE = [
    "../../etc/passwd",
    "..",
    "a/../b",
    "/abs",
    "a\\b",
    ".hidden",
    "run\x00",
    "run id",
    "r" * 129,
    "",
]


@pytest.mark.parametrize(
    ("frames", "code", "reason", "text"), CASES.values(), ids=CASES
)
def test_bad_frame_closes_with_specific_code_reason_and_counter(
    server, bystander, frames, code, reason, text
):
    before = counters(server).get(f"rejected.{reason}", 0)
    got_code, got_text = closed_by(server, frames)
    assert (got_code, reason) == (code, reason)
    assert text in got_text
    assert counters(server)[f"rejected.{reason}"] == before + 1
    still_served(server, bystander)


@pytest.mark.parametrize("run_id", PATH_LIKE, ids=range(len(PATH_LIKE)))
def test_path_like_run_ids_are_refused(server, bystander, run_id):
    before = counters(server).get("rejected.run_id", 0)
    code, text = closed_by(
        server, [raw(t="hello", run=run_id, instruments=[], meta={})]
    )
    assert code == 1007
    assert "Invalid run id" in text
    assert counters(server)["rejected.run_id"] == before + 1
    assert all(r["run"] != run_id for r in get(server, "/v1/runs"))  # type: ignore[union-attr]
    still_served(server, bystander)


def test_a_10_mb_run_name_is_refused_by_name_when_the_frame_size_allows_it():
    with live_server(free_port(), max_frame_bytes=16 * 2**20) as s:
        code, text = closed_by(s, [raw(t="hello", run="x" * 10_000_000)])
        assert (code, counters(s)["rejected.run_id"]) == (1007, 1)
        assert text.startswith("Invalid run id 'xxxx")
        assert len(text.encode()) <= 123
        assert get(s, "/healthz") == {"status": "ok"}


def test_a_10_mb_run_name_is_refused_by_size_by_default(bystander, server):
    # Far above ws_max_size: uvicorn refuses it while it is still arriving, so the
    # client may see a reset instead of the close frame; the counter must move.
    before = counters(server).get("rejected.too_large", 0)
    url = server.ws + "/v1/agent"
    with (
        connect(url, compression=None, max_size=None) as ws,
        pytest.raises(ConnectionClosed) as info,
    ):
        ws.send(raw(t="hello", run="x" * 10_000_000))
        ws.recv(timeout=10)
    if info.value.rcvd is not None:
        assert info.value.rcvd.code == 1009
    deadline = time.monotonic() + 5
    while counters(server).get("rejected.too_large", 0) == before:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    still_served(server, bystander)


def test_nan_and_inf_readings_are_stored_not_refused(server):
    with connect(server.ws + "/v1/agent", compression=None) as ws:
        ws.send(hello("nonfinite", lr=float("inf")))
        assert decode(ws.recv(timeout=5)) == Ack("nonfinite", 0)
        values = [float("nan"), float("inf"), -float("inf"), 2.0]
        for seq, v in enumerate(values, start=1):
            ws.send(encode(Readings("nonfinite", seq, seq, 1.0, {"loss": v})))
            assert decode(ws.recv(timeout=5)).seq == seq
    series = get(server, "/v1/runs/nonfinite/series/loss")
    assert series["value"] == ["NaN", "Infinity", "-Infinity", 2.0]  # type: ignore[index]
    detail = get(server, "/v1/runs/nonfinite")
    assert detail["meta"] == {"lr": "Infinity"}  # type: ignore[index]
    assert detail["nonfinite"] == 3  # type: ignore[index]


def test_wrong_token_is_refused_before_accept_and_counted():
    with live_server(free_port(), token="s3cret") as s:
        for headers in (
            {"Authorization": "Bearer nope"},
            {"Authorization": "s3cret"},
            {},
        ):
            with pytest.raises(InvalidStatus) as info:
                connect(s.ws + "/v1/agent", additional_headers=headers)
            assert info.value.response.status_code == 403
        # The token in a query string is not accepted (it would leak into logs).
        with pytest.raises(InvalidStatus):
            connect(s.ws + "/v1/agent?token=s3cret")
        req = urllib.request.Request(
            s.http + "/v1/metrics", headers={"Authorization": "Bearer s3cret"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.loads(r.read())["counters"]["rejected.unauthorized"] == 4
        with connect(
            s.ws + "/v1/agent", additional_headers={"Authorization": "Bearer s3cret"}
        ) as ws:
            ws.send(hello("authed"))
            assert decode(ws.recv(timeout=5)) == Ack("authed", 0)


def test_rate_limit_slows_a_fast_agent_without_losing_frames():
    rate, burst, n = 200.0, 20, 80
    with live_server(free_port(), rate_frames_per_s=rate, rate_burst=burst) as s:
        with connect(s.ws + "/v1/agent", compression=None) as ws:
            ws.send(hello("fast"))
            ws.recv(timeout=5)
            start = time.monotonic()
            for seq in range(1, n + 1):  # pipelined: acks are read afterwards
                ws.send(encode(Readings("fast", seq, seq, 1.0, {"loss": float(seq)})))
            acks = [decode(ws.recv(timeout=10)).seq]
            while acks[-1] < n:  # cumulative acks: one may cover several frames
                acks.append(decode(ws.recv(timeout=10)).seq)
            elapsed = time.monotonic() - start
        assert acks == sorted(set(acks))
        # A lower bound only: the bucket cannot refill faster than its rate.
        assert elapsed >= (n + 1 - burst) / rate * 0.9
        assert counters(s)["ingest.throttled"] > 0
        assert len(get(s, "/v1/runs/fast/series/loss")["step"]) == n  # type: ignore[index]


def test_byte_rate_limit_slows_big_frames_without_losing_them():
    rate, n, size = 100_000.0, 50, 4000
    with (
        live_server(free_port(), rate_bytes_per_s=rate, max_frame_bytes=8192) as s,
        connect(s.ws + "/v1/agent", compression=None) as ws,
    ):
        ws.send(hello("bulky"))
        ws.recv(timeout=5)
        blob = Array("|u1", (size,), bytes(size))
        start = time.monotonic()
        for seq in range(1, n + 1):
            ws.send(encode(Readings("bulky", seq, seq, 1.0, {"h": blob})))
        last = 0
        while last < n:
            last = decode(ws.recv(timeout=10)).seq
        elapsed = time.monotonic() - start
        # Burst of one second's worth (100 kB), then 100 kB/s: a lower bound.
        assert elapsed >= (n * size - rate) / rate * 0.9
        assert counters(s)["ingest.throttled"] > 0
        hist = get(s, "/v1/runs/bulky/histograms/h?last=100")
        assert hist["count"] == n  # type: ignore[index]
