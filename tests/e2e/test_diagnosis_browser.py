"""A diagnosis reaches the dashboard within a second of its evidence (real browser).

A run streams healthy frames to a real server; the page shows "no diagnosis".
Then three pieces of evidence arrive one after the other (a layer whose gradient
stays exactly zero, an infinite gradient norm, a NaN loss): each diagnosis must
be on the page within a second of the server acknowledging its frame (median of
the three, so that one hiccup of a loaded test machine does not decide), link to
its evidence panel and mark its step on that panel.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from websockets.sync.client import ClientConnection, connect

from glasscockpit.protocol import (
    Ack,
    Hello,
    InstrumentSpec,
    Kind,
    PanelSpec,
    Readings,
    decode,
    encode,
)
from tests.conftest import free_port
from tests.e2e.harness import browser, server_process

SPECS = (
    InstrumentSpec("loss", Kind.SCALAR, PanelSpec("Loss", group="performance")),
    InstrumentSpec("grad_norm", Kind.PER_LAYER, PanelSpec("Gradient norm")),
)


def frame(seq: int, loss: float, total: float = 1.0, layer: float = 1.0) -> Readings:
    return Readings(
        "diag-run",
        seq,
        seq - 1,
        time.time(),
        {"loss": loss, "grad_norm": {"total": total, "fc.weight": layer}},
    )


def send(ws: ClientConnection, f: Readings) -> None:
    ws.send(encode(f))
    assert decode(ws.recv(timeout=5)) == Ack("diag-run", f.seq)


def shown_after(page: Any, ws: ClientConnection, f: Readings, rule: str) -> float:
    """Seconds from the frame's ack to its diagnosis on the page."""
    send(ws, f)
    stored = time.monotonic()
    page.wait_for_selector(f".diagnosis[data-rule='{rule}']", timeout=10_000)
    return time.monotonic() - stored


def test_diagnoses_appear_within_a_second_with_links_and_markers():
    with server_process(free_port()) as base, browser() as b:
        ws_url = base.replace("http", "ws") + "/v1/agent"
        with connect(ws_url, compression=None) as ws:
            ws.send(encode(Hello("diag-run", 0, SPECS, {"optimizer": "SGD"})))
            decode(ws.recv(timeout=5))
            for seq in range(1, 21):
                send(ws, frame(seq, 1.0 / seq))
            page = b.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(base + "/")
            row = ".diagnosis-row[data-run='diag-run']"
            page.wait_for_selector(row, timeout=30_000)
            page.wait_for_selector(".diagnosis-none", timeout=10_000)
            page.wait_for_selector(".js-plotly-plot", timeout=30_000)
            # Steady state: the page's first render (every panel's full figure)
            # is done; a live run's page is in this state when evidence arrives.
            page.wait_for_timeout(1500)

            for seq in range(21, 25):  # fc.weight's gradient is exactly 0 ...
                send(ws, frame(seq, 0.05, layer=0.0))
            latencies = [
                # ... for the 5th reading in a row: dead units.
                shown_after(page, ws, frame(25, 0.05, layer=0.0), "dead_units"),
                shown_after(
                    page, ws, frame(26, 0.05, total=float("inf")), "exploding_gradients"
                ),
                shown_after(page, ws, frame(27, float("nan")), "divergence"),
            ]
        assert statistics.median(latencies) < 1.0, latencies
        chip = page.locator(".diagnosis[data-rule='divergence']")
        assert "critical" in (chip.get_attribute("class") or "")
        assert "step 26" in chip.inner_text()
        chip.locator("summary").click()
        link = chip.locator(".diagnosis-link[data-panel='loss']")
        assert link.is_visible()
        # The loss panel carries a marker line at the diagnosed step.
        page.wait_for_function(
            """() => [...document.querySelectorAll('.js-plotly-plot')].some(
                 gd => (gd.layout.shapes || []).some(
                   s => String(s.name).startsWith('diagnosis: ') && s.x0 === 26))""",
            timeout=10_000,
        )
        link.click()  # scrolls to the card and flashes it
        page.wait_for_selector(".diagnosis-flash", timeout=5_000)
