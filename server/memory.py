"""The store's memory budget (``GLASSCOCKPIT_MAX_MEMORY_BYTES``).

Every other bound is per run or per series; this one is for the whole process.
Once a second (not per frame: the estimate sums every series) the store's
estimate (``Run.nbytes``: series, histograms and their Python overhead, measured
against RSS in docs/operations.md) is compared with the budget. Over it, finished
and then disconnected runs are evicted, oldest last frame first, exactly like
``GLASSCOCKPIT_MAX_RUNS`` does (their logs go with them). If the store is still
over budget, only live, connected runs are left: a frame that would add memory
(a new run, a new series, a histogram snapshot) is refused with 1013, try again
later; the agent keeps it and retries, and it gets in once a run finishes and can
be evicted. Readings that only extend existing series are still accepted: each
series is bounded (``GLASSCOCKPIT_MAX_POINTS``), so they can overshoot the budget
by at most what those series still lack of their capacity.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from glasscockpit.server.errors import LimitExceeded, Rejected

if TYPE_CHECKING:
    from glasscockpit.server.store import RunStore

log = logging.getLogger("glasscockpit.server")
#: Seconds between two sums of the estimate.
EVERY_S = 1.0


class MemoryBudget:
    """The estimate, refreshed at most once per ``EVERY_S``, and what to do over it."""

    def __init__(self, limit: int | None, every_s: float = EVERY_S) -> None:
        self.limit = limit
        self.every_s = every_s
        self.estimate = 0
        self._at = -every_s
        self.evicted = 0  # runs evicted for memory
        self.refused = 0  # frames refused for memory

    def check(self, store: RunStore, run_id: str, grows: bool) -> None:
        """Raise ``Rejected("memory", ..., 1013)`` when a growing frame must wait.

        Called with the store's lock held, before the frame is logged or stored.
        """
        if self.limit is None:
            return
        now = time.monotonic()
        if now - self._at >= self.every_s:
            self._at = now
            self.estimate = sum(r.nbytes for r in store.runs.values())
            while self.estimate > self.limit:
                before = len(store.runs)
                try:
                    freed = store._evict_one(  # noqa: SLF001 - the store's policy
                        run_id, f"GLASSCOCKPIT_MAX_MEMORY_BYTES={self.limit}"
                    )
                except LimitExceeded:
                    break  # every run is live and connected
                if len(store.runs) == before:
                    break
                self.evicted += 1
                self.estimate -= freed
        if grows and self.estimate > self.limit:
            self.refused += 1
            raise Rejected(
                "memory",
                f"The server holds an estimated {self.estimate} bytes of live runs, "
                f"over GLASSCOCKPIT_MAX_MEMORY_BYTES={self.limit}; retry later",
                1013,
            )
