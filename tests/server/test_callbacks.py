"""Malformed Dash callback requests get 400 with a reason, never a 500."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import free_port
from tests.server.harness import LiveServer, live_server

URL = "/_dash-update-component"


@pytest.fixture(scope="module")
def server():
    with live_server(free_port()) as s:
        yield s


def a_callback(server: LiveServer) -> dict:
    deps = httpx.get(server.http + "/_dash-dependencies").json()
    return next(d for d in deps if d["inputs"] and "." in d["output"])


BAD = {
    "not json": b"{not json",
    "not utf-8": b"\xff\xfe",
    "array": b"[]",
    "empty": b"{}",
    "output not a string": b'{"output": 5}',
    "unknown output": b'{"output": "nope.children", "inputs": []}',
}


@pytest.mark.parametrize("body", BAD.values(), ids=BAD.keys())
def test_malformed_bodies_are_refused_with_400(server, body):
    r = httpx.post(server.http + URL, content=body)
    assert r.status_code == 400
    assert r.json()["error"] == "BadCallback"


def test_wrong_inputs_for_a_real_callback_are_refused_with_400(server):
    cb = a_callback(server)
    for inputs in ("zz", [1, 2], [{"id": "x", "property": "y"}] * 9):
        body = {"output": cb["output"], "inputs": inputs, "changedPropIds": []}
        r = httpx.post(server.http + URL, content=json.dumps(body))
        assert r.status_code == 400, inputs


def test_the_dashboard_itself_still_gets_its_callbacks(server):
    # The page's own first request for the run list, as the browser sends it.
    cb = a_callback(server)
    body = {
        "output": cb["output"],
        "outputs": [],
        "inputs": [
            {"id": i["id"], "property": i["property"], "value": None}
            for i in cb["inputs"]
        ],
        "state": [
            {"id": s["id"], "property": s["property"], "value": None}
            for s in cb["state"]
        ],
        "changedPropIds": [],
    }
    r = httpx.post(server.http + URL, content=json.dumps(body))
    assert r.status_code != 400, r.text
