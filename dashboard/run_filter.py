"""The run list's filter: a regular expression matched without backtracking.

Python's ``re`` backtracks, so a pattern like ``^(a+)+$`` takes exponential time
on a 26-character run id and stalls the server (ingest and ``/healthz`` share its
event loop and its GIL). RE2 matches in time linear in the id, whatever the
pattern, and bounds its memory (``MAX_MEM``), so one keystroke costs at most
``MAX_PATTERN`` x 128 (longest id) steps per run. Patterns RE2 cannot compile
(backreferences, lookarounds) or that are not regular expressions at all match as
plain text, case-insensitively, like the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import re2

#: Longest pattern compiled (a run filter is a few characters).
MAX_PATTERN = 256
#: RE2's memory budget for one compiled pattern, in bytes.
MAX_MEM = 1 << 20


def run_matcher(pattern: str) -> Callable[[str], bool]:
    """A case-insensitive, linear-time ``search`` for ``pattern``."""
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    options.max_mem = MAX_MEM
    pattern = pattern[:MAX_PATTERN]
    try:
        rx: Any = re2.compile(pattern, options)
    except re2.error:
        options.literal = True
        rx = re2.compile(pattern, options)
    return lambda text: rx.search(text) is not None


def filter_runs(
    runs: list[dict[str, Any]], pattern: str | None
) -> list[dict[str, Any]]:
    """Runs whose id matches ``pattern`` (a regex; plain text if it is not one)."""
    if not pattern:
        return runs
    match = run_matcher(pattern)
    return [r for r in runs if match(r["run"])]
