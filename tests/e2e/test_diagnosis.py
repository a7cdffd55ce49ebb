"""Diagnoses of a real training run: live on the server, after a restart, after sync.

One dead-ReLU MLP (every hidden layer's bias at -10) and one that diverges (a
learning rate far too large) stream to a real server with a data dir while
recording their frames; the server's REST diagnoses must name the cause, match
the agent's own (same rules, same frames), survive a restart (replayed), and be
the same for the recording uploaded to a fresh server with ``glasscockpit sync``.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from glasscockpit.agent import Cockpit
from glasscockpit.sync import sync_files
from tests.conftest import free_port
from tests.server.harness import live_server


def get(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return json.loads(r.read())


def train(run: str, server: str, record: Path, dead: bool, lr: float) -> Cockpit:
    """40 SGD steps of a small MLP on Gaussian classes, streamed and recorded."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    if dead:
        with torch.no_grad():
            model[0].bias.fill_(-10.0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    cockpit = Cockpit(model, opt, run=run, server=server, record=record, budget=None)
    for step in range(40):
        idx = torch.arange(step * 16, step * 16 + 16) % 256
        opt.zero_grad()
        losses = F.cross_entropy(model(x[idx]), y[idx], reduction="none")
        loss = losses.mean()
        with cockpit.step(step, loss=loss, batch_size=16, losses=losses):
            loss.backward()
        opt.step()
    cockpit.close()
    return cockpit


def made(diagnoses: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """What identifies a diagnosis across processes (not its wall-clock time)."""
    return sorted((d["rule"], d["key"], d["detected_step"]) for d in diagnoses)


def test_live_restart_and_sync_give_the_same_diagnoses(tmp_path: Path) -> None:
    data = tmp_path / "data"
    runs = {"dead-relu": (True, 0.1), "too-fast": (False, 50.0)}
    agent: dict[str, list[tuple[str, str, int]]] = {}
    with live_server(free_port(), data_dir=data) as s:
        for run, (dead, lr) in runs.items():
            cockpit = train(run, s.ws, tmp_path / f"{run}.frames", dead, lr)
            agent[run] = made([d.as_dict() for d in cockpit.diagnoses])
        live = {run: get(s.http, f"/v1/runs/{run}/diagnoses") for run in runs}
    assert {d["rule"] for d in live["dead-relu"]["diagnoses"]} >= {"dead_units"}
    dead = next(d for d in live["dead-relu"]["diagnoses"] if d["rule"] == "dead_units")
    # 0.weight and 0.bias, and 2.weight: its inputs are the dead ReLUs' zeros.
    assert dead["evidence"]["dead_tensors"] == 3
    assert "0.weight, 0.bias, 2.weight" in dead["summary"]
    assert "grad_norm" in dead["panels"] and dead["remedies"] and dead["source"]
    assert {"divergence", "edge_of_stability"} & {
        d["rule"] for d in live["too-fast"]["diagnoses"]
    } or any(d["severity"] == "critical" for d in live["too-fast"]["diagnoses"])
    for run in runs:
        assert made(live[run]["diagnoses"]) == agent[run]
        assert live[run]["frames"] > 40 and live[run]["us_per_frame"] > 0
    # The economy preset tracks no λ_max: the rule says what it needs.
    needs = {u["rule"]: u["needs"] for u in live["dead-relu"]["unavailable"]}
    assert needs["edge_of_stability"] == ["hess_max_ev"]

    with live_server(free_port(), data_dir=data) as s:  # restarted: replayed
        for run in runs:
            replayed = get(s.http, f"/v1/runs/{run}/diagnoses")
            assert made(replayed["diagnoses"]) == made(live[run]["diagnoses"])

    with live_server(free_port()) as s:  # a fresh server gets the recordings
        results = sync_files(
            [tmp_path / f"{run}.frames" for run in runs], s.ws, progress=False
        )
        assert all(not r.error for r in results), results
        for run in runs:
            synced = get(s.http, f"/v1/runs/{run}/diagnoses")
            assert made(synced["diagnoses"]) == made(live[run]["diagnoses"])
