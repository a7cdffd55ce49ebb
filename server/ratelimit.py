"""Ingest admission: connection caps and per-client token buckets.

Rate limits apply backpressure rather than closing a fast agent: the server stops
reading (and acking) until the client's buckets have refilled. The agent keeps
every unacknowledged frame (its outbox, then its spill file on disk) and sends it
once acks flow again, so a throttled agent loses nothing; it only drops frames
when its own memory and disk budgets are exhausted, and counts them
(``stats.dropped``). Closing instead would make the agent reconnect and resend its
unacknowledged frames at once, which is the load we are trying to shed.

The buckets belong to the client address, not the connection, so opening more
connections does not buy more throughput; connections are capped per client and in
total (``GLASSCOCKPIT_MAX_CONNECTIONS[_PER_CLIENT]``). A connection over a cap is
closed with 1013 (try again later), which the agent retries with backoff.
"""

from __future__ import annotations

import time
from collections import Counter


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"rate and burst must be > 0, got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, n: float) -> float:
        """Take ``n`` tokens (going into debt if needed); seconds to wait before use.

        A request larger than the burst is allowed once the bucket is full, so one
        big frame is slowed, never refused.
        """
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class ConnectionGate:
    """Open agent connections per client and in total, and each client's buckets."""

    def __init__(
        self,
        max_total: int,
        max_per_client: int,
        frames_per_s: float,
        frame_burst: float,
        bytes_per_s: float,
        byte_burst: float,
    ) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self._rates = (frames_per_s, frame_burst, bytes_per_s, byte_burst)
        self.open: Counter[str] = Counter()
        self._buckets: dict[str, tuple[TokenBucket, TokenBucket]] = {}

    def enter(self, client: str) -> str | None:
        """Count a new connection; why it is one too many, or None.

        A refused connection is counted too: call ``leave`` either way.
        """
        self.open[client] += 1
        total = sum(self.open.values())
        if total > self.max_total:
            return (
                f"{total - 1} agent connections are open "
                f"(GLASSCOCKPIT_MAX_CONNECTIONS={self.max_total})"
            )
        if self.open[client] > self.max_per_client:
            return (
                f"this client has {self.open[client] - 1} connections open "
                f"(GLASSCOCKPIT_MAX_CONNECTIONS_PER_CLIENT={self.max_per_client})"
            )
        return None

    def leave(self, client: str) -> None:
        """A connection closed; forget the client once it has none."""
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]
            self._buckets.pop(client, None)

    def buckets(self, client: str) -> tuple[TokenBucket, TokenBucket]:
        """The client's (frames, bytes) buckets, shared by its connections."""
        pair = self._buckets.get(client)
        if pair is None:
            fps, fburst, bps, bburst = self._rates
            pair = self._buckets[client] = (
                TokenBucket(fps, fburst),
                TokenBucket(bps, bburst),
            )
        return pair
