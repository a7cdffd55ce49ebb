"""The dashboard in a real browser, fed by a real training run and real frames.

One server for the module. Three runs stream into it while the tests look:

* ``agent-run``: a real training loop with the Cockpit agent (the instruments
  that exist: loss, grad_norm, lr);
* ``full-cockpit``: a websocket client sending protocol frames of every
  Cockpit gauge, including the kinds no agent instrument emits yet
  (histogram, heatmap) and the PanelSpec hints (band, card, distribution);
* ``nan-run``: the same client, with NaN losses.

Screenshots land in test-output/<test name>/.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from websockets.sync.client import connect

from bench import cockpit_frames as cf
from glasscockpit.protocol import Ack, decode, encode
from tests.conftest import free_port
from tests.e2e.harness import browser, server_process
from tests.e2e.test_live import make_cockpit

pytestmark = pytest.mark.e2e

#: Panels of the full-Cockpit run: 21 instruments, 3 cards merge 7 into 3, and
#: the gradient test plane pairs two of them.
FULL_PANELS = len(cf.SPECS) - 4 + 1


def train(cockpit: Any, stop: threading.Event) -> None:
    """A real training loop with the agent attached, until ``stop`` (or 5000 steps)."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    opt = cockpit.optimizer
    for step in range(5000):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(cockpit.model(x), y)
        with cockpit.step(step, loss=loss):
            loss.backward()
        opt.step()
        if stop.wait(0.02):
            return


class Feeder(threading.Thread):
    """A real websocket client streaming synthetic Cockpit frames, acks read."""

    def __init__(
        self, ws: str, run: str, steps: int, delay: float, bad: frozenset[int]
    ) -> None:
        super().__init__(daemon=True)
        self.ws, self.run_id, self.steps, self.delay, self.bad = (
            ws,
            run,
            steps,
            delay,
            bad,
        )
        self.acked = -1
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(1)
        try:
            with connect(self.ws + "/v1/agent", compression=None) as ws:
                for step in range(-1, self.steps + 1):
                    if step < 0:
                        frame: Any = cf.hello(self.run_id)
                    elif step == self.steps:
                        frame = cf.bye(self.run_id, self.steps)
                    else:  # built now, so its wall time is real
                        frame = cf.readings(self.run_id, step, rng, step in self.bad)
                    ws.send(encode(frame))
                    ack = decode(ws.recv(timeout=10))
                    assert isinstance(ack, Ack)
                    self.acked = ack.seq
                    if self.stop.wait(self.delay):
                        return
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc


@pytest.fixture(scope="module")
def site() -> Iterator[dict[str, Any]]:
    with server_process(free_port()) as base:
        ws = base.replace("http", "ws")
        full = Feeder(ws, "full-cockpit", 900, 0.03, frozenset())
        nan = Feeder(ws, "nan-run", 60, 0.0, frozenset({20, 21, 40}))
        nan.start()
        nan.join(30)
        cockpit = make_cockpit(base, "agent-run")
        stop = threading.Event()
        trainer = threading.Thread(target=train, args=(cockpit, stop))
        trainer.start()
        full.start()
        try:
            with browser() as b:
                yield {"base": base, "browser": b, "feeders": (full, nan)}
        finally:
            stop.set()
            full.stop.set()
            trainer.join()
            cockpit.close()
            full.join(30)
            for f in (full, nan):
                assert f.error is None, f.error


@pytest.fixture
def pages(site: dict[str, Any]) -> Iterator[list[Any]]:
    """Pages opened by a test, closed after it (an open page keeps polling)."""
    opened: list[Any] = []
    yield opened
    for page in opened:
        page.close()


def open_page(site: dict[str, Any], runs: list[str], opened: list[Any]) -> Any:
    page = site["browser"].new_page(viewport={"width": 1700, "height": 2400})
    opened.append(page)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # The long grid: these tests are about panels, not the cockpit view's fit
    # (test_cockpit_view.py), and its visibility gate keeps three live runs light.
    page.goto(site["base"] + "/?view=grid")
    page.wait_for_selector("#run-list input", timeout=30_000)
    select_runs(page, runs)
    page.errors = errors
    return page


