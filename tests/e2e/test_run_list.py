"""The run list in a real browser while runs start and end with the page open."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import free_port
from tests.e2e.harness import browser, server_process
from tests.e2e.test_live import make_cockpit, train

pytestmark = pytest.mark.e2e


def _watch(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "console",
        lambda m: errors.append(m.text) if m.type == "error" else None,
    )
    return errors


def _badge(page: Any, run: str) -> str:
    return str(
        page.evaluate(
            "(run) => { const i = document.querySelector("
            "`#run-list input[value='${run}']`);"
            "const l = i && i.closest('label');"
            "const b = l && l.querySelector('.badge'); return b ? b.innerText : ''; }",
            run,
        )
    )


def test_a_run_started_while_the_page_is_open_appears(output_dir):
    """Serve, start A, open the page, start B: B shows, filter works, A ends."""
    with server_process(free_port()) as base, browser() as b:
        a = make_cockpit(base, "run-a")
        train(a, 3)
        page = b.new_page(viewport={"width": 1600, "height": 1000})
        errors = _watch(page)
        page.goto(base + "/")
        page.wait_for_selector("#run-list input[value='run-a']", timeout=30_000)
        page.wait_for_selector(".card .js-plotly-plot", timeout=30_000)
        # B starts after the page is open (newest first: inserted at index 0).
        b_run = make_cockpit(base, "run-b")
        train(b_run, 3)
        try:
            page.wait_for_selector("#run-list input[value='run-b']", timeout=15_000)
            names = page.eval_on_selector_all(
                "#run-list input", "els => els.map(e => e.value)"
            )
            assert names == ["run-b", "run-a"]
            # The filter still narrows the list and widens it again.
            page.fill("#run-filter", "run-a")
            page.wait_for_function(
                "document.querySelectorAll('#run-list input').length === 1",
                timeout=10_000,
            )
            page.fill("#run-filter", "")
            page.wait_for_function(
                "document.querySelectorAll('#run-list input').length === 2",
                timeout=10_000,
            )
            # A third run, then A ends: its badge follows.
            c_run = make_cockpit(base, "run-c")
            train(c_run, 2)
            page.wait_for_selector("#run-list input[value='run-c']", timeout=15_000)
            assert _badge(page, "run-a") == "live"
            a.close()
            page.wait_for_function(
                "() => { const i = document.querySelector("
                "\"#run-list input[value='run-a']\");"
                "return i && i.closest('label').innerText.includes('finished'); }",
                timeout=15_000,
            )
            page.screenshot(path=str(output_dir / "run-list.png"))
            c_run.close()
        finally:
            a.close()
            b_run.close()
        assert errors == []


def test_a_run_that_raised_inside_its_cockpit_shows_failed():
    with server_process(free_port()) as base, browser() as b:
        with (
            pytest.raises(RuntimeError, match="diverged"),
            make_cockpit(base, "raised") as cockpit,
        ):
            train(cockpit, 3)
            raise RuntimeError("diverged")
        with make_cockpit(base, "clean") as cockpit:
            train(cockpit, 3)
        page = b.new_page(viewport={"width": 1600, "height": 1000})
        errors = _watch(page)
        page.goto(base + "/")
        page.wait_for_selector("#run-list input[value='clean']", timeout=30_000)
        page.wait_for_function(
            "() => { const i = document.querySelector("
            "\"#run-list input[value='raised']\");"
            "return i && i.closest('label').innerText.includes('failed'); }",
            timeout=15_000,
        )
        assert "finished" in _badge(page, "clean")
        assert errors == []
