"""The cockpit view in a real browser: main thread, control redraws, send→drawn.

Run from the repository root::

    .venv/bin/python -m bench.dashboard_cockpit [--live 3 20] [--long 1000000]

For each ``--live`` count N: the real server (uvicorn in a thread, dashboard
mounted), N synthetic full-Cockpit runs (``bench.cockpit_frames``: 21
instruments, 18 panels) kept live at ``--rate`` steps/s each by ingesting frames
into the server's store (``RunStore.ingest``, the call the websocket route
makes; a frame's send time is its ``wall_time``, taken when it is built), and
headless Chromium at 1600x1000 showing all N runs in the cockpit view. Measured:

* **main thread busy**: the sum of the page's long tasks (> 50 ms) over
  ``--seconds``, as a share of that time;
* **send→drawn**: for every (run, step) of the loss panel, the first time a
  5 ms poll of the plot's data sees it, minus the frame's send time; p50/p95;
* **control redraws**: the log-y button of the loss panel (a browser-side
  relayout) and the x axis step↔wall time (a server redraw of every panel),
  each clicked ``--clicks`` times, from the click until the plot shows the
  change and the next animation frame ran; p50/p95.

``--long`` S: a finished run of S steps ingested first, then the time from
navigation to every card of the cockpit view holding data (first screen).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

import numpy as np

from bench import cockpit_frames as cf
from bench.dashboard import LONGTASKS_JS, ingest, start
from glasscockpit.server.store import RunStore
from tests.conftest import free_port
from tests.e2e.harness import browser

VIEWPORT = {"width": 1600, "height": 1000}

SEEN_JS = """() => {
  window.__seen = {};
  const loss = () => {
    const c = [...document.querySelectorAll('.card')].find(
      c => c.querySelector('.card-title').innerText === 'Mini-batch loss');
    return c && c.querySelector('.js-plotly-plot');
  };
  window.__poll = setInterval(() => {
    const gd = loss();
    if (!gd || !gd.data) return;
    const now = Date.now();
    for (const t of gd.data) {
      const xs = t.x || [];
      for (let i = xs.length - 1; i >= 0; i--) {
        const k = t.name + '|' + xs[i];
        if (k in window.__seen) break;
        window.__seen[k] = now;
      }
    }
  }, 5);
}"""

ALL_DRAWN_JS = """(n) => {
  const cards = [...document.querySelectorAll('.card')];
  const runs = document.querySelector('.grid-runs');
  if (!cards.length || !runs) return false;
  if (runs.getAttribute('data-runs').split(' ').length !== n) return false;
  return cards.every(c => {
    const gd = c.querySelector('.js-plotly-plot');
    return gd && gd.data && gd.data.some(t => ['x', 'z'].some(k => t[k] &&
      (t[k].length > 0 || (t[k].bdata || '').length > 0)));
  });
}"""

#: Click the loss panel's log button; ms until the axis changed and a frame ran.
LOG_CLICK_JS = """async () => {
  const c = [...document.querySelectorAll('.card')].find(
    c => c.querySelector('.card-title').innerText === 'Mini-batch loss');
  const gd = c.querySelector('.js-plotly-plot');
  const before = gd._fullLayout.yaxis.type;
  const t0 = performance.now();
  [...c.querySelectorAll('button')].find(b => b.innerText === 'log').click();
  while (gd._fullLayout.yaxis.type === before) {
    await new Promise(r => requestAnimationFrame(r));
  }
  await new Promise(r => requestAnimationFrame(r));
  return performance.now() - t0;
}"""

#: Switch the x axis; ms until every line panel shows it and a frame ran.
X_CLICK_JS = """async (to) => {
  const want = to === 'wall' ? 'date' : 'linear';
  const t0 = performance.now();
  document.querySelector(`#x-axis input[value=${to}]`).click();
  const done = () => [...document.querySelectorAll('.card')].every(c => {
    const gd = c.querySelector('.js-plotly-plot');
    const line = gd && gd.data && gd.data.some(t => t.type === 'scatter' && t.mode &&
      t.mode.includes('lines'));
    return !line || gd._fullLayout.xaxis.type === want;
  });
  while (!done()) { await new Promise(r => requestAnimationFrame(r)); }
  await new Promise(r => requestAnimationFrame(r));
  return performance.now() - t0;
}"""


class Live(threading.Thread):
    """Appends a step to every run at ``rate`` steps/s; records send times (ms)."""

    def __init__(self, store: RunStore, runs: list[str], rate: float) -> None:
        super().__init__(daemon=True)
        self.store, self.runs, self.rate = store, runs, rate
        self.step = 0
        self.sent: dict[str, float] = {}
        self.stop = threading.Event()
        self.rng = np.random.default_rng(7)

    def run(self) -> None:
        for run in self.runs:
            self.store.ingest(cf.hello(run))
        while not self.stop.wait(1 / self.rate):
            for run in self.runs:
                frame = cf.readings(run, self.step, self.rng)
                self.store.ingest(frame)
                self.sent[f"{run}|{self.step}"] = frame.wall_time * 1e3
            self.step += 1


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def live(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """N live runs in the cockpit view: busy share, send→drawn, control redraws."""
    port = free_port()
    store = start(port)
    runs = [f"live-{n}-{i:02d}" for i in range(n)]
    feeder = Live(store, runs, args.rate)
    feeder.start()
    time.sleep(2)
    query = "&".join(f"run={r}" for r in runs)
    with browser() as b:
        page = b.new_page(viewport=VIEWPORT)
        page.goto(f"http://127.0.0.1:{port}/?view=cockpit&{query}")
        page.wait_for_function(ALL_DRAWN_JS, arg=n, timeout=180_000, polling=100)
        page.evaluate(SEEN_JS)
        t_obs = time.time() * 1e3 + 100
        page.evaluate(LONGTASKS_JS)
        page.wait_for_timeout(args.seconds * 1000)
        busy = page.evaluate("() => window.__busy")
        log_ms = [page.evaluate(LOG_CLICK_JS) for _ in range(args.clicks)]
        x_ms = []
        for i in range(args.clicks):
            x_ms.append(page.evaluate(X_CLICK_JS, "wall" if i % 2 == 0 else "step"))
        if args.clicks % 2:
            page.evaluate(X_CLICK_JS, "step")
        seen: dict[str, float] = page.evaluate("() => window.__seen")
    feeder.stop.set()
    feeder.join()
    sent = {k: t for k, t in feeder.sent.items() if t > t_obs}
    lat = sorted(seen[k] - t for k, t in sent.items() if k in seen)
    return {
        "runs": n,
        "busy_pct": 100 * busy / (args.seconds * 1000),
        "send_drawn_p50_ms": pct(lat, 50),
        "send_drawn_p95_ms": pct(lat, 95),
        "steps_timed": len(lat),
        "steps_missing": sum(1 for k in sent if k not in seen),
        "log_y_p50_ms": pct(log_ms, 50),
        "log_y_p95_ms": pct(log_ms, 95),
        "x_axis_p50_ms": pct(x_ms, 50),
        "x_axis_p95_ms": pct(x_ms, 95),
    }


def first_screen(steps: int) -> dict[str, Any]:
    """A finished run of ``steps``: navigation until every card holds data."""
    port = free_port()
    store = start(port)
    took = ingest(store, "long", steps, seed=3)
    with browser() as b:
        page = b.new_page(viewport=VIEWPORT)
        t0 = time.perf_counter()
        page.goto(f"http://127.0.0.1:{port}/?view=cockpit&run=long")
        page.wait_for_function(ALL_DRAWN_JS, arg=1, timeout=180_000, polling=20)
        first = time.perf_counter() - t0
    return {"steps": steps, "ingest_s": took, "first_screen_s": first}


def screenshots(folder: str, steps: int = 800) -> None:
    """The cockpit view of one finished full run, both sizes and themes, as PNGs."""
    port = free_port()
    store = start(port)
    rng = np.random.default_rng(11)
    store.ingest(cf.hello("resnet-sgd"))
    wall = time.time() - steps * 0.05
    for s in range(steps):
        store.ingest(cf.readings("resnet-sgd", s, rng, wall_time=wall + s * 0.05))
    with browser() as b:
        for scheme in ("light", "dark"):
            for w, h in ((1600, 1000), (1366, 768)):
                page = b.new_page(
                    viewport={"width": w, "height": h}, color_scheme=scheme
                )
                page.goto(f"http://127.0.0.1:{port}/?view=cockpit&run=resnet-sgd")
                page.wait_for_function(ALL_DRAWN_JS, arg=1, timeout=120_000)
                page.wait_for_timeout(1500)
                page.screenshot(path=f"{folder}/cockpit-{w}x{h}-{scheme}.png")
                page.close()


def main(argv: list[str] | None = None) -> None:
    """Measure and print one Markdown row per scenario."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", type=int, nargs="*", default=[3, 20])
    parser.add_argument("--long", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=10, help="steps/s per run")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--clicks", type=int, default=6)
    parser.add_argument("--shots", help="only write cockpit screenshots here")
    args = parser.parse_args(argv)
    if args.shots:
        screenshots(args.shots)
        return
    rows = [live(n, args) for n in args.live]
    print(
        "| live runs | main thread busy | send→drawn p50 / p95 | log-y p50 / p95 "
        "| x axis p50 / p95 | steps timed (missing) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['runs']} | {r['busy_pct']:.0f} % | {r['send_drawn_p50_ms']:.0f} / "
            f"{r['send_drawn_p95_ms']:.0f} ms | {r['log_y_p50_ms']:.0f} / "
            f"{r['log_y_p95_ms']:.0f} ms | {r['x_axis_p50_ms']:.0f} / "
            f"{r['x_axis_p95_ms']:.0f} ms | {r['steps_timed']} "
            f"({r['steps_missing']}) |"
        )
    if args.long:
        long = first_screen(args.long)
        print(
            f"\nfinished run of {long['steps']:,} steps: first screen "
            f"{long['first_screen_s']:.2f} s (ingest {long['ingest_s']:.0f} s)"
        )
    _ = statistics  # medians come from numpy percentiles


if __name__ == "__main__":
    main()