def select_runs(page: Any, runs: list[str]) -> None:
    """Tick exactly ``runs`` in the run list (new ones first: an empty list refills)."""
    for name in runs:
        page.wait_for_selector(f"#run-list input[value='{name}']", timeout=30_000)
    for want in (True, False):
        for box in page.query_selector_all("#run-list input[type=checkbox]"):
            value = box.get_attribute("value")
            if (value in runs) == want and box.is_checked() != want:
                box.click()
    page.wait_for_function(
        "(names) => { const g = document.querySelector('.grid-runs');"
        "return g && g.getAttribute('data-runs').split(' ').sort().join(' ') "
        "=== [...names].sort().join(' '); }",
        arg=runs,
        timeout=60_000,  # every panel of up to 3 runs, on a loaded 2-core machine
    )


def card_js(body: str) -> str:
    """A JS function of (title) evaluated on the plot inside the card titled so."""
    return (
        "(title) => { const c = [...document.querySelectorAll('.card')].find("
        "c => c.querySelector('.card-title').innerText === title);"
        "const gd = c && c.querySelector('.js-plotly-plot');"
        f"if (!gd || !gd.data) return null; {body} }}"
    )


def points(page: Any, title: str, trace: int = 0) -> int:
    return (
        page.evaluate(
            card_js(f"return ((gd.data[{trace}] || {{}}).x || []).length;"), title
        )
        or 0
    )


CARDS_JS = """() => [...document.querySelectorAll('.card')].map(c =>
  c.querySelector('.card-title').innerText + ' | ' +
  c.querySelector('.card-status').innerText + ' | ' +
  (c.querySelector('.js-plotly-plot').data || []).map(t => (t.x || []).length))"""


def wait_points(page: Any, title: str, above: int, trace: int = 0) -> int:
    """Wait until the card's trace has more than ``above`` points; say why not."""
    try:
        return _wait_points(page, title, above, trace)
    except Exception as exc:
        cards = page.evaluate(CARDS_JS)
        raise AssertionError(f"{title}: {cards}; page errors: {page.errors}") from exc


def _wait_points(page: Any, title: str, above: int, trace: int = 0) -> int:
    page.wait_for_function(
        card_js(f"return ((gd.data[{trace}] || {{}}).x || []).length > {above};"),
        arg=title,
        timeout=30_000,
    )
    return points(page, title, trace)


def trace_names(page: Any, title: str) -> list[str]:
    return page.evaluate(card_js("return gd.data.map(t => t.name || '');"), title)


def test_every_panel_renders_and_grows_live(site, pages, output_dir):
    page = open_page(site, ["full-cockpit"], pages)
    page.wait_for_function(
        f"document.querySelectorAll('.card').length === {FULL_PANELS}", timeout=30_000
    )
    titles = page.eval_on_selector_all(
        ".card-title", "els => els.map(e => e.innerText)"
    )
    for title in titles:  # every panel has drawn data
        page.wait_for_function(
            card_js(
                "return gd.data.some(t => ['x', 'z'].some(k => t[k] && "
                "(t[k].length > 0 || (t[k].bdata || '').length > 0)));"
            ),
            arg=title,
            timeout=30_000,
        )
    assert {"Alpha", "Gradient tests", "TIC", "Gradient vs parameter"} <= set(titles)
    groups = page.eval_on_selector_all(
        ".group-title", "els => els.map(e => e.innerText)"
    )
    assert groups[:4] == ["STEP SIZE", "GRADIENTS", "CURVATURE", "PERFORMANCE"]
    helps = page.eval_on_selector_all(
        ".card-help", "els => els.map(e => e.getAttribute('data-help'))"
    )
    assert all(h and h != "no description" for h in helps)
    # Live: line panels gain points, the histogram heatmap gains steps.
    first = points(page, "Alpha")
    wait_points(page, "Alpha", first + 20)
    steps = page.evaluate(
        card_js("return gd.data[0].x.length;"), "Gradient element histogram"
    )
    wait_points(page, "Gradient element histogram", steps)
    kinds = page.evaluate(
        card_js("return gd.data.map(t => t.type);"), "Gradient vs parameter"
    )
    assert kinds[0] == "heatmap"
    band = page.evaluate(
        card_js("return gd.layout.shapes.filter(s => s.type === 'rect').length;"),
        "Gradient tests",
    )
    assert band == 1
    page.screenshot(path=str(output_dir / "full-grid.png"), full_page=True)
    assert page.errors == []


