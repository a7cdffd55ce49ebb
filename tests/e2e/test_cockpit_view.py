"""The cockpit view in a real browser: every panel of a full run on one screen."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import free_port
from tests.e2e.harness import browser, server_process
from tests.e2e.test_dashboard import FULL_PANELS, Feeder, card_js, select_runs

pytestmark = pytest.mark.e2e

SIZES = ((1600, 1000), (1366, 768))


@pytest.fixture(scope="module")
def site() -> Iterator[dict[str, Any]]:
    with server_process(free_port()) as base:
        feeder = Feeder(
            base.replace("http", "ws"), "full-cockpit", 300, 0.0, frozenset()
        )
        feeder.start()
        feeder.join(60)
        assert feeder.error is None, feeder.error
        with browser() as b:
            yield {"base": base, "browser": b}


def open_cockpit(site: dict[str, Any], width: int, height: int) -> Any:
    page = site["browser"].new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(site["base"] + "/")
    select_runs(page, ["full-cockpit"])
    page.errors = errors
    return page


CARDS_JS = """() => [...document.querySelectorAll('.card')].map(c => {
  const r = c.getBoundingClientRect();
  const gd = c.querySelector('.js-plotly-plot');
  return {title: c.querySelector('.card-title').innerText,
          top: r.top, bottom: r.bottom, left: r.left, right: r.right,
          plot: gd && gd._fullLayout ? gd._fullLayout._size.h : 0,
          traces: gd && gd.data ? gd.data.length : 0};
})"""


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_every_panel_on_one_screen(site, width, height, output_dir):
    page = open_cockpit(site, width, height)
    try:
        page.wait_for_function(
            f"document.querySelectorAll('.card').length === {FULL_PANELS}",
            timeout=30_000,
        )
        page.wait_for_function(
            f"({CARDS_JS})().every(c => c.traces > 0)", timeout=30_000
        )
        page.wait_for_timeout(500)  # plots settle into their boxes
        cards = page.evaluate(CARDS_JS)
        for c in cards:  # inside the window, and a plot one can read
            assert c["top"] >= 0 and c["bottom"] <= height + 0.5, c
            assert c["left"] >= 0 and c["right"] <= width + 0.5, c
            assert c["plot"] >= 45, c
        scroll = page.evaluate(
            "[document.scrollingElement.scrollHeight, document.scrollingElement"
            ".scrollWidth]"
        )
        assert scroll[0] <= height and scroll[1] <= width, scroll
        page.screenshot(path=str(output_dir / f"cockpit-{width}x{height}.png"))
        # The long grid is still there, a click away.
        page.click("#view input[value=grid]")
        page.wait_for_function(
            "document.scrollingElement.scrollHeight > innerHeight * 1.5"
        )
        assert page.errors == []
    finally:
        page.close()


def test_gradient_test_plane(site, output_dir):
    page = open_cockpit(site, 1600, 1000)
    try:
        title = "Gradient test plane"
        page.wait_for_function(
            card_js("return gd.data.length === 2 && gd.data[0].x.length > 0;"),
            arg=title,
            timeout=30_000,
        )
        plane = page.evaluate(
            card_js(
                "const r = gd.layout.shapes.find(s => s.type === 'rect');"
                "return {rect: [r.x0, r.x1, r.y0, r.y1],"
                "steps: gd.data[0].marker.color,"
                "x: gd.data[0].x, y: gd.data[0].y, now: [gd.data[1].x, gd.data[1].y],"
                "titles: [gd.layout.xaxis.title.text, gd.layout.yaxis.title.text]};"
            ),
            title,
        )
        assert plane["rect"] == [0, 1, 0, 1]  # both tests accept inside
        steps = plane["steps"]
        assert steps == sorted(steps) and steps[-1] == 299  # colour: iteration
        assert plane["now"] == [[plane["x"][-1]], [plane["y"][-1]]]
        assert "orthogonality" in plane["titles"][0]
        assert "inner-product" in plane["titles"][1]
        # The tests' own card names each test in its legend.
        names = page.evaluate(
            card_js("return gd.data.map(t => t.name);"), "Gradient tests"
        )
        assert {"Norm test", "Inner-product test", "Orthogonality test"} <= set(names)
        page.screenshot(path=str(output_dir / "plane.png"))
        assert page.errors == []
    finally:
        page.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_theme_follows_the_system(site, scheme, output_dir):
    page = site["browser"].new_page(
        viewport={"width": 1600, "height": 1000}, color_scheme=scheme
    )
    try:
        page.goto(site["base"] + "/")
        select_runs(page, ["full-cockpit"])
        bg = card_js("return gd._fullLayout.paper_bgcolor;")
        want = "#111827" if scheme == "dark" else "#fff"
        page.wait_for_function(
            f"({bg})('Mini-batch loss') === '{want}'", timeout=30_000
        )
        body = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (body == "rgb(11, 18, 32)") == (scheme == "dark"), body
        page.wait_for_timeout(1000)
        page.screenshot(path=str(output_dir / f"cockpit-{scheme}.png"))
    finally:
        page.close()
