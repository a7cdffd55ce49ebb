"""The view's state lives in the URL: a reload keeps it, a link reproduces it."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from tests.conftest import free_port
from tests.e2e.harness import browser, server_process
from tests.e2e.test_dashboard import Feeder, select_runs

pytestmark = pytest.mark.e2e


def state(page):
    return page.evaluate(
        """() => ({
          runs: document.querySelector('.grid-runs').getAttribute('data-runs')
            .split(' ').sort().join(' '),
          filter: document.querySelector('#run-filter').value,
          x: document.querySelector('#x-axis input:checked').value,
          lines: document.querySelector('#layers input:checked').value,
          view: document.querySelector('#view input:checked').value,
          big: (document.querySelector('.card-big') || {dataset: {}}).dataset.panel,
          smoothing: document.querySelector('#smoothing [role=slider]')
            .getAttribute('aria-valuenow'),
        })"""
    )


def test_reload_and_link_keep_the_view(output_dir):
    with server_process(free_port()) as base, browser() as b:
        ws = base.replace("http", "ws")
        for run in ("alpha-run", "beta-run", "other"):
            feeder = Feeder(ws, run, 40, 0.0, frozenset())
            feeder.start()
            feeder.join(60)
        page = b.new_page(viewport={"width": 1600, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        select_runs(page, ["alpha-run", "beta-run"])
        page.fill("#run-filter", "-run")
        page.click("#x-axis input[value=wall]")
        page.click("#layers input[value=layers]")
        page.click("#view input[value=grid]")
        page.focus("#smoothing [role=slider]")
        page.keyboard.press("Home")
        big = "xpath=//div[contains(@class,'card')][.//span[text()='Gradient norm']]"
        page.click(f"{big}//button[@title='enlarge']")
        page.wait_for_selector(".card-big")
        page.wait_for_function("location.search.includes('big=')")
        want = {
            "runs": "alpha-run beta-run",
            "filter": "-run",
            "x": "wall",
            "lines": "layers",
            "view": "grid",
            "big": "grad_norm",
            "smoothing": "0",
        }
        assert state(page) == want
        query = parse_qs(urlparse(page.url).query)
        assert sorted(query["run"]) == ["alpha-run", "beta-run"]
        page.reload()
        page.wait_for_selector(".card-big", timeout=30_000)
        assert state(page) == want
        # The same link in a fresh page shows the same view.
        other = b.new_page(viewport={"width": 1600, "height": 1000})
        other.goto(page.url)
        other.wait_for_selector(".card-big", timeout=30_000)
        assert state(other) == want
        page.keyboard.press("Escape")
        page.wait_for_function("!location.search.includes('big=')")
        assert errors == []
