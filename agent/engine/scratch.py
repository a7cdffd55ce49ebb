"""Reused CPU buffers for the per-sample gradients a tracked step keeps.

The per-sample gradients ``StepStats`` keeps for a step (up to
``CACHE_ELEMENTS`` values) are alive together, so the C allocator serves them
from fresh pages, and at the end of the step returns those pages to the system
(glibc trims the heap's free top). Every tracked step then pays page faults and
the kernel's zeroing for megabytes: on the benchmark transformer ~3 ms of the
~11 ms that per-sample norms cost. Handing the same buffers to the next
tracked step removes that (CUDA has its own caching allocator).

A buffer is lent to one holder (a ``StepStats``) and comes back when that holder
is garbage collected; nothing else keeps the per-sample gradients (readings are
reductions of them). At most ``LIMIT`` values wait in the pool.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator

import torch
from torch import Tensor

#: Values (all buffers together) the pool keeps between steps (256 MiB float32).
LIMIT = 1 << 26

_Key = tuple[tuple[int, ...], torch.dtype]


class Scratch:
    """A pool of CPU buffers lent out while a holder is active."""

    def __init__(self) -> None:
        self._free: dict[_Key, list[Tensor]] = {}
        self._pooled = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    @contextlib.contextmanager
    def lending(self, holder: object) -> Iterator[None]:
        """``empty`` lends buffers to ``holder`` until it is garbage collected."""
        lent: list[Tensor] | None = getattr(holder, "_scratch_lent", None)
        if lent is None:
            lent = []
            holder.__dict__["_scratch_lent"] = lent
            weakref.finalize(holder, self._take_back, lent)
        previous = getattr(self._local, "lent", None)
        self._local.lent = lent
        try:
            yield
        finally:
            self._local.lent = previous

    def empty(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised tensor of ``shape`` with ``like``'s dtype and device.

        Inside ``lending`` and on the CPU a pooled buffer when one fits,
        otherwise a new tensor.
        """
        lent: list[Tensor] | None = getattr(self._local, "lent", None)
        if lent is None or like.device.type != "cpu":
            return like.new_empty(shape)
        key = (tuple(shape), like.dtype)
        with self._lock:
            pool = self._free.get(key)
            buf = pool.pop() if pool else None
            if buf is not None:
                self._pooled -= buf.numel()
        if buf is None:
            buf = like.new_empty(shape)
        lent.append(buf)
        return buf

    def _take_back(self, lent: list[Tensor]) -> None:
        with self._lock:
            for buf in lent:
                if self._pooled + buf.numel() > LIMIT:
                    continue  # dropped: its memory goes back to the allocator
                self._free.setdefault((tuple(buf.shape), buf.dtype), []).append(buf)
                self._pooled += buf.numel()
            lent.clear()

    def clear(self) -> None:
        """Drop every pooled buffer."""
        with self._lock:
            self._free.clear()
            self._pooled = 0


#: The agent's pool (one per process).
SCRATCH = Scratch()
