"""PCM conversion and re-chunking: wire bytes <-> float32, any-size chunks -> fixed frames."""

from __future__ import annotations

import numpy as np

from audio.frames import FRAME_SAMPLES

_INT16_SCALE = 32768.0


def as_mono_float32(x: np.ndarray) -> np.ndarray:
    """Validate float samples (1-D, any float dtype) and return them as contiguous float32 (n,)."""
    if type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 1 and x.flags.c_contiguous:
        return x  # already so: every stage of a stream checks its input, at a few ns each this way
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {x.shape}")
    # Integer PCM would pass through as values up to 32767 and clip to a full-scale square wave.
    if x.size and not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"expected float samples in [-1, 1], got {x.dtype}; decode PCM16 with pcm16_to_float32"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def pcm16_to_float32(data: bytes) -> np.ndarray:
    """Decode little-endian int16 PCM bytes to float32 samples in [-1, 1).

    data: bytes of length 2 * n  ->  float32 (n,)
    """
    if len(data) % 2:
        raise ValueError(
            f"PCM16 data must have an even number of bytes (2 per sample), got {len(data)}; "
            "a chunk was split mid-sample or is not 16-bit PCM"
        )
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(_INT16_SCALE)


def float32_to_pcm16(x: np.ndarray) -> bytes:
    """Encode float samples to little-endian int16 PCM bytes, clipping to [-1, 1] and rounding.

    x: float (n,)  ->  bytes of length 2 * n
    """
    x = as_mono_float32(x)
    # In float32, exactly (x 2^15 only shifts the exponent), in three numpy calls: this runs on
    # every frame of every conversation (its output, and the webrtc VAD's input).
    # +1.0 maps to 32767 (not 32768, which would overflow int16); -1.0 maps to -32768.
    scaled = np.rint(x * np.float32(_INT16_SCALE))
    np.clip(scaled, -32768, 32767, out=scaled)
    return scaled.astype("<i2").tobytes()


class FrameChunker:
    """Re-chunks a stream of any-size float32 chunks into fixed frames; no sample is lost or duplicated.

    Frames come out in order, each float32 (frame_samples,). The pending remainder is kept between pushes.
    """

    def __init__(self, frame_samples: int = FRAME_SAMPLES):
        if int(frame_samples) != frame_samples or frame_samples <= 0:
            raise ValueError(f"frame_samples must be a positive integer, got {frame_samples!r}")
        self.frame_samples = int(frame_samples)
        # Buffer sized for a couple of frames; grows when a client sends a large chunk.
        self._buf = np.zeros(2 * self.frame_samples, dtype=np.float32)
        self._len = 0

    @property
    def pending(self) -> int:
        """Samples waiting for a frame to complete (or for flush)."""
        return self._len

    def push(self, x: np.ndarray) -> list[np.ndarray]:
        """Append samples (1-D, any length including 0) and return every frame completed so far."""
        x = as_mono_float32(x)
        need = self._len + x.shape[0]
        if need > self._buf.shape[0]:
            grown = np.zeros(max(need, 2 * self._buf.shape[0]), dtype=np.float32)
            grown[: self._len] = self._buf[: self._len]
            self._buf = grown
        self._buf[self._len : need] = x
        self._len = need
        n_frames = self._len // self.frame_samples
        if n_frames == 0:
            return []
        used = n_frames * self.frame_samples
        frames = [f.copy() for f in self._buf[:used].reshape(n_frames, self.frame_samples)]
        rest = self._len - used
        self._buf[:rest] = self._buf[used : self._len]
        self._len = rest
        return frames

    def flush(self) -> np.ndarray | None:
        """Return the remainder zero-padded to one frame (None if nothing is pending) and empty the buffer."""
        if self._len == 0:
            return None
        frame = np.zeros(self.frame_samples, dtype=np.float32)
        frame[: self._len] = self._buf[: self._len]
        self._len = 0
        return frame

    def drop(self, n_samples: int) -> int:
        """Discard up to n_samples of the oldest pending samples (latency trimming); return how many went."""
        if n_samples < 0:
            raise ValueError(f"n_samples must be >= 0, got {n_samples}")
        n = min(int(n_samples), self._len)
        if n:
            self._buf[: self._len - n] = self._buf[n : self._len]
            self._len -= n
        return n

    def reset(self) -> None:
        """Forget all pending samples."""
        self._len = 0
