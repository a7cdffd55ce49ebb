"""The REST API over a real server fed by a real websocket agent."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect

from glasscockpit.protocol import (
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
from tests.conftest import free_port
from tests.server.harness import LiveServer, live_server

SPECS = (
    InstrumentSpec("loss", Kind.SCALAR, PanelSpec("Loss", log_y=True, group="g")),
    InstrumentSpec("grad_norm", Kind.PER_LAYER, PanelSpec("Gradient norm")),
    InstrumentSpec("hist", Kind.HISTOGRAM, PanelSpec("Histogram")),
)
STEPS = 300


def counts(step: int) -> Array:
    data = bytes([step % 256, 0, 0, 0]) + bytes(12)
    return Array("<i4", (4,), data)


def stream(server: LiveServer, run: str, steps: int, bye: bool) -> None:
    with connect(server.ws + "/v1/agent", compression=None) as ws:
        ws.send(encode(Hello(run, 0, SPECS, {"model": "mlp", "lr": 0.1})))
        ws.recv(timeout=5)
        for seq in range(1, steps + 1):
            step = seq - 1
            values = {
                "loss": 1000.0 if step == 123 else 1.0 / seq,
                "grad_norm": {"total": float(step), "fc.weight": 2.0 * step},
                "hist": counts(step),
            }
            ws.send(encode(Readings(run, seq, step, 100.0 + step, values)))  # type: ignore[arg-type]
            assert decode(ws.recv(timeout=5)).seq == seq
        if bye:
            ws.send(encode(Bye(run, steps + 1)))
            ws.recv(timeout=5)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server(free_port(), max_points=64, max_histograms=16) as s:
        stream(s, "done", STEPS, bye=True)
        yield s


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http, timeout=10) as c:
        yield c


def test_list_runs_with_status(http, server):
    with connect(server.ws + "/v1/agent", compression=None) as ws:
        ws.send(encode(Hello("running", 0, SPECS)))
        ws.recv(timeout=5)
        runs = {r["run"]: r for r in http.get("/v1/runs").json()}
        assert runs["running"]["status"] == "live"
    assert runs["done"]["status"] == "finished"
    assert runs["done"]["last_step"] == STEPS - 1
    assert runs["done"]["frames"] == STEPS + 1
    assert [r["run"] for r in http.get("/v1/runs").json()][0] == "running"  # newest
    # Disconnected without a bye: stale.
    assert {r["run"]: r["status"] for r in http.get("/v1/runs").json()}[
        "running"
    ] == "stale"


def test_run_detail_has_meta_instruments_and_keys(http):
    detail = http.get("/v1/runs/done").json()
    assert detail["meta"] == {"model": "mlp", "lr": 0.1}
    by_name = {i["name"]: i for i in detail["instruments"]}
    assert by_name["loss"]["panel"]["log_y"] is True
    assert by_name["grad_norm"]["keys"] == ["total", "fc.weight"]
    assert by_name["hist"]["kind"] == "histogram"


def test_series_is_downsampled_keeping_spike_and_latest(http):
    full = http.get("/v1/runs/done/series/loss", params={"max_points": 100_000}).json()
    assert full["count"] == STEPS
    assert len(full["step"]) <= 64  # GLASSCOCKPIT_MAX_POINTS
    assert full["step"][-1] == STEPS - 1
    assert full["value"][-1] == 1.0 / STEPS
    small = http.get("/v1/runs/done/series/loss", params={"max_points": 5}).json()
    assert len(small["step"]) <= 5
    assert max(small["max"]) == 1000.0  # the spike at step 123 survives
    assert small["value"][-1] == 1.0 / STEPS
    after = http.get(
        "/v1/runs/done/series/loss", params={"after_step": full["step"][-3]}
    ).json()
    assert after["step"] == full["step"][-2:]


def test_per_layer_series(http):
    layers = http.get("/v1/runs/done/layers/grad_norm").json()
    assert layers["keys"] == ["total", "fc.weight"]
    weight = layers["series"]["fc.weight"]
    assert weight["value"][-1] == 2.0 * (STEPS - 1)
    one = http.get("/v1/runs/done/series/grad_norm", params={"key": "fc.weight"}).json()
    assert one == weight


def test_histograms_keep_a_thinned_history(http):
    hist = http.get("/v1/runs/done/histograms/hist", params={"last": 10_000}).json()
    snaps = hist["snapshots"]
    assert hist["count"] == STEPS
    assert len(snaps) <= 16  # GLASSCOCKPIT_MAX_HISTOGRAMS
    assert snaps[0]["step"] == 0  # the start of the run is still there
    assert [s["step"] for s in snaps[-8:]] == list(range(STEPS - 8, STEPS))
    assert snaps[-1]["arrays"]["counts"] == [float((STEPS - 1) % 256), 0.0, 0.0, 0.0]
    assert snaps[-1]["shapes"] == {"counts": [4]}
    last = http.get("/v1/runs/done/histograms/hist").json()["snapshots"]
    assert last == snaps[-1:]


def test_export_csv_and_json_agree_with_the_series(http):
    r = http.get("/v1/runs/done/export.csv")
    assert r.headers["content-type"].startswith("text/csv")
    assert 'filename="done.csv"' in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    loss = [row for row in rows if row["instrument"] == "loss"]
    series = http.get("/v1/runs/done/series/loss", params={"max_points": 100_000})
    assert [int(row["step"]) for row in loss] == series.json()["step"]
    assert {(row["instrument"], row["key"]) for row in rows} == {
        ("loss", "total"),
        ("grad_norm", "total"),
        ("grad_norm", "fc.weight"),
    }
    data = http.get("/v1/runs/done/export.json").json()
    assert data["run"]["run"] == "done"
    exported = {(s["name"], s["key"]): s for s in data["series"]}
    assert exported[("loss", "total")] == series.json()
    assert data["histograms"][0]["name"] == "hist"


def test_metrics_count_frames_runs_and_memory(http, server):
    metrics = http.get("/v1/metrics").json()
    assert metrics["counters"]["frames.in"] >= STEPS + 2
    assert metrics["runs"] >= 1
    assert metrics["series"] >= 3
    assert 0 < metrics["points"] <= metrics["series"] * 64
    assert metrics["memory_bytes"] >= metrics["points"] * 48
    assert http.get("/healthz").json() == {"status": "ok"}


def test_delete_then_404(http, server):
    stream(server, "doomed", 3, bye=True)
    assert http.delete("/v1/runs/doomed").json() == {"deleted": "doomed"}
    r = http.get("/v1/runs/doomed")
    assert r.status_code == 404
    assert r.json() == {"error": "UnknownRun", "detail": "No run 'doomed' is stored"}
    assert http.delete("/v1/runs/doomed").status_code == 404
    assert http.get("/v1/runs/done/series/nope").status_code == 404
    assert http.get("/v1/runs/done/histograms/loss").status_code == 404
    assert (
        http.get("/v1/runs/done/series/loss", params={"max_points": 0}).status_code
        == 422
    )


def test_openapi_documents_every_route_with_response_models(http):
    spec = http.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v1/runs",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/series/{name}",
        "/v1/runs/{run_id}/layers/{name}",
        "/v1/runs/{run_id}/histograms/{name}",
        "/v1/runs/{run_id}/export.json",
        "/v1/runs/{run_id}/export.csv",
        "/v1/runs/{run_id}/frames",
        "/v1/metrics",
        "/healthz",
    ):
        assert path in paths
    ok = paths["/v1/runs/{run_id}/series/{name}"]["get"]["responses"]
    assert ok["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SeriesOut"
    }
    assert ok["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorOut"
    }
    assert (
        "text/csv"
        in paths["/v1/runs/{run_id}/export.csv"]["get"]["responses"]["200"]["content"]
    )
