"""What every websocket protocol of the server shares, as pure code: the message size limits, the
close codes, and the token bucket behind the per-connection rate limits."""

from __future__ import annotations

# 1 MiB, text or binary: every message but a binary image (`/api/chat`). A larger one is refused with
# a typed error and dropped unread (the session goes on); see `Connection.receive`.
MAX_MESSAGE_BYTES = 1 << 20
# What the websocket layer reads at all: room for an image of up to 10 MiB (assistant/images.py) in
# one binary message. The socket is closed with 1009 on anything bigger.
MAX_FRAME_BYTES = 16 << 20

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


def message_bytes(message: str | bytes) -> int:
    """The size of a message as it travelled: UTF-8 bytes of a text frame, without encoding ASCII."""
    if isinstance(message, str) and not message.isascii():
        return len(message.encode("utf-8", errors="surrogatepass"))
    return len(message)
