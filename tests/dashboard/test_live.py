"""The live loop against the real store and provider: extends only what is new."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import plotly.graph_objects as go
from dash import no_update

from bench import cockpit_frames as cf
from glasscockpit.dashboard.app import filter_runs
from glasscockpit.dashboard.export import panel_file
from glasscockpit.dashboard.live import RunData, status_line, update_panel
from glasscockpit.dashboard.model import ViewOptions, build_panels
from glasscockpit.protocol import decode, encode
from glasscockpit.server.provider import StoreProvider
from glasscockpit.server.store import RunStore

OPTS = ViewOptions(0.6, "step", False)


def fed_store(steps, run="r", bad_steps=()):
    store = RunStore(max_points=256)
    rng = np.random.default_rng(0)
    # Through the codec, as the websocket route does.
    store.ingest(decode(encode(cf.hello(run))))
    for s in range(steps):
        store.ingest(decode(encode(cf.readings(run, s, rng, bad=s in bad_steps))))
    return store, rng


def grid(provider, runs):
    details = {r: provider.run_detail(r) for r in runs}
    extras = {r: provider.instrument_panels(r) for r in runs}
    return {p["id"]: p for p in build_panels(runs, details, extras)}


def test_provider_reports_the_later_panel_fields():
    store, _ = fed_store(1)
    panels = StoreProvider(store, 60).instrument_panels("r")
    assert panels["alpha"]["distribution"] == "alpha"
    assert panels["alpha"]["ref_lines"] == [-1.0, 0.0, 1.0]
    assert panels["norm_test"]["band"] == [0.0, 1.0]
    assert panels["norm_test"]["card"] == "Gradient tests"
    assert panels["loss"]["smooth"] is True


def test_first_call_draws_then_only_new_points_travel():
    store, rng = fed_store(20)
    provider = StoreProvider(store, 60)
    panels = grid(provider, ["r"])
    loss = panels["loss"]
    fig, ext, entry = update_panel(
        RunData(provider, ["r"]), loss, {"r": "#000"}, OPTS, True, None
    )
    assert ext is no_update and len(go.Figure(fig).data[0].x) == 20
    # Nothing new: nothing sent.
    again = update_panel(
        RunData(provider, ["r"]), loss, {"r": "#000"}, OPTS, True, entry
    )
    assert again[0] is no_update and again[1] is no_update
    for s in range(20, 25):
        store.ingest(cf.readings("r", s, rng))
    fig, ext, entry = update_panel(
        RunData(provider, ["r"]), loss, {"r": "#000"}, OPTS, True, entry
    )
    assert fig is no_update
    update, indices, _ = ext
    assert indices == [0, 1]  # raw dots and the smoothed line
    assert update["x"] == [[20, 21, 22, 23, 24]] * 2
    # A control change redraws the whole panel.
    other = ViewOptions(0.0, "wall", False)
    fig, ext, _ = update_panel(
        RunData(provider, ["r"]), loss, {"r": "#000"}, other, True, entry
    )
    assert ext is no_update and go.Figure(fig).layout.xaxis.type == "date"


def test_long_runs_are_redrawn_from_the_downsampled_store():
    store, rng = fed_store(10)
    provider = StoreProvider(store, 60)
    lr = grid(provider, ["r"])["lr"]
    _, _, entry = update_panel(RunData(provider, ["r"]), lr, {}, OPTS, False, None)
    entry["state"]["points"] = 10**6  # the browser holds far too many points
    fig, ext, entry = update_panel(RunData(provider, ["r"]), lr, {}, OPTS, False, entry)
    assert ext is no_update and fig is not no_update


def test_histogram_panels_redraw_only_on_a_new_snapshot():
    store, rng = fed_store(11)
    provider = StoreProvider(store, 60)
    hist = grid(provider, ["r"])["grad_hist_1d"]
    fig, _, entry = update_panel(RunData(provider, ["r"]), hist, {}, OPTS, False, None)
    assert list(go.Figure(fig).data[0].x) == [0, 10] and entry["step"] == 10
    store.ingest(cf.readings("r", 11, rng))  # no histogram at step 11
    same = update_panel(RunData(provider, ["r"]), hist, {}, OPTS, False, entry)
    assert same[0] is no_update
    for s in range(12, 21):
        store.ingest(cf.readings("r", s, rng))
    fig, _, entry = update_panel(RunData(provider, ["r"]), hist, {}, OPTS, False, entry)
    assert list(go.Figure(fig).data[0].x) == [0, 10, 20]


def test_status_line_names_failures_and_bad_readings():
    store, rng = fed_store(5, bad_steps={3})
    frame = cf.readings("r", 5, rng)
    store.ingest(
        type(frame)(
            run="r",
            seq=frame.seq,
            step=5,
            wall_time=frame.wall_time,
            values={},
            errors={"loss": "RuntimeError: boom"},
        )
    )
    provider = StoreProvider(store, 60)
    loss = grid(provider, ["r"])["loss"]
    rd = RunData(provider, ["r"])
    _, _, entry = update_panel(rd, loss, {}, OPTS, True, None)
    text = status_line(rd, loss, entry, True)
    assert "failed on the agent: loss: RuntimeError: boom" in text
    assert "1 NaN/Inf" in text


def test_downloads_hold_every_stored_point():
    store, _ = fed_store(30)
    provider = StoreProvider(store, 60)
    panels = grid(provider, ["r"])
    out = panel_file(provider, panels["grad_norm"], ["r"], "csv", "layers")
    rows = list(csv.DictReader(io.StringIO(out["content"])))
    assert out["filename"] == "grad_norm.csv"
    assert {r["key"] for r in rows} == {"total", *cf.LAYERS}
    assert len(rows) == 30 * 5
    as_json = json.loads(
        panel_file(provider, panels["loss"], ["r"], "json", "total")["content"]
    )
    assert [r["step"] for r in as_json] == list(range(30))
    hist = panel_file(provider, panels["grad_hist_1d"], ["r"], "json", "total")
    assert [s["step"] for s in json.loads(hist["content"])["r"]] == [0, 10, 20]


def test_run_filter_is_a_regex_or_plain_text():
    runs = [{"run": n} for n in ("lr-0.1", "lr-0.01", "adam")]
    assert [r["run"] for r in filter_runs(runs, "^lr")] == ["lr-0.1", "lr-0.01"]
    assert [r["run"] for r in filter_runs(runs, "0.1(")] == []
    assert [r["run"] for r in filter_runs(runs, "")] == ["lr-0.1", "lr-0.01", "adam"]


def test_live_points_are_thinned_to_the_density_of_the_drawing():
    store, rng = fed_store(2000)  # 256 buckets kept: about 8 steps per point
    provider = StoreProvider(store, 60)
    loss = grid(provider, ["r"])["loss"]
    opts = ViewOptions(0.0, "step", False)
    _, _, entry = update_panel(RunData(provider, ["r"]), loss, {}, opts, False, None)
    stride = entry["stride"]["r|loss|total"]
    assert stride > 4
    for s in range(2000, 2080):
        store.ingest(cf.readings("r", s, rng))
    _, ext, entry = update_panel(RunData(provider, ["r"]), loss, {}, opts, False, entry)
    xs = ext[0]["x"][0]  # raw readings (then the smoothed line)
    assert 80 / stride / 2 <= len(xs) <= 80 / stride + 1
    assert xs[-1] == 2079  # the newest reading always arrives
