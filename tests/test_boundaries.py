"""Import boundaries: agent without the server stack, server without torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

CHECK = """
import sys
import {module}
bad = sorted(m for m in {forbidden!r} if m in sys.modules)
print(",".join(bad))
"""


# The static walls (agent/server/dashboard/protocol) are import-linter contracts
# in pyproject.toml, run by `make lint`; this checks what a linter cannot see:
# the CLI imports the heavy stacks lazily, only in the command that needs them.
def test_cli_loads_no_heavy_stack():
    forbidden = ["torch", "fastapi", "dash"]
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CHECK.format(module="glasscockpit.cli", forbidden=forbidden),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == "", f"glasscockpit.cli loaded {out.stdout.strip()}"


ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _installed_layout(dest: Path) -> Path:
    """Copy the source folders under their installed names (pyproject's package-dir)."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
        "setuptools"
    ]["package-dir"]
    skip = shutil.ignore_patterns("__pycache__")
    for name, folder in sorted(mapping.items()):
        target = dest.joinpath(*name.split("."))
        if not target.exists():
            shutil.copytree(ROOT / folder, target, ignore=skip)
    return dest / "glasscockpit"


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        timeout=300,
    )


@pytest.mark.parametrize(
    ("where", "line", "contract"),
    [
        ("agent/instruments/grad_norm.py", "import fastapi", "agent never imports"),
        ("server/store.py", "import torch", "never import torch"),
        (
            "dashboard/ids.py",
            "from glasscockpit.agent import Cockpit",
            "never import torch",
        ),
        ("protocol/codec.py", "import numpy", "protocol imports only"),
        (
            "agent/engine/rules.py",
            "from glasscockpit.agent import cockpit",
            "agent's layers",
        ),
    ],
)
def test_lint_fails_on_a_forbidden_import(tmp_path, where, line, contract):
    pkg = _installed_layout(tmp_path)
    clean = _lint_imports(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    target = pkg / where
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    broken = _lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "BROKEN" in broken.stdout
    broken_section = broken.stdout.split("Broken contracts", 1)[1]
    assert contract in broken_section, broken.stdout


def test_agent_imports_without_server_packages(tmp_path):
    # Shadow the server stack with modules that fail on import, as if not installed.
    for name in ("fastapi", "dash", "plotly", "uvicorn", "pydantic_settings"):
        (tmp_path / f"{name}.py").write_text(
            f"raise ImportError('{name} is not installed')"
        )
    code = "import glasscockpit.agent; print('ok')"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "ok", out.stderr


def test_server_imports_without_torch(tmp_path):
    (tmp_path / "torch.py").write_text("raise ImportError('torch is not installed')")
    code = "import glasscockpit.server.main, glasscockpit.dashboard.app; print('ok')"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "ok", out.stderr
