"""The real server process dies mid-run (SIGKILL) and comes back on the same port.

Training must finish undisturbed, and afterwards the restarted server must hold
every tracked step exactly once, although it kept nothing of the first process
(the store is in memory): the agent learns that from the hello's ack and resends
acknowledged frames from its history, then the spill backlog, then the rest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from glasscockpit.agent import Cockpit
from glasscockpit.agent.transport.websocket import TransportOptions
from glasscockpit.sync import sync_files
from tests.conftest import free_port
from tests.e2e.harness import get_json, server_process

pytestmark = pytest.mark.e2e


@contextmanager
def _killable_server(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``glasscockpit serve`` in a subprocess the test can SIGKILL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "glasscockpit", "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if get_json(f"http://127.0.0.1:{port}/healthz") == {"status": "ok"}:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "no server"
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _wait_state(cockpit: Cockpit, state: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while cockpit.stats.state != state and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cockpit.stats.state == state


def _step(cockpit: Cockpit, step: int, x: torch.Tensor, y: torch.Tensor) -> None:
    cockpit.optimizer.zero_grad()
    loss = nn.functional.cross_entropy(cockpit.model(x), y)
    with cockpit.step(step, loss=loss):
        loss.backward()
    cockpit.optimizer.step()
    time.sleep(0.01)


def test_server_killed_and_restarted_store_holds_every_step_once(
    torch_threads, tmp_path, monkeypatch
):
    monkeypatch.setenv("GLASSCOCKPIT_SPILL_DIR", str(tmp_path))
    port = free_port()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 5))
    x, y = torch.randn(16, 10), torch.randint(0, 5, (16,))
    with _killable_server(port) as proc:
        cockpit = Cockpit(
            model,
            torch.optim.SGD(model.parameters(), lr=0.05),
            run="killed",
            server=f"ws://127.0.0.1:{port}",
            instruments=["loss", "grad_norm", "lr"],
            transport_options=TransportOptions(backoff=(0.05, 0.5)),
            budget=None,  # every step tracked: the assertions count them
        )
        for step in range(0, 30):
            _step(cockpit, step, x, y)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        _wait_state(cockpit, "reconnecting")
        # Training goes on while nothing listens on the port.
        for step in range(30, 60):
            _step(cockpit, step, x, y)
    assert cockpit.stats.state == "reconnecting"
    assert cockpit.stats.spilled > 0
    with server_process(port) as base:
        for step in range(60, 90):
            _step(cockpit, step, x, y)
        cockpit.close()
        series = get_json(f"{base}/v1/runs/killed/series/loss?max_points=100000")
        run = get_json(f"{base}/v1/runs/killed")
    assert series["step"] == list(range(90))
    assert series["count"] == 90
    assert run["status"] == "finished"
    stats = cockpit.stats
    assert stats.dropped == 0 and stats.pending == 0 and stats.reconnects >= 1
    # Everything was delivered, so no spill file is left behind.
    assert not any(tmp_path.iterdir())


def test_sync_command_uploads_a_recording_once(torch_threads, tmp_path):
    port = free_port()
    record = tmp_path / "rec.gcp"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 5))
    x, y = torch.randn(16, 10), torch.randint(0, 5, (16,))
    cockpit = Cockpit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        run="synced",
        server=None,
        instruments=["loss", "grad_norm", "lr"],
        record=record,
        budget=None,  # every step tracked: the assertions count them
    )
    for step in range(20):
        _step(cockpit, step, x, y)
    cockpit.close()
    cmd = [sys.executable, "-m", "glasscockpit", "sync", str(record)]
    with server_process(port) as base:
        outs = []
        for _ in range(2):
            done = subprocess.run(
                [*cmd, "--server", base],
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "GLASSCOCKPIT_TOKEN": ""},
            )
            assert done.returncode == 0, done.stderr
            outs.append(done.stdout)
        series = get_json(f"{base}/v1/runs/synced/series/loss?max_points=100000")
    assert "run synced: 21 frame(s) uploaded, 0 already on the server" in outs[0]
    assert "run synced: 0 frame(s) uploaded, 21 already on the server" in outs[1]
    assert series["step"] == list(range(20)) and series["count"] == 20


EXIT_SCRIPT = """
import sys, torch
from torch import nn
from glasscockpit.agent import Cockpit
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 5))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
cockpit = Cockpit(
    model, opt, run="no-close", server=sys.argv[1], instruments=["loss", "lr"],
    budget=None,
)
x, y = torch.randn(16, 10), torch.randint(0, 5, (16,))
for step in range(25):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    with cockpit.step(step, loss=loss):
        loss.backward()
    opt.step()
print("training done", flush=True)
# no cockpit.close(): the interpreter's exit must flush, bounded, and say so
"""


def test_interpreter_exit_without_close_saves_frames_and_says_so(tmp_path):
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, f"ws://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "GLASSCOCKPIT_SPILL_DIR": str(tmp_path),
            "GLASSCOCKPIT_CLOSE_TIMEOUT": "2",
        },
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "training done"
    lines = [ln for ln in done.stderr.splitlines() if "not delivered" in ln]
    assert len(lines) == 1, done.stderr
    assert "glasscockpit sync" in lines[0] and "no-close.gcp" in lines[0]
    # One warning for the state change, one for the exit: never one per step.
    assert done.stderr.count("glasscockpit:") == 2, done.stderr
    with server_process(port) as base:
        results = sync_files([tmp_path / "no-close.gcp"], base, progress=False)
        assert [(r.uploaded, r.error) for r in results] == [(26, "")]
        series = get_json(f"{base}/v1/runs/no-close/series/loss?max_points=100000")
        run = get_json(f"{base}/v1/runs/no-close")
    assert series["step"] == list(range(25)) and series["count"] == 25
    assert run["status"] == "finished"


CRASH_SCRIPT = EXIT_SCRIPT.replace(
    'print("training done", flush=True)', 'raise RuntimeError("diverged")'
).replace('"no-close"', '"crashed"')


def test_training_that_crashes_is_reported_failed(tmp_path):
    port = free_port()
    with server_process(port) as base:
        done = subprocess.run(
            [sys.executable, "-c", CRASH_SCRIPT, f"ws://127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "GLASSCOCKPIT_SPILL_DIR": str(tmp_path)},
        )
        run = get_json(f"{base}/v1/runs/crashed")
        series = get_json(f"{base}/v1/runs/crashed/series/loss?max_points=100000")
    assert done.returncode == 1 and "RuntimeError: diverged" in done.stderr
    assert run["status"] == "failed"
    assert series["step"] == list(range(25))
    assert not any(tmp_path.iterdir())
