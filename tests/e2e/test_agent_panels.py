"""Panels of a real training run in a real browser: constant LR, cockpit.log."""

from __future__ import annotations

import pytest

from tests.conftest import free_port
from tests.e2e.harness import browser, server_process
from tests.e2e.test_dashboard import card_js, select_runs
from tests.e2e.test_live import make_cockpit, train

pytestmark = pytest.mark.e2e


def test_constant_lr_and_every_logged_metric(output_dir):
    with server_process(free_port()) as base, browser() as b:
        cockpit = make_cockpit(base, "const-lr")  # SGD, lr 0.1 throughout
        train(cockpit, 40)
        for epoch, step in enumerate((19, 39)):
            cockpit.log(
                step,
                train_loss=1.0 / (epoch + 1),
                test_loss=1.2 / (epoch + 1),
                train_accuracy=0.5 + 0.1 * epoch,
                test_accuracy=0.45 + 0.1 * epoch,
            )
        cockpit.close()
        page = b.new_page(viewport={"width": 1600, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        select_runs(page, ["const-lr"])
        for title in ("Learning rate", "Epoch loss", "Epoch accuracy"):
            page.wait_for_function(
                card_js("return gd.data.length > 0 && gd._fullLayout.yaxis.range;"),
                arg=title,
                timeout=30_000,
            )
        lr = page.evaluate(
            card_js(
                "const a = gd._fullLayout.yaxis; return [a.type, a.range,"
                "[...gd.querySelectorAll('.ytick text')].map(t => t.textContent)];"
            ),
            "Learning rate",
        )
        kind, (lo, hi), ticks = lr
        # The axis spans a readable range around 0.1, not one ulp of it.
        span = hi - lo if kind == "log" else (hi - lo) / 0.1
        assert span > 1e-3, lr
        assert all(len(t) <= 8 for t in ticks), ticks
        for title, want in (
            ("Epoch loss", {"train", "test"}),
            ("Epoch accuracy", {"train", "test"}),
        ):
            names = page.evaluate(
                card_js("return gd.data.map(t => t.name || '');"), title
            )
            assert want <= set(names), (title, names)
        # Relative time: seconds since the run began, a third x axis.
        page.click("#x-axis input[value=relative]")
        xs = card_js(
            "return gd.layout.xaxis.ticksuffix === ' s' ? gd.data[0].x : null;"
        )
        page.wait_for_function(f"({xs})('Mini-batch loss') !== null")
        rel = page.evaluate(xs, "Mini-batch loss")
        assert 0 <= rel[0] <= rel[-1] < 120, rel
        page.screenshot(path=str(output_dir / "const-lr.png"), full_page=True)
        assert errors == []


def test_sync_zoom_follows_one_panel(output_dir):
    with server_process(free_port()) as base, browser() as b:
        cockpit = make_cockpit(base, "zoom")
        train(cockpit, 60)
        cockpit.close()
        page = b.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(base + "/")
        select_runs(page, ["zoom"])
        for title in ("Mini-batch loss", "Gradient norm"):
            page.wait_for_function(
                card_js("return gd.data.length > 0 && gd._gcSync === true;"),
                arg=title,
                timeout=30_000,
            )
        zoom = card_js("window.Plotly.relayout(gd, {'xaxis.range': [10, 30]});")
        grad_range = card_js("return gd._fullLayout.xaxis.range;")
        page.evaluate(zoom, "Mini-batch loss")  # sync off: the other stays
        page.wait_for_timeout(300)
        assert page.evaluate(grad_range, "Gradient norm") != [10, 30]
        page.click("#sync-x input[value=sync]")
        page.evaluate(zoom, "Mini-batch loss")
        page.wait_for_function(
            f"JSON.stringify(({grad_range})('Gradient norm')) === '[10,30]'"
        )
