"""A diagnosis reaches the dashboard within a second of its evidence (real browser).

A run streams healthy frames to a real server; the page shows "no diagnosis".
Then a frame with a NaN loss arrives: the strip must show the divergence within
a second of the server acknowledging that frame, link it to the loss panel and
mark its step on that panel.
"""

from __future__ import annotations

import time

from websockets.sync.client import connect

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


def frame(seq: int, loss: float) -> Readings:
    return Readings(
        "diag-run",
        seq,
        seq - 1,
        time.time(),
        {"loss": loss, "grad_norm": {"total": 1.0, "fc.weight": 1.0}},
    )


def test_divergence_appears_within_a_second_with_links_and_markers():
    with server_process(free_port()) as base, browser() as b:
        ws_url = base.replace("http", "ws") + "/v1/agent"
        with connect(ws_url, compression=None) as ws:
            ws.send(encode(Hello("diag-run", 0, SPECS, {"optimizer": "SGD"})))
            decode(ws.recv(timeout=5))
            for seq in range(1, 21):
                ws.send(encode(frame(seq, 1.0 / seq)))
                assert decode(ws.recv(timeout=5)) == Ack("diag-run", seq)
            page = b.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(base + "/")
            row = ".diagnosis-row[data-run='diag-run']"
            page.wait_for_selector(row, timeout=30_000)
            page.wait_for_selector(".diagnosis-none", timeout=10_000)
            page.wait_for_selector(".js-plotly-plot", timeout=30_000)

            ws.send(encode(frame(21, float("nan"))))
            assert decode(ws.recv(timeout=5)) == Ack("diag-run", 21)
            stored = time.monotonic()
            page.wait_for_selector(".diagnosis[data-rule='divergence']", timeout=5_000)
            latency = time.monotonic() - stored
        assert latency < 1.0, f"the diagnosis took {latency:.2f} s to appear"
        chip = page.locator(".diagnosis[data-rule='divergence']")
        assert "critical" in (chip.get_attribute("class") or "")
        assert "step 20" in chip.inner_text()
        chip.locator("summary").click()
        link = chip.locator(".diagnosis-link[data-panel='loss']")
        assert link.is_visible()
        # The loss panel carries a marker line at the diagnosed step.
        page.wait_for_function(
            """() => [...document.querySelectorAll('.js-plotly-plot')].some(
                 gd => (gd.layout.shapes || []).some(
                   s => String(s.name).startsWith('diagnosis: ') && s.x0 === 20))""",
            timeout=10_000,
        )
        link.click()  # scrolls to the card and flashes it
        page.wait_for_selector(".diagnosis-flash", timeout=5_000)
