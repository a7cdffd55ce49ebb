"""The README's demo command trains a real model into a real server, every gauge fed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import free_port
from tests.e2e.harness import browser, get_json, server_process

pytestmark = pytest.mark.e2e


def run_demo(port: int) -> subprocess.CompletedProcess[str]:
    """The README's demo, two short epochs, into the server on ``port``."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "glasscockpit",
            "demo",
            "--port",
            str(port),
            "--epochs",
            "2",
            "--delay",
            "0",
            "--exit",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


def test_demo_streams_every_full_instrument_without_errors():
    port = free_port()
    with server_process(port) as base:
        out = run_demo(port)
        assert "finished, test accuracy" in out.stdout
        runs = get_json(base + "/v1/runs")
        assert len(runs) == 1 and runs[0]["status"] == "finished"
        run = get_json(base + f"/v1/runs/{runs[0]['run']}")
    # Notes that say which estimator a budgeted reading used are not errors.
    errors = {k: v for k, v in run["errors"].items() if not v.startswith("estimate:")}
    assert errors == {}, run["errors"]
    assert "undefined" not in out.stderr and "disabled" not in out.stderr, out.stderr
    names = {i["name"] for i in run["instruments"]}
    for name in (
        "alpha",
        "hess_max_ev",
        "tic_diag",
        "norm_test",
        "grad_hist_1d",
        "epoch_accuracy",
    ):
        assert name in names
    # every line instrument received at least one reading
    empty = [
        i["name"]
        for i in run["instruments"]
        if i["kind"] in ("scalar", "per_layer") and not i["keys"]
    ]
    assert empty == [], empty


EVERY_CARD_DRAWN = """() => {
    const cards = [...document.querySelectorAll('.card')];
    const drawn = c => [...c.querySelectorAll('.js-plotly-plot')].some(gd =>
        (gd.data || []).some(t => ['x', 'z'].some(k => t[k] &&
            (t[k].length > 0 || (t[k].bdata || '').length > 0))));
    return cards.length > 0 && cards.every(drawn) ? cards.length : 0;
}"""


def test_every_panel_of_a_real_full_run_renders_in_the_browser(output_dir):
    port = free_port()
    with server_process(port) as base, browser() as b:
        run_demo(port)
        run = get_json(base + "/v1/runs")[0]["run"]
        specs = get_json(base + f"/v1/runs/{run}")["instruments"]
        page = b.new_page(viewport={"width": 1600, "height": 1200})
        # The long grid: one card per instrument (the cockpit view, the default,
        # adds the test plane and has its own tests).
        page.goto(base + "/?view=grid")
        page.wait_for_function(EVERY_CARD_DRAWN, timeout=60_000)
        cards = page.evaluate(EVERY_CARD_DRAWN)
        page.screenshot(path=str(output_dir / "demo-grid.png"), full_page=True)
    # The three gradient tests share one card ("Gradient tests") and have a
    # second one together (Cockpit's inner-product vs orthogonality test plane);
    # every other instrument has its own.
    names = {s["name"] for s in specs}
    assert {"norm_test", "inner_test", "ortho_test"} <= names
    assert cards == len(names) - 2 + 1
