"""Import boundaries: agent without the server stack, server without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
import {module}
bad = sorted(m for m in {forbidden!r} if m in sys.modules)
print(",".join(bad))
"""


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        (
            "glasscockpit.agent",
            ["fastapi", "dash", "plotly", "pydantic", "uvicorn", "starlette"],
        ),
        ("glasscockpit.protocol", ["torch", "numpy", "fastapi", "dash"]),
        ("glasscockpit.server.main", ["torch"]),
        ("glasscockpit.dashboard.app", ["torch"]),
        ("glasscockpit.cli", ["torch", "fastapi", "dash"]),
    ],
)
def test_module_does_not_load(module, forbidden):
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(module=module, forbidden=forbidden)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == "", f"{module} loaded {out.stdout.strip()}"


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
