"""G.711 (ITU-T) mu-law and A-law <-> PCM16, for telephony clients (8 kHz, one byte per sample).

The codec is two fixed tables: 256 codes -> 16-bit samples, and every 16-bit sample -> its code
(the segment search of the reference coder, CCITT/Sun g711.c, done once for all 65536 values).
Converting a buffer is then one table lookup per sample, cheap enough for every frame.
"""

from __future__ import annotations

import numpy as np

_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
_ALL_SAMPLES = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)
_CODES = np.arange(256, dtype=np.int32)


def _ulaw_encoder() -> np.ndarray:
    x = _ALL_SAMPLES >> 2  # the coder works on 14 bits
    mask = np.where(x < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(x), 8159) + 0x21  # clip, then add the bias
    seg = np.searchsorted(_ULAW_SEG_END, magnitude)  # first segment whose end holds the magnitude
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((magnitude >> (seg + 1)) & 0xF))
    return (code ^ mask).astype(np.uint8)


def _ulaw_decoder() -> np.ndarray:
    u = ~_CODES & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype("<i2")


def _alaw_encoder() -> np.ndarray:
    x = _ALL_SAMPLES >> 3  # the coder works on 13 bits
    mask = np.where(x >= 0, 0xD5, 0x55)
    magnitude = np.where(x >= 0, x, -x - 1)
    seg = np.searchsorted(_ALAW_SEG_END, magnitude)
    shift = np.where(seg < 2, 1, seg)
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((magnitude >> shift) & 0xF))
    return (code ^ mask).astype(np.uint8)


def _alaw_decoder() -> np.ndarray:
    a = _CODES ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype("<i2")


_ENCODE = {"ulaw": _ulaw_encoder(), "alaw": _alaw_encoder()}
_DECODE = {"ulaw": _ulaw_decoder(), "alaw": _alaw_decoder()}
LAWS = tuple(_ENCODE)


def encode(pcm16: bytes, law: str) -> bytes:
    """PCM16 LE mono -> G.711 bytes (one per sample); law is "ulaw" or "alaw"."""
    return _ENCODE[law][np.frombuffer(pcm16, dtype="<u2")].tobytes()


def decode(data: bytes, law: str) -> bytes:
    """G.711 bytes -> PCM16 LE mono (two bytes per sample)."""
    return _DECODE[law][np.frombuffer(data, dtype=np.uint8)].tobytes()
