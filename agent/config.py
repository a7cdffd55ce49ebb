"""Agent configuration: explicit arguments first, then environment, then defaults.

Every environment variable the agent reads is listed here once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: ws:// URL of the glasscockpit server; "none" or "" keeps readings in memory only.
ENV_SERVER = "GLASSCOCKPIT_SERVER"
#: Shared token sent as a bearer header when the server requires one.
ENV_TOKEN = "GLASSCOCKPIT_TOKEN"
#: Run id to use instead of one derived from the script name and time.
ENV_RUN = "GLASSCOCKPIT_RUN"
#: Seconds ``close()`` waits for pending frames to be acknowledged.
ENV_CLOSE_TIMEOUT = "GLASSCOCKPIT_CLOSE_TIMEOUT"

DEFAULT_SERVER = "ws://127.0.0.1:8050"
DEFAULT_CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True)
class AgentConfig:
    """Resolved agent settings."""

    server: str | None = DEFAULT_SERVER
    token: str | None = None
    run: str | None = None
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT

    @classmethod
    def from_env(cls) -> AgentConfig:
        """Read the ``GLASSCOCKPIT_*`` variables, falling back to defaults."""
        server = os.environ.get(ENV_SERVER, DEFAULT_SERVER)
        return cls(
            server=None if server.lower() in ("", "none") else server,
            token=os.environ.get(ENV_TOKEN) or None,
            run=os.environ.get(ENV_RUN) or None,
            close_timeout=float(
                os.environ.get(ENV_CLOSE_TIMEOUT, DEFAULT_CLOSE_TIMEOUT)
            ),
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