def test_controls_change_the_figures(site, pages, output_dir):
    page = open_page(site, ["agent-run"], pages)
    wait_points(page, "Mini-batch loss", 5)
    # log-y per panel: the PanelSpec default, then the button flips it.
    axis = card_js("return gd.layout.yaxis.type;")
    assert page.evaluate(axis, "Gradient norm") == "log"
    card = "xpath=//div[contains(@class,'card')][.//span[text()='Gradient norm']]"
    page.click(f"{card}//button[text()='log']")
    page.wait_for_function(f"({axis})('Gradient norm') === 'linear'")
    # Smoothing: at 0.6 every line has a smoothed twin; at 0 it has none.
    assert trace_names(page, "Gradient norm").count("Gradient norm") == 2
    page.focus("#smoothing [role=slider]")
    page.keyboard.press("Home")
    page.wait_for_function(
        card_js("return gd.data.filter(t => t.name === 'Gradient norm').length === 1;"),
        arg="Gradient norm",
    )
    # Per layer: total plus one line per parameter tensor.
    page.click("#layers input[value=layers]")
    page.wait_for_function(
        card_js("return gd.data.filter(t => t.mode === 'lines').length === 5;"),
        arg="Gradient norm",
    )
    assert {"0.weight", "0.bias", "2.weight", "2.bias"} <= set(
        trace_names(page, "Gradient norm")
    )
    # The state survives live updates (extendData, not full redraws).
    before = points(page, "Gradient norm", 1)
    wait_points(page, "Gradient norm", before + 5, 1)
    assert page.evaluate(axis, "Gradient norm") == "linear"
    # Wall-time x axis.
    page.click("#x-axis input[value=wall]")
    page.wait_for_function(
        f"({card_js('return gd.layout.xaxis.type;')})('Mini-batch loss') === 'date'"
    )
    # Run overlay: a second run adds its own lines to every shared panel.
    select_runs(page, ["agent-run", "full-cockpit"])
    page.wait_for_function(
        card_js(
            "const n = gd.data.map(t => t.name); "
            "return n.includes('agent-run') && n.includes('full-cockpit');"
        ),
        arg="Mini-batch loss",
        timeout=30_000,
    )
    colors = page.evaluate(
        card_js(
            "return gd.data.filter(t => t.mode === 'lines').map(t => t.line.color);"
        ),
        "Mini-batch loss",
    )
    assert len(set(colors)) == 2
    page.screenshot(path=str(output_dir / "overlay.png"), full_page=True)
    # Enlarge, and download a panel's data.
    page.click(f"{card}//button[text()='⤢']")
    page.wait_for_selector(".card-big")
    page.screenshot(path=str(output_dir / "enlarged.png"))
    page.click(f"{card}//button[text()='⤢']")
    with page.expect_download() as download:
        page.click(f"{card}//button[text()='csv']")
    text = Path(download.value.path()).read_text(encoding="utf-8")
    assert text.startswith("run,instrument,key,step,wall_time,value")
    assert ",grad_norm,0.weight," in text
    assert page.errors == []


def test_nan_run_shows_its_warning(site, pages, output_dir):
    page = open_page(site, ["nan-run"], pages)
    page.wait_for_selector(".warning", timeout=30_000)
    assert "nan-run: 3 NaN/Inf readings" in page.inner_text(".warnings")
    crosses = card_js(
        "const t = gd.data.find(t => t.name === 'NaN/Inf'); return t ? t.x : null;"
    )
    page.wait_for_function(f"(({crosses})('Mini-batch loss') || []).length === 3")
    assert page.evaluate(crosses, "Mini-batch loss") == [20, 21, 40]
    status = "xpath=//div[contains(@class,'card')][.//span[text()='Mini-batch loss']]"
    assert "3 NaN/Inf readings" in page.inner_text(
        f"{status}//div[contains(@class,'card-status')]"
    )
    assert "NaN/Inf" in page.inner_text("#run-list")
    page.click(".run-meta summary")  # the run's metadata view
    meta = page.inner_text(".run-meta")
    assert "optimizer" in meta and "SGD" in meta and "batch_size" in meta
    page.screenshot(path=str(output_dir / "nan-run.png"))
    assert page.errors == []


