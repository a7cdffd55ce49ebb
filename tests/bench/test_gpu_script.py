"""bench/gpu.sh's dry run on the CPU: the same path the GPU machine takes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_script_dry_run_on_cpu(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_BENCH_NO_INSTALL": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "bench" / "gpu.sh"),
            str(tmp_path),
            "--device",
            "cpu",
            "--quick",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    overhead = json.loads((tmp_path / "agent_overhead.json").read_text())
    assert overhead["device"] == "cpu"
    ms = overhead["mlp"]["ms"]
    assert ms["plain"] > 0
    assert ms["full (every step)"] > ms["plain"]
    scaling = json.loads((tmp_path / "scaling.json").read_text())
    assert scaling["device"] == "cpu"
    assert {r["axis"] for r in scaling["agent"]} == {"batch", "width", "layers"}
    assert "server" not in scaling
    assert (tmp_path / "scaling-agent.png").stat().st_size > 1000
    assert "device cpu" in (tmp_path / "machine.txt").read_text()
    real = json.loads((tmp_path / "real_overhead.json").read_text())
    assert real["convnet"]["ratio"]["economy (every step)"] > 0
    assert len(real["convnet"]["first_steps"]["ratios"]) == 4
