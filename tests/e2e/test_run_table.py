"""The run table in a real browser: sort, select two runs, compare their configs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from glasscockpit.agent import Cockpit
from tests.conftest import free_port
from tests.e2e.harness import browser, server_process
from tests.e2e.test_live import train

pytestmark = pytest.mark.e2e


def _cockpit(base: str, run: str, config: dict[str, Any]) -> Cockpit:
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    return Cockpit(
        model,
        opt,
        run=run,
        server=base.replace("http", "ws"),
        instruments=["loss"],
        config=config,
    )


def _column(page: Any, col: str) -> list[str]:
    return list(
        page.eval_on_selector_all(
            f"#run-table td[data-dash-column='{col}']",
            "els => els.map(e => e.innerText.trim())",
        )
    )


def test_sort_select_and_compare_configs():
    with server_process(free_port()) as base, browser() as b:
        for run, lr in (("tbl-a", 0.1), ("tbl-b", 0.3)):
            with _cockpit(base, run, {"lr": lr, "batch_size": 64, "seed": 7}) as c:
                train(c, 3)
        page = b.new_page(viewport={"width": 1600, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        page.wait_for_selector("#run-list input[value='tbl-b']", timeout=30_000)
        page.click("#run-table-toggle")
        page.wait_for_selector("#run-table td[data-dash-column='run']", timeout=15_000)
        assert _column(page, "run") == ["tbl-b", "tbl-a"]  # newest first
        assert _column(page, "config.lr") == ["0.3", "0.1"]
        assert _column(page, "steps") == ["3", "3"]
        # Native sort on the config's lr column: ascending.
        page.click("#run-table th[data-dash-column='config.lr'] .column-header--sort")
        page.wait_for_function(
            "() => [...document.querySelectorAll("
            "\"#run-table td[data-dash-column='run']\")]"
            ".map(e => e.innerText.trim()).join() === 'tbl-a,tbl-b'",
            timeout=10_000,
        )
        # Select both rows: the run list follows and the comparison appears.
        for box in page.query_selector_all("#run-table td.dash-select-cell input"):
            if not box.is_checked():
                box.click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('#run-list input:checked')]"
            ".map(e => e.value).sort().join() === 'tbl-a,tbl-b'",
            timeout=10_000,
        )
        page.wait_for_selector("#run-compare tr.cmp-diff", timeout=10_000)
        diff = page.eval_on_selector_all(
            "#run-compare tr.cmp-diff th", "els => els.map(e => e.innerText)"
        )
        same = page.eval_on_selector_all(
            "#run-compare tr.cmp-same th", "els => els.map(e => e.innerText)"
        )
        assert diff == ["learning rate", "lr"]
        assert {"seed", "batch_size", "batch size", "optimizer"} <= set(same)
        assert errors == []
