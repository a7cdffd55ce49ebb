"""docker-compose.yml is valid and runs the command the tests run directly."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from glasscockpit.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = shutil.which("docker-compose")


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COMPOSE or "docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], **env},
    )


@pytest.mark.skipif(COMPOSE is None, reason="Debian's docker-compose is not installed")
def test_compose_file_is_valid_with_a_token():
    out = _config({"GLASSCOCKPIT_TOKEN": "t0ken"})
    assert out.returncode == 0, out.stderr
    assert "127.0.0.1" in out.stdout  # published on loopback by default
    assert "healthz" in out.stdout


@pytest.mark.skipif(COMPOSE is None, reason="Debian's docker-compose is not installed")
def test_compose_refuses_to_start_without_a_token():
    out = _config({})
    assert out.returncode != 0
    assert "GLASSCOCKPIT_TOKEN" in out.stderr


def test_compose_command_is_a_valid_cli_call():
    text = (ROOT / "docker-compose.yml").read_text()
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("command:"))
    argv = [a.strip(' "') for a in line.split("[", 1)[1].rstrip("]").split(",")]
    assert argv[0] == "glasscockpit"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", 8050)


def test_image_copies_every_source_folder():
    # The image installs the distribution from copied folders: a folder that
    # pyproject maps but the Dockerfile does not copy breaks `pip install .`.
    import tomllib

    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
        "setuptools"
    ]["package-dir"]
    tops = {folder.split("/")[0] for folder in mapping.values()}
    dockerfile = (ROOT / "Dockerfile").read_text()
    missing = sorted(t for t in tops if f"COPY {t} ./{t}" not in dockerfile)
    assert not missing, f"Dockerfile does not copy {missing}"
