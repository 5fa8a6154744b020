"""What every websocket protocol of the server shares, as pure code: the message size limit, the
close codes, and the token bucket behind the per-connection rate limits."""

from __future__ import annotations

# 1 MiB, text or binary; the websocket layer closes the socket with 1009 on anything bigger.
MAX_MESSAGE_BYTES = 1 << 20

# Close codes (RFC 6455 numbers with the meaning this server gives them).
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008  # event flood, too slow a reader
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013  # server full


class RateLimiter:
    """Token bucket: `rate_per_s` messages a second on average, bursts up to `burst`. Pure."""

    def __init__(self, rate_per_s: float, burst: float, now: float = 0.0):
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._last = now

    def allow(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
