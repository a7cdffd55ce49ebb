"""Agent-send → browser-drawn latency: from a step's frame leaving the training loop
to the point being in the loss panel's plot data in a real browser.

A real ``glasscockpit serve`` subprocess, headless Debian Chromium via Playwright
(``tests/e2e/harness.py``), and a real training loop (a small MLP, ``loss`` tracked
every step, ``--interval`` seconds between steps) in a thread of this process. The
agent's send time of step ``s`` is the wall clock right after its ``cockpit.step``
block (the frame is handed to the transport there; the frame's own ``wall_time`` is
taken a moment earlier). In the page, a 5 ms ``setInterval`` scans the loss card's
Plotly data (``.card`` whose text contains "loss", preferring "Mini-batch loss") and
records ``Date.now()`` the first time each step appears on an x-axis. Both clocks are
this machine's wall clock. Latency = first seen − sent; p50/p95 over the run.

    python -m bench.dashboard_latency [--steps 300] [--interval 0.05] [--json out]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

# Installed in the page before the first poll; window.__seen maps step → first ms.
OBSERVER_JS = """() => {
  window.__seen = {};
  const find = () => {
    const cards = [...document.querySelectorAll('.card')];
    let card = cards.find(c => c.innerText.includes('Mini-batch loss'));
    if (!card) card = cards.find(c => /loss/i.test(c.innerText.split('\\n')[0] || ''));
    return card && card.querySelector('.js-plotly-plot');
  };
  window.__observer = setInterval(() => {
    const plot = find();
    if (!plot || !plot.data) return;
    const now = Date.now();
    for (const trace of plot.data) {
      const xs = trace.x || [];
      for (let i = xs.length - 1; i >= 0; i--) {
        const k = String(xs[i]);
        if (k in window.__seen) break;
        window.__seen[k] = now;
      }
    }
  }, 5);
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _train(
    server: str, run: str, steps: int, interval: float, sent: dict[int, float]
) -> None:
    import torch
    from torch import nn

    from glasscockpit.agent import Cockpit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # Every step sends a frame (no overhead budget): each one's latency counts.
    cockpit = Cockpit(
        model, opt, run=run, server=server, instruments=["loss"], budget=None
    )
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    try:
        for step in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            with cockpit.step(step, loss=loss):
                loss.backward()
            sent[step] = time.time() * 1e3
            opt.step()
            time.sleep(interval)
    finally:
        cockpit.close()


def measure(steps: int, interval: float, warmup: int) -> dict[str, Any]:
    """Run the server, the browser and the loop; return latencies in ms."""
    import torch

    from tests.e2e.harness import browser, server_process

    torch.set_num_threads(1)
    sent: dict[int, float] = {}
    ready = float("inf")
    with server_process(_free_port()) as base, browser() as b:
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        # The run must exist before the page loads, so its card is there.
        run = f"latency-{int(time.time())}"
        trainer = threading.Thread(
            target=_train,
            args=(base.replace("http", "ws"), run, steps, interval, sent),
        )
        trainer.start()
        try:
            page.goto(base + "/")
            page.wait_for_selector(".card .js-plotly-plot", timeout=60_000)
            page.evaluate(OBSERVER_JS)
            # Points already drawn when the observer starts have no draw time.
            ready = time.time() * 1e3 + 50
        finally:
            trainer.join()
        # Let the last points arrive (sub-second target; wait well beyond it).
        time.sleep(3.0)
        seen: dict[str, float] = page.evaluate("() => window.__seen")
    timed = {s: t for s, t in sent.items() if s >= warmup and t > ready}
    lat = sorted(seen[str(s)] - t for s, t in timed.items() if str(s) in seen)
    missing = sum(1 for s in timed if str(s) not in seen)
    if not lat:
        raise RuntimeError("no step reached the loss panel")
    return {
        "steps": steps,
        "interval_s": interval,
        "measured": len(lat),
        "missing": missing,
        "p50_ms": statistics.median(lat),
        "p95_ms": lat[min(len(lat) - 1, int(len(lat) * 0.95))],
        "max_ms": lat[-1],
        "min_ms": lat[0],
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and print the latencies (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--interval", type=float, default=0.05, help="s between steps")
    parser.add_argument(
        "--warmup", type=int, default=50, help="steps left out (page loading)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    res = measure(args.steps, args.interval, args.warmup)
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
