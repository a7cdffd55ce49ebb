"""What the rules cost: µs per frame in the server's ingest and in the agent.

Server: the zoo's healthy runs' frames, through the wire codec, ingested into a
``RunStore`` with the rules on and with every rule off; each run's diagnoser
also times itself inside ingest. Agent: a training loop with the default
preset, with the rules on and off (``GLASSCOCKPIT_DIAGNOSIS_DISABLE=all``
semantics), paired blocks, median over repeats.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch.nn import functional as F  # noqa: N812 - torch convention

from bench.diagnosis.models import Spec, build
from bench.diagnosis.tasks import make_data
from bench.diagnosis.zoo import Result
from glasscockpit.agent import Cockpit
from glasscockpit.diagnosis import DiagnosisSettings
from glasscockpit.protocol import decode, encode
from glasscockpit.server.store import RunStore

OFF = DiagnosisSettings(disabled=frozenset({"all"}))


def _ingest(frames: list[Any], settings: DiagnosisSettings) -> tuple[float, float]:
    """(µs per frame of the whole ingest, µs per frame inside the diagnosers)."""
    store = RunStore(diagnosis=settings)
    start = time.perf_counter()
    for f in frames:
        store.ingest(f)
    total = time.perf_counter() - start
    inside = sum(r.diagnoser.seconds for r in store.runs.values())
    return 1e6 * total / len(frames), 1e6 * inside / len(frames)


def server_overhead(results: list[Result], repeats: int = 5) -> list[str]:
    """Table rows: ingest µs/frame with the rules on and off, and the rules' own."""
    frames = [
        decode(encode(f)) for r in results if r.case.failure == "healthy" for f in r.log
    ]
    if not frames:
        return []
    on, off, inside = [], [], []
    for _ in range(repeats):
        a, b = _ingest(frames, DiagnosisSettings()), _ingest(frames, OFF)[0]
        on.append(a[0])
        inside.append(a[1])
        off.append(b)
    med = statistics.median
    return [
        f"| server | ingest of a frame, rules on ({len(frames)} frames of the "
        f"healthy runs, median of {repeats}) | {med(on):.0f} |",
        f"| server | ingest of a frame, every rule off | {med(off):.0f} |",
        f"| server | the diagnoser alone, inside ingest (history + rules) | "
        f"{med(inside):.0f} |",
    ]


def _train(steps: int, settings: DiagnosisSettings) -> tuple[float, float]:
    """(ms per step, µs per frame in the agent's diagnoser) of an MLP run."""
    torch.manual_seed(0)
    model = build(Spec("mlp"))
    data = make_data("mlp", 2048, 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cockpit = Cockpit(model, opt, server=None, run="overhead", diagnosis=settings)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, 2048, (32,), generator=gen)
        opt.zero_grad()
        losses = F.cross_entropy(model(data.x[idx]), data.y[idx], reduction="none")
        loss = losses.mean()
        with cockpit.step(step, loss=loss, batch_size=32, losses=losses):
            loss.backward()
        opt.step()
    wall = time.perf_counter() - start
    cockpit.close()
    diag = cockpit._diagnosis
    us = diag.diagnoser.us_per_frame if diag is not None else 0.0
    return 1e3 * wall / steps, us


def agent_overhead(steps: int = 300, repeats: int = 3) -> list[str]:
    """Table rows: step time with the rules on and off, and the rules' own cost."""
    on, off, inside = [], [], []
    for _ in range(repeats):
        a = _train(steps, DiagnosisSettings())
        b = _train(steps, OFF)
        on.append(a[0])
        inside.append(a[1])
        off.append(b[0])
    med = statistics.median
    return [
        f"| agent | diagnoser per frame fed (economy preset, MLP, {steps} steps, "
        f"median of {repeats}) | {med(inside):.0f} |",
        f"| agent | µs per training step (not per frame), rules on / off, default "
        f"budget (its timed agent phases include the rules) | "
        f"{1e3 * med(on):.0f} / {1e3 * med(off):.0f} |",
    ]
