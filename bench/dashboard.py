"""Dashboard responsiveness: one very long run, then many runs overlaid.

Run from the repository root::

    .venv/bin/python -m bench.dashboard --steps 1000000 --runs 20 --run-steps 5000

What it does, per scenario:

1. starts the real server (uvicorn in a thread, dashboard mounted) and ingests
   synthetic full-Cockpit frames (``bench.cockpit_frames``: every gauge, 21
   instruments) straight into its store with ``RunStore.ingest``, the call the
   websocket route makes, so ingest speed does not limit the run length;
2. keeps the runs live (new steps at ``--rate`` steps/s per run) while headless
   Chromium (Playwright) opens the dashboard at 1700x1300;
3. measures **time to first render** (navigation, or the "all shown" click for
   the overlay, until every card on screen has drawn data) and the **per-tick
   callback time** (browser-observed round trip of each ``tick`` request: server
   work, JSON, network on loopback; medians and p95 over ``--seconds``), and
   the same tick logic timed in-process over every panel (server CPU only).

Numbers are printed as a Markdown table (docs/benchmarks-dashboard.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

import numpy as np

from bench import cockpit_frames as cf
from glasscockpit.dashboard.live import RunData, update_panel
from glasscockpit.dashboard.model import ViewOptions, build_panels
from glasscockpit.server.provider import StoreProvider
from glasscockpit.server.serve import serve_in_thread
from glasscockpit.server.settings import Settings
from glasscockpit.server.store import RunStore
from tests.conftest import free_port
from tests.e2e.harness import browser

VIEWPORT = {"width": 1700, "height": 1300}
DRAWN_JS = """(want) => {
  const cards = [...document.querySelectorAll('.card')].filter(c => {
    const r = c.getBoundingClientRect();
    return r.top < window.innerHeight && r.bottom > 0;
  });
  if (!cards.length) return false;
  const runs = document.querySelector('.grid-runs');
  if (!runs || runs.getAttribute('data-runs').split(' ').length !== want) return false;
  return cards.every(c => {
    const gd = c.querySelector('.js-plotly-plot');
    return gd && gd.data && gd.data.some(t => ['x', 'z'].some(k => t[k] &&
      (t[k].length > 0 || (t[k].bdata || '').length > 0)));
  });
}"""


def start(port: int) -> RunStore:
    """The real server on 127.0.0.1:port; returns its store."""
    server, _ = serve_in_thread(Settings(port=port, stale_after_s=3600))
    app: Any = server.config.loaded_app
    while hasattr(app, "app") and not hasattr(app, "state"):
        app = app.app
    store: RunStore = app.state.store
    return store


def ingest(store: RunStore, run: str, steps: int, seed: int) -> float:
    """Hello plus ``steps`` readings (histograms every 1000 steps); seconds taken."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    store.ingest(cf.hello(run))
    wall = time.time() - steps * 0.01
    for s in range(steps):
        store.ingest(cf.readings(run, s, rng, every=1000, wall_time=wall + s * 0.01))
    return time.perf_counter() - t0


class Live(threading.Thread):
    """Appends steps to every run at ``rate`` steps/s until stopped."""

    def __init__(self, store: RunStore, runs: dict[str, int], rate: float) -> None:
        super().__init__(daemon=True)
        self.store, self.next, self.rate = store, dict(runs), rate
        self.stop = threading.Event()
        self.rng = np.random.default_rng(99)

    def run(self) -> None:
        while not self.stop.wait(1 / self.rate):
            for run, step in self.next.items():
                self.store.ingest(cf.readings(run, step, self.rng, every=1000))
                self.next[run] = step + 1


