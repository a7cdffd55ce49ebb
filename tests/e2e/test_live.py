"""End to end: training loop → agent → server → REST and browser."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from glasscockpit.agent import Cockpit
from tests.conftest import free_port
from tests.e2e.harness import browser, get_json, server_process

pytestmark = pytest.mark.e2e


def train(cockpit: Cockpit, steps: int, delay: float = 0.0) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    opt = cockpit.optimizer
    for step in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(cockpit.model(x), y)
        with cockpit.step(step, loss=loss):
            loss.backward()
        opt.step()
        time.sleep(delay)


def make_cockpit(base: str, run: str) -> Cockpit:
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # Explicit instruments: the assertions below name them, whatever a preset holds.
    return Cockpit(
        model,
        opt,
        run=run,
        server=base.replace("http", "ws"),
        instruments=["loss", "grad_norm", "lr"],
        budget=None,  # every step tracked: the assertions count them
    )


def test_every_tracked_step_arrives():
    with server_process(free_port()) as base:
        cockpit = make_cockpit(base, "e2e-rest")
        train(cockpit, 200)
        cockpit.close()
        assert cockpit.stats.dropped == 0
        run = get_json(base + "/v1/runs/e2e-rest")
        assert run["status"] == "finished"
        assert run["last_step"] == 199
        names = {i["name"]: i for i in run["instruments"]}
        # cockpit.log's epoch metrics are always declared in the hello frame.
        assert set(names) == {"loss", "grad_norm", "lr", "epoch_loss", "epoch_accuracy"}
        assert names["grad_norm"]["keys"][0] == "total"
        assert len(names["grad_norm"]["keys"]) == 5  # total + 2 weights + 2 biases
        loss = get_json(base + "/v1/runs/e2e-rest/series/loss?max_points=1000")
        assert loss["step"] == list(range(200))
        assert loss["count"] == 200


def test_browser_grid_updates_live(output_dir):
    with server_process(free_port()) as base, browser() as b:
        cockpit = make_cockpit(base, "e2e-browser")
        trainer = threading.Thread(target=train, args=(cockpit, 400, 0.02))
        trainer.start()
        try:
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(base + "/")
            page.wait_for_selector(".card .js-plotly-plot", timeout=30_000)
            count_js = """() => {
                const cards = [...document.querySelectorAll('.card')];
                const card = cards.find(c => c.innerText.includes('Mini-batch loss'));
                const plot = card && card.querySelector('.js-plotly-plot');
                return plot && plot.data && plot.data[0] ? plot.data[0].x.length : 0;
            }"""
            page.wait_for_function(f"({count_js})() > 0", timeout=30_000)
            first = page.evaluate(count_js)
            page.wait_for_function(f"({count_js})() > {first + 20}", timeout=30_000)
            second = page.evaluate(count_js)
            assert second > first
            assert "live" in page.inner_text(".run-status")
            titles = page.inner_text(".grid-groups")
            for title in ("Mini-batch loss", "Gradient norm", "Learning rate"):
                assert title in titles
            page.screenshot(path=str(output_dir / "grid.png"), full_page=True)
        finally:
            trainer.join()
            cockpit.close()
