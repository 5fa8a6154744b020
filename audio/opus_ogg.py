"""Ogg Opus streams as Kyutai's Moshi servers and clients exchange them: float32 PCM in, Ogg pages
out, and back, at 24 kHz mono.

Kyutai's `sphn` does the coding: `OpusStreamWriter` / `OpusStreamReader` are what their server and
`moshi.client` use (their web clients write the same kind of stream with opus-recorder). The wrappers
add what a server needs on top: any array in (sphn only takes contiguous float32), and one typed
error for a stream that cannot be read. sphn's reader raises a bare ValueError from deep inside,
and it never recovers from a broken page (every later page fails too), so `OpusDecoder` stays
broken once it has failed and says so again, instead of seeming to work on.

The Ogg stream is a byte stream: pages may be cut anywhere between messages; the reader buffers.
"""

from __future__ import annotations

import numpy as np

from audio.frames import SAMPLE_RATE_HZ

__all__ = ["OpusDecoder", "OpusEncoder", "OpusStreamError"]


class OpusStreamError(ValueError):
    """The Ogg Opus bytes cannot be decoded (a broken page, not Ogg at all, a corrupted packet)."""


class OpusEncoder:
    """PCM -> one Ogg Opus stream. The first bytes carry its headers (OpusHead, OpusTags); each call
    returns the pages it completed, usually one per 80 ms frame (empty while a packet is still short)."""

    def __init__(self, sample_rate_hz: int = SAMPLE_RATE_HZ):
        self.sample_rate_hz = sample_rate_hz
        import sphn  # here, not at import: only /api/chat sessions need it

        self._writer = sphn.OpusStreamWriter(sample_rate_hz)

    def encode(self, pcm: np.ndarray) -> bytes:
        """pcm: float32-convertible (n,) in [-1, 1] at sample_rate_hz."""
        return self._writer.append_pcm(np.ascontiguousarray(pcm, dtype=np.float32).reshape(-1))


class OpusDecoder:
    """One Ogg Opus stream -> PCM, float32 (n,) at sample_rate_hz, as the bytes arrive."""

    def __init__(self, sample_rate_hz: int = SAMPLE_RATE_HZ):
        self.sample_rate_hz = sample_rate_hz
        import sphn

        self._reader = sphn.OpusStreamReader(sample_rate_hz)
        self.error: str | None = None  # why the stream broke, once it has

    def decode(self, data: bytes) -> np.ndarray:
        """The samples `data` completes (often none: a page may span messages). Raises
        OpusStreamError for bytes that are not a readable Ogg Opus stream, and for every call after."""
        if self.error is not None:
            raise OpusStreamError(self.error)
        try:
            pcm = self._reader.append_bytes(bytes(data))
        except ValueError as exc:
            self.error = f"broken Ogg Opus stream: {exc}"
            raise OpusStreamError(self.error) from None
        return np.asarray(pcm, dtype=np.float32).reshape(-1)
