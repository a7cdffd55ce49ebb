"""Every documented operation, fuzzed from its OpenAPI schema against a real server.

Each generated request must get a documented status (never a 5xx), and every JSON
answer must match the documented response schema, whatever the parameters.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from glasscockpit.protocol import (
    Array,
    Bye,
    Hello,
    InstrumentSpec,
    Kind,
    PanelSpec,
    Readings,
    encode,
)
from tests.conftest import free_port
from tests.server.harness import LiveServer, live_server
from tests.server.openapi import Operation, operations, requests, validate

SPECS = (
    InstrumentSpec("loss", Kind.SCALAR, PanelSpec("Loss")),
    InstrumentSpec("grad_norm", Kind.PER_LAYER, PanelSpec("Grad")),
    InstrumentSpec("hist", Kind.HISTOGRAM, PanelSpec("Hist")),
)
SEEDS = {"run_id": ["r1", "r2", "live"], "name": ["loss", "grad_norm", "hist"]}


def populate(server: LiveServer, run: str, bye: bool) -> None:
    with connect(server.ws + "/v1/agent", compression=None) as ws:
        ws.send(encode(Hello(run, 0, SPECS, {"lr": float("nan")})))
        ws.recv(timeout=5)
        for seq in range(1, 40):
            values = {
                "loss": float("inf") if seq == 5 else float(seq),
                "grad_norm": {"total": float("nan"), "w": 1.0},
                "hist": Array("<f4", (2, 3), bytes(24)),
            }
            ws.send(encode(Readings(run, seq, seq, 1.0, values)))  # type: ignore[arg-type]
            ws.recv(timeout=5)
        if bye:
            ws.send(encode(Bye(run, 40)))
            ws.recv(timeout=5)


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[tuple[LiveServer, dict, httpx.Client]]:
    data_dir = tmp_path_factory.mktemp("frames")
    with live_server(free_port(), max_points=16, data_dir=data_dir) as s:
        for run in SEEDS["run_id"]:
            populate(s, run, bye=run != "live")
        with httpx.Client(base_url=s.http, timeout=10) as http:
            spec = http.get("/openapi.json").json()
            yield s, spec, http


def check(spec: dict, op: Operation, http: httpx.Client, request) -> None:
    method, path, query = request
    response = http.request(method, path, params=query)
    status = str(response.status_code)
    assert response.status_code < 500, (method, path, query, response.text)
    assert status in op.responses, (method, path, query, status, response.text)
    content = op.responses[status].get("content", {})
    kind = response.headers.get("content-type", "").split(";")[0]
    assert kind in content or not content, (path, status, kind, list(content))
    if kind == "application/json" and "schema" in content[kind]:
        validate(spec, content[kind]["schema"], response.json())


def operation_ids() -> list[str]:
    with (
        live_server(free_port(), max_points=16) as s,
        httpx.Client(base_url=s.http) as c,
    ):
        spec = c.get("/openapi.json").json()
    return [f"{op.method} {op.path}" for op in operations(spec)]


OPS = operation_ids()


@pytest.mark.parametrize("op_id", OPS)
def test_operation_answers_as_documented(api, op_id):
    _server, spec, http = api
    op = next(o for o in operations(spec) if f"{o.method} {o.path}" == op_id)

    @settings(
        max_examples=25 if op.method != "DELETE" else 10,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def run(data):
        request = data.draw(requests(spec, op, SEEDS))
        if op.method == "DELETE" and request[1].rsplit("/", 1)[-1] in SEEDS["run_id"]:
            return  # keep the seeded runs for the other operations
        check(spec, op, http, request)

    run()


@pytest.mark.slow
@pytest.mark.parametrize("op_id", OPS)
def test_operation_answers_as_documented_long(api, op_id):
    _server, spec, http = api
    op = next(o for o in operations(spec) if f"{o.method} {o.path}" == op_id)

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        request = data.draw(requests(spec, op, SEEDS))
        if op.method == "DELETE" and request[1].rsplit("/", 1)[-1] in SEEDS["run_id"]:
            return
        check(spec, op, http, request)

    run()


def test_the_checker_catches_a_schema_violation(api):
    _server, spec, _http = api
    series = {"$ref": "#/components/schemas/SeriesOut"}
    good = {
        "run": "r",
        "name": "n",
        "key": "total",
        "count": 1,
        "step": [1],
        "wall_time": [1.0],
        "value": ["NaN"],
        "min": [1.0],
        "max": ["Infinity"],
    }
    validate(spec, series, good)
    with pytest.raises(AssertionError, match="step"):
        validate(spec, series, {**good, "step": ["1"]})
    with pytest.raises(AssertionError, match="missing required 'count'"):
        validate(spec, series, {k: v for k, v in good.items() if k != "count"})
