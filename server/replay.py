"""Start-up replay: rebuild the store from the frame logs, whatever they hold.

The server must start even when a log holds something it cannot apply: a record
logged by an older version with laxer checks, limits lowered since, a file that
cannot be read, a record that trips a bug. Each such record (or file) is skipped,
logged and counted on /v1/metrics (``replay.rejected_frames``,
``replay.unreadable_logs``); every other frame is applied. A log's file name is
the stored run's id, which differs from the id inside its frames when the run was
renamed (a reused id, see ``RunStore.hello``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

from glasscockpit.protocol import Ack, Hello, decode
from glasscockpit.server.errors import Rejected
from glasscockpit.server.store import RunStore

log = logging.getLogger("glasscockpit.server")


def replay(store: RunStore, max_frame_bytes: int) -> Counter[str]:
    """Apply every frame of every log to ``store``; returns what happened."""
    stats: Counter[str] = Counter()
    logs = store.logs
    if logs is None:
        return stats
    store.logs = None  # replayed frames are not logged again
    loaded: list[str] = []
    try:
        for run_id in logs.run_ids():
            try:
                frames, torn = logs.load(run_id)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped
                log.warning("glasscockpit: cannot replay %r: %s", run_id, exc)
                stats["replay.unreadable_logs"] += 1
                continue
            stats["replay.torn_bytes"] += torn
            stats["replay.runs"] += 1
            loaded.append(run_id)
            for data in frames:
                try:
                    frame = decode(data, max_frame_bytes)
                    if isinstance(frame, Ack):
                        raise Rejected("schema", "an ack frame in a run's log")
                    if isinstance(frame, Hello):
                        store.hello(frame, run_id=run_id)
                    else:
                        if frame.run != run_id:
                            frame = dataclasses.replace(frame, run=run_id)
                        store.ingest(frame)
                    stats["replay.frames"] += 1
                except Exception as exc:  # noqa: BLE001 - skip it, never refuse to start
                    # Limits may have been lowered since the frame was logged, or
                    # an older version logged what this one refuses.
                    log.warning(
                        "glasscockpit: replay of %r skipped a frame: %s", run_id, exc
                    )
                    stats["replay.rejected_frames"] += 1
            run = store.runs.get(run_id)
            if run is not None:
                run.connected = 0
    finally:
        store.logs = logs
    for run_id in loaded:
        if run_id not in store.runs:  # evicted during replay (MAX_RUNS lowered)
            logs.delete(run_id)
    return stats