def browser_times(base: str, runs: int, seconds: float) -> dict[str, float]:
    """Time to first render and tick round trips, read from a real browser."""
    ticks: list[float] = []
    sizes: list[int] = []

    def finished(request: Any) -> None:
        body = request.post_data or ""
        if "_dash-update-component" in request.url and "panel-cursor" in body:
            ticks.append(request.timing["responseEnd"])
            sizes.append(request.sizes()["responseBodySize"])

    with browser() as b:
        page = b.new_page(viewport=VIEWPORT)
        t0 = time.perf_counter()
        page.goto(base + "/")
        if runs > 1:
            page.wait_for_function(DRAWN_JS, arg=1, timeout=120_000)
            page.wait_for_function(
                f"document.querySelectorAll('#run-list input').length === {runs}"
            )
            t0 = time.perf_counter()
            page.click("#run-select-all")
        page.wait_for_function(DRAWN_JS, arg=runs, timeout=120_000, polling=50)
        first = time.perf_counter() - t0
        page.on("requestfinished", finished)
        page.evaluate(LONGTASKS_JS)
        before = page.evaluate(POINTS_JS)
        page.wait_for_timeout(seconds * 1000)
        after = page.evaluate(POINTS_JS)
        busy = page.evaluate("() => window.__busy")
        page.remove_listener("requestfinished", finished)
    _ = page  # closed with the browser
    return {
        "first_render_s": first,
        "tick_median_ms": statistics.median(ticks),
        "tick_p95_ms": float(np.percentile(ticks, 95)),
        "ticks": len(ticks),
        "tick_kb_median": statistics.median(sizes) / 1024,
        "gradnorm_points_gained": after - before,
        "browser_busy_pct": 100 * busy / (seconds * 1000),
    }


#: Sums the browser's long tasks (> 50 ms of main-thread work) from now on.
LONGTASKS_JS = """() => { window.__busy = 0;
  new PerformanceObserver(l => l.getEntries().forEach(e => window.__busy += e.duration))
    .observe({type: 'longtask'}); }"""


POINTS_JS = """() => {
  const c = [...document.querySelectorAll('.card')].find(
    c => c.querySelector('.card-title').innerText === 'Gradient norm');
  const gd = c && c.querySelector('.js-plotly-plot');
  return gd && gd.data[0] ? gd.data[0].x.length : 0;
}"""


def server_times(store: RunStore, runs: list[str], iters: int) -> dict[str, float]:
    """The tick's work for every panel (not only visible ones), in-process."""
    provider = StoreProvider(store, 3600)
    details = {r: provider.run_detail(r) for r in runs}
    extras = {r: provider.instrument_panels(r) for r in runs}
    panels = build_panels(runs, details, extras)
    colors = dict.fromkeys(runs, "#000000")
    opts = ViewOptions()
    cursor: dict[str, Any] = {}
    t0 = time.perf_counter()
    for p in panels:  # the first drawing
        _, _, cursor[p["id"]] = update_panel(
            RunData(provider, runs), p, colors, opts, False, None
        )
    full = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        time.sleep(0.1)  # let the live thread add steps
        t0 = time.perf_counter()
        rd = RunData(provider, runs)
        for p in panels:
            _, _, cursor[p["id"]] = update_panel(
                rd, p, colors, opts, False, cursor[p["id"]]
            )
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "server_full_draw_ms": full * 1000,
        "server_tick_median_ms": statistics.median(times),
        "panels": len(panels),
    }


def scenario(
    name: str, runs: dict[str, int], args: argparse.Namespace
) -> dict[str, Any]:
    """Ingest, go live, measure in the browser and in-process."""
    port = free_port()
    store = start(port)
    ingest_s = sum(ingest(store, r, n, i) for i, (r, n) in enumerate(runs.items()))
    live = Live(store, runs, args.rate)
    live.start()
    try:
        out = browser_times(f"http://127.0.0.1:{port}", len(runs), args.seconds)
        out |= server_times(store, list(runs), args.iters)
    finally:
        live.stop.set()
        live.join()
    steps = sum(runs.values())
    return {
        "scenario": name,
        "steps_ingested": steps,
        "ingest_us_per_step": ingest_s / steps * 1e6,
        **out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000, help="long run")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--run-steps", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=20, help="live steps/s/run")
    parser.add_argument("--seconds", type=float, default=15, help="ticks observed")
    parser.add_argument("--iters", type=int, default=30, help="in-process ticks")
    args = parser.parse_args()
    results = [
        scenario(f"1 run × {args.steps:,} steps", {"long": args.steps}, args),
        scenario(
            f"{args.runs} runs × {args.run_steps:,} steps",
            {f"run-{i:02d}": args.run_steps for i in range(args.runs)},
            args,
        ),
    ]
    keys = list(results[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in results:
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()]
        print("| " + " | ".join(cells) + " |")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
