"""Agent configuration: explicit arguments first, then environment, then defaults.

Every environment variable the agent reads is listed here once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: ws:// URL of the glasscockpit server; "none" or "" keeps readings in memory only.
ENV_SERVER = "GLASSCOCKPIT_SERVER"
#: Shared token sent as a bearer header when the server requires one.
ENV_TOKEN = "GLASSCOCKPIT_TOKEN"
#: Run id to use instead of one derived from the script name and time.
ENV_RUN = "GLASSCOCKPIT_RUN"
#: Seconds ``close()`` waits for pending frames to be acknowledged.
ENV_CLOSE_TIMEOUT = "GLASSCOCKPIT_CLOSE_TIMEOUT"
#: Folder of spill files (frames kept on disk while the server is unreachable).
ENV_SPILL_DIR = "GLASSCOCKPIT_SPILL_DIR"
#: Disk budget of one run's spill or recording file, in MiB; frames beyond it drop.
ENV_SPILL_MAX_MB = "GLASSCOCKPIT_SPILL_MAX_MB"

#: Overhead budget of default schedules, a fraction of the plain step time;
#: "none" or "0" keeps the fixed cadences by cost.
ENV_BUDGET = "GLASSCOCKPIT_BUDGET"

#: "0", "no" or "off": leave glibc's heap thresholds as they are
#: (agent/environment/heap.py).
ENV_KEEP_HEAP = "GLASSCOCKPIT_KEEP_HEAP"

DEFAULT_SERVER = "ws://127.0.0.1:8050"
DEFAULT_BUDGET = 0.05
DEFAULT_CLOSE_TIMEOUT = 5.0
DEFAULT_SPILL_MAX_MB = 1024.0


def default_spill_dir() -> Path:
    """``$XDG_CACHE_HOME/glasscockpit/spill``, else ``~/.cache/glasscockpit/spill``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return Path(cache) / "glasscockpit" / "spill"


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw.strip() else default
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def _budget_env() -> float | None:
    raw = os.environ.get(ENV_BUDGET, "").strip().lower()
    if raw in ("none", "off"):
        return None
    budget = _float_env(ENV_BUDGET, DEFAULT_BUDGET)
    if budget < 0:
        raise ValueError(f"{ENV_BUDGET} must be >= 0, got {budget}")
    return budget or None


@dataclass(frozen=True)
class AgentConfig:
    """Resolved agent settings."""

    server: str | None = DEFAULT_SERVER
    token: str | None = None
    run: str | None = None
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    spill_dir: Path | None = None
    spill_max_bytes: int = int(DEFAULT_SPILL_MAX_MB * 2**20)
    budget: float | None = DEFAULT_BUDGET

    @classmethod
    def from_env(cls) -> AgentConfig:
        """Read the ``GLASSCOCKPIT_*`` variables, falling back to defaults."""
        server = os.environ.get(ENV_SERVER, DEFAULT_SERVER)
        return cls(
            server=None if server.lower() in ("", "none") else server,
            token=os.environ.get(ENV_TOKEN) or None,
            run=os.environ.get(ENV_RUN) or None,
            close_timeout=_float_env(ENV_CLOSE_TIMEOUT, DEFAULT_CLOSE_TIMEOUT),
            spill_dir=Path(os.environ[ENV_SPILL_DIR])
            if os.environ.get(ENV_SPILL_DIR)
            else default_spill_dir(),
            spill_max_bytes=int(
                _float_env(ENV_SPILL_MAX_MB, DEFAULT_SPILL_MAX_MB) * 2**20
            ),
            budget=_budget_env(),
        )


def ingest_url(server: str) -> str:
    """The websocket ingest URL for a server given as ws://host:port or http://host:port."""
    url = server.rstrip("/")
    if url.startswith("http://"):
        url = "ws://" + url[len("http://") :]
    elif url.startswith("https://"):
        url = "wss://" + url[len("https://") :]
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(
            "Server URL must start with ws://, wss://, http:// or https://, "
            f"got {server!r}"
        )
    return url if url.endswith("/v1/agent") else url + "/v1/agent"
