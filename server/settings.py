"""Server settings from ``GLASSCOCKPIT_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the server and dashboard can be configured with."""

    model_config = SettingsConfigDict(env_prefix="GLASSCOCKPIT_")

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8050
    #: Shared secret; when set, agents, REST clients and browsers must present it.
    token: str | None = None
    #: Downsampling buckets kept per series (min, max and last of each bucket).
    max_points: Annotated[int, Field(ge=4)] = 4096
    #: Histogram snapshots kept per instrument.
    max_histograms: Annotated[int, Field(ge=2)] = 256
    #: Runs kept in memory; the oldest finished runs are evicted first.
    max_runs: Annotated[int, Field(ge=1)] = 100
    #: Largest accepted websocket frame, in bytes.
    max_frame_bytes: Annotated[int, Field(ge=1024)] = 8 * 2**20
    #: Instruments per run (declared in hello frames or seen in readings).
    max_instruments: Annotated[int, Field(ge=1)] = 256
    #: Keys (e.g. parameter names) per per-layer instrument.
    max_keys: Annotated[int, Field(ge=1)] = 4096
    #: Series per run (every key of every instrument); more are refused (1008).
    max_series: Annotated[int, Field(ge=1)] = 10_000
    #: Elements per array (histogram counts, edges, heatmaps: 256 x 256).
    max_array_elements: Annotated[int, Field(ge=1)] = 65_536
    #: The store's estimated memory (docs/operations.md): over it, finished and
    #: disconnected runs are evicted, then growth is refused with 1013 (None: no
    #: budget). The default leaves room for the process itself in a 2 GiB container.
    max_memory_bytes: Annotated[int, Field(ge=2**20)] | None = 2**30
    #: Size of a run's metadata, in bytes of its JSON form.
    max_meta_bytes: Annotated[int, Field(ge=2)] = 64 * 2**10
    #: Agent connections open at once, in total and per client address; one more
    #: is closed with 1013 (try again later).
    max_connections: Annotated[int, Field(ge=1)] = 256
    max_connections_per_client: Annotated[int, Field(ge=1)] = 64
    #: Host names (besides loopback) a loopback-bound server answers; see
    #: server/guards.py (DNS rebinding). Comma-separated in the environment.
    allowed_hosts: Annotated[list[str], NoDecode] = []
    #: Wrong tokens a client may try per second (sustained) and in a burst; past
    #: them it gets 429 until its bucket refills (server/guards.py).
    auth_failures_per_s: Annotated[float, Field(gt=0)] = 1.0
    auth_failure_burst: Annotated[int, Field(ge=1)] = 20
    #: Lifetime of the browser's sign-in cookie, in seconds.
    session_max_age_s: Annotated[int, Field(ge=60)] = 7 * 86400
    #: Per-client token bucket (shared by its connections): frames per second ...
    rate_frames_per_s: Annotated[float, Field(gt=0)] = 5_000.0
    #: ... and burst size in frames. Past the burst the server reads (and acks)
    #: more slowly instead of closing the connection: backpressure.
    rate_burst: Annotated[int, Field(ge=1)] = 10_000
    #: Per-client sustained bytes per second (burst: one second's worth).
    rate_bytes_per_s: Annotated[float, Field(gt=0)] = 64 * 2**20
    #: Folder for append-only frame logs replayed at start-up (None: memory only).
    data_dir: Path | None = None
    #: fsync every logged frame (survives power loss; a process crash or restart
    #: loses nothing without it, because each frame is written before its ack).
    fsync: bool = False
    #: Cap on one run's frame log in bytes (None: no cap). A frame that would
    #: exceed it is refused, never acknowledged (see server/framelog.py).
    max_log_bytes_per_run: Annotated[int, Field(ge=1)] | None = None
    #: Cap on all frame logs together in bytes (None: no cap); same policy.
    max_log_bytes: Annotated[int, Field(ge=1)] | None = None
    #: A live run with no frame for this many seconds is reported as stale.
    stale_after_s: Annotated[float, Field(gt=0)] = 60.0
    #: Dashboard refresh period in milliseconds.
    refresh_ms: int = 500
    #: Diagnosis rules turned off: comma-separated names, or "all".
    diagnosis_disable: str = ""
    #: Diagnosis thresholds changed: "rule.threshold=value,..." (docs/diagnosis.md).
    diagnosis_thresholds: str = ""

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip() for h in value.split(",") if h.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