def test_histograms_pick_a_run_and_log_their_counts(site, pages, output_dir):
    page = open_page(site, ["full-cockpit", "nan-run"], pages)
    title = "Gradient element histogram"
    card = f"xpath=//div[contains(@class,'card')][.//span[text()='{title}']]"
    steps = card_js("return gd.data[0] ? Math.max(...gd.data[0].x) : 0;")
    page.wait_for_function(f"({steps})('{title}') > 0", timeout=30_000)
    assert "showing full-cockpit" in page.inner_text(
        f"{card}//div[contains(@class,'card-status')]"
    )
    # The log button says what the count axis is, and switches it.
    count_axis = card_js("return gd.layout.xaxis2.type;")
    page.wait_for_function(f"({count_axis})('{title}') === 'log'")
    assert "btn-on" in page.get_attribute(f"{card}//button[text()='log']", "class")
    page.click(f"{card}//button[text()='log']")
    page.wait_for_function(f"({count_axis})('{title}') === 'linear'")
    assert (
        page.evaluate(card_js("return gd.layout.yaxis.title.text;"), title)
        == "gradient element"
    )
    # Pick the other run: its snapshots replace the first run's.
    page.click(f"{card}//*[contains(@class,'card-run')]//input[@value='nan-run']")
    page.wait_for_function(f"({steps})('{title}') < 60", timeout=30_000)
    status = page.inner_text(f"{card}//div[contains(@class,'card-status')]")
    assert "showing nan-run" in status
    assert page.evaluate(count_axis, title) == "linear"  # the log choice stays
    page.screenshot(path=str(output_dir / "histogram-pick.png"))
    assert page.errors == []


def test_legends_leave_room_and_lines_wear_run_colours(site, pages, output_dir):
    runs = ["full-cockpit", "nan-run", "agent-run"]
    page = open_page(site, runs, pages)
    plot_height = card_js("return gd._fullLayout._size.h;")
    for title in ("Alpha", "Gradient tests", "Mini-batch loss"):
        wait_points(page, title, 3)
        # The card's graph is 250 px: a legend may not take more than a row.
        assert page.evaluate(plot_height, title) > 130, title
    hover = card_js("return gd._fullLayout.hovermode;")
    assert page.evaluate(hover, "Mini-batch loss") == "x unified"
    page.screenshot(path=str(output_dir / "three-runs.png"), full_page=True)
    # Per layer: no legend in the card, all of them in the enlarged panel.
    select_runs(page, ["full-cockpit"])
    page.click("#layers input[value=layers]")
    lines = card_js("return gd.data.filter(t => t.mode === 'lines').length;")
    page.wait_for_function(f"({lines})('Gradient norm') > 4", timeout=30_000)
    card = "xpath=//div[contains(@class,'card')][.//span[text()='Gradient norm']]"
    page.click(f"{card}//button[text()='⤢']")
    page.wait_for_selector(".card-big")
    shown = card_js("return gd._fullLayout.showlegend;")
    page.wait_for_function(f"({shown})('Gradient norm') === true")
    page.keyboard.press("Escape")
    page.wait_for_function(f"({shown})('Gradient norm') === false")
    page.click("#layers input[value=total]")
    # One run: its total line wears the run's colour from the run list.
    swatch = page.evaluate(
        'getComputedStyle(document.querySelector("#run-list input[value='
        "'full-cockpit']\").closest('label').querySelector('.swatch'))"
        ".backgroundColor"
    )
    color = page.evaluate(
        card_js(
            "const d = document.createElement('div');"
            "d.style.color = gd.data.find(t => t.mode === 'lines').line.color;"
            "document.body.appendChild(d); const rgb = getComputedStyle(d).color;"
            "d.remove(); return rgb;"
        ),
        "Mini-batch loss",
    )
    assert color == swatch
    assert page.errors == []
