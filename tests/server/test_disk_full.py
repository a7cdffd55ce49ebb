"""A full disk refuses frames (retryable), never acknowledges a torn record.

Two real ways to fill a disk: a small tmpfs (needs root to mount; skipped
otherwise) and a file size limit (``RLIMIT_FSIZE``: the kernel answers EFBIG after
a short write, exactly like a disk filling up mid-record), which works anywhere.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from glasscockpit.protocol import Hello, Readings, decode, encode
from glasscockpit.server.framelog import read_records
from tests.conftest import free_port
from tests.server.harness import live_server
from tests.server.test_persist import SPECS, frames_of


def get(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=5) as r:
        out: dict = json.loads(r.read())
        return out


def pump(ws_url: str, run: str, frames: list[Readings]) -> tuple[int, int | None, str]:
    """Send a hello, then frames one by one until refused.

    Returns the newest acknowledged seq and the close code and reason (None when
    every frame was acknowledged).
    """
    with connect(ws_url + "/v1/agent", compression=None) as ws:
        ws.send(encode(Hello(run, 0, SPECS, {"instance": "one"})))
        acked = decode(ws.recv(timeout=5)).seq
        try:
            for f in frames:
                if f.seq <= acked:
                    continue
                ws.send(encode(f))
                acked = decode(ws.recv(timeout=5)).seq
                assert acked == f.seq
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return acked, exc.rcvd.code, exc.rcvd.reason
    return acked, None, ""


@contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def whole(log: Path) -> int:
    """Records in a log, asserting it holds no torn tail."""
    frames, end = read_records(log)
    assert end == log.stat().st_size, "a torn record was left in the log"
    return len(frames)


def test_a_full_tmpfs_refuses_with_1013_and_loses_no_acknowledged_frame(tmp_path):
    frames = frames_of("full", 400)
    with tmpfs(tmp_path / "disk", 128 * 1024) as disk:
        filler = disk / "filler"
        filler.write_bytes(bytes(100 * 1024))
        data = disk / "data"
        with live_server(free_port(), data_dir=data) as s:
            acked, code, reason = pump(s.ws, "full", frames)
            assert code == 1013, reason  # try again later: the agent keeps it
            assert "No space left" in reason
            assert 0 < acked < 400
            assert whole(data / "full.frames") == 1 + acked
            metrics = get(s.http, "/v1/metrics")
            assert metrics["counters"]["rejected.disk_full"] == 1
            assert metrics["log_bytes"] == (data / "full.frames").stat().st_size
            # Retrying while the disk is still full: refused again, nothing torn.
            again, code, _ = pump(s.ws, "full", frames)
            assert (again, code) == (acked, 1013)
            filler.unlink()  # room again: the agent's retry gets everything in
            done, code, _ = pump(s.ws, "full", frames)
            assert (done, code) == (400, None)
            served = get(s.http, "/v1/runs/full/series/loss")["step"]
        with live_server(free_port(), data_dir=data) as s:
            assert get(s.http, "/v1/runs/full/series/loss")["step"] == served
            assert served == list(range(400))


def _limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_file_size_limit_mid_record_is_rolled_back_and_refused(tmp_path):
    frames = frames_of("capped", 200)
    port = free_port()
    cmd = [sys.executable, "-m", "glasscockpit", "serve", "--port", str(port)]
    env = {**os.environ, "GLASSCOCKPIT_DATA_DIR": str(tmp_path)}
    limit = 10_000 + 37  # lands inside some record, whatever their size
    proc = subprocess.Popen(
        cmd,
        env=env,
        preexec_fn=lambda: _limit_file_size(limit),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                get(base, "/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        acked, code, reason = pump(f"ws://127.0.0.1:{port}", "capped", frames)
        assert code == 1013, reason
        assert "File too large" in reason
        assert whole(tmp_path / "capped.frames") == 1 + acked
        assert (tmp_path / "capped.frames").stat().st_size <= limit
    finally:
        proc.kill()
        proc.wait()
    with live_server(free_port(), data_dir=tmp_path) as s:
        assert get(s.http, "/v1/runs/capped/series/loss")["step"] == list(range(acked))
        done, code, _ = pump(s.ws, "capped", frames)
        assert (done, code) == (200, None)
        assert get(s.http, "/v1/runs/capped/series/loss")["step"] == list(range(200))
