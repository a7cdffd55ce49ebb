"""GLASSCOCKPIT_FSYNC=true: acks wait for a group commit, not one fsync a frame."""

from __future__ import annotations

import os

from websockets.sync.client import connect

from glasscockpit.protocol import Hello, decode, encode
from glasscockpit.server.framelog import read_records
from tests.conftest import free_port
from tests.server.harness import live_server
from tests.server.test_persist import SPECS, frames_of


def test_fsync_acks_every_frame_with_far_fewer_syncs(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:  # the real call, counted
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    frames = frames_of("durable", 500)
    with live_server(free_port(), data_dir=tmp_path, fsync=True) as s:
        with connect(s.ws + "/v1/agent", compression=None) as ws:
            ws.send(encode(Hello("durable", 0, SPECS)))
            assert decode(ws.recv(timeout=5)).seq == 0
            for f in frames:  # back to back, like an agent with a backlog
                ws.send(encode(f))
            acked = 0
            while acked < 500:
                acked = max(acked, decode(ws.recv(timeout=10)).seq)
        log = tmp_path / "durable.frames"
        assert len(read_records(log)[0]) == 501
        # Each ack waited for a sync (the hello's too); one sync covered many.
        assert 1 <= len(synced) < 100
        assert max(synced) == log.stat().st_size
