"""Run ids match in full: no trailing newline gets in, every route answers."""

from __future__ import annotations

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from glasscockpit.protocol import Hello, InvalidRunId, check_run_id, decode, encode
from tests.conftest import free_port
from tests.server.harness import live_server
from tests.server.test_persist import SPECS, frames_of, send


@pytest.mark.parametrize("bad", ["run\n", "run\r\n", "a\nb", "\nrun", "run\x00"])
def test_ids_with_line_breaks_are_refused(bad):
    with pytest.raises(InvalidRunId):
        check_run_id(bad)


def test_a_hello_with_a_trailing_newline_is_refused_by_the_server(tmp_path):
    with live_server(free_port(), data_dir=tmp_path) as s:
        with (
            connect(s.ws + "/v1/agent", compression=None) as ws,
            pytest.raises(ConnectionClosed) as closed,
        ):
            ws.send(encode(Hello("run\n", 0, SPECS)))
            decode(ws.recv(timeout=5))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
        assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", ["export.csv", "frames", "export.json", ""])
def test_every_run_route_answers_for_an_id_with_a_newline(tmp_path, path):
    with live_server(free_port(), data_dir=tmp_path) as s:
        send(s.ws, "run", frames_of("run", 2))
        with httpx.Client(base_url=s.http, timeout=5) as c:
            ok = c.get(f"/v1/runs/run/{path}".rstrip("/"))
            assert ok.status_code == 200
            r = c.get(f"/v1/runs/run%0A/{path}".rstrip("/"))
            assert r.status_code == 404
            assert r.json()["error"] in ("UnknownRun", "NotFound")
