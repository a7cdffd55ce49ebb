"""Server settings from ``GLASSCOCKPIT_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the server and dashboard can be configured with."""

    model_config = SettingsConfigDict(env_prefix="GLASSCOCKPIT_")

    host: str = "127.0.0.1"
    port: int = 8050
    #: Shared secret; when set, agents, REST clients and browsers must present it.
    token: str | None = None
    #: Downsampling buckets kept per series (min, max and last of each bucket).
    max_points: int = 4096
    #: Histogram snapshots kept per instrument.
    max_histograms: int = 256
    #: Runs kept in memory; the oldest finished runs are evicted first.
    max_runs: int = 100
    #: Largest accepted websocket frame, in bytes.
    max_frame_bytes: int = 8 * 2**20
    #: A live run with no frame for this many seconds is reported as stale.
    stale_after_s: float = 60.0
    #: Dashboard refresh period in milliseconds.
    refresh_ms: int = 500


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
