"""A bounded history of snapshots that thins old entries instead of dropping them.

TensorBoard keeps a reservoir of histograms per tag; a plain ``deque(maxlen=K)``
would instead forget the start of a long run. Here the newest ``K // 2`` snapshots
are kept at full resolution, and whenever the history exceeds ``K`` the older part
loses every second entry (the first snapshot always stays). The result covers the
whole run, denser towards the present, deterministically (no random reservoir, so a
refresh never shows a different sample).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class History(Generic[T]):
    """At most ``capacity`` items in arrival order; see the module doc."""

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError(f"History capacity must be >= 2, got {capacity}")
        self.capacity = capacity
        self.count = 0  # items ever appended
        self.thinned = 0  # items removed to stay within capacity
        self._items: list[T] = []

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def append(self, item: T) -> None:
        """Add the newest item, thinning the older half when over capacity."""
        self._items.append(item)
        self.count += 1
        if len(self._items) > self.capacity:
            recent = self.capacity // 2
            old, new = self._items[:-recent], self._items[-recent:]
            kept = old[::2]  # keeps old[0], the run's first snapshot
            self.thinned += len(old) - len(kept)
            self._items = kept + new

    def last(self, n: int) -> list[T]:
        """The newest ``n`` items, oldest first."""
        return self._items[-n:] if n > 0 else []
