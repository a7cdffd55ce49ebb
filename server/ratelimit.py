"""Per-connection token bucket that answers "how long to wait", not "refuse".

Ingest applies backpressure rather than closing a fast agent: the server stops
reading (and acking) until the bucket has refilled. The agent's bounded queue then
fills and drops its oldest frames, counted on the agent side, which is the
documented behaviour when a server cannot keep up. Closing instead would make the
agent reconnect and resend its unacknowledged frames at once, which is the load we
are trying to shed.
"""

from __future__ import annotations

import time


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
