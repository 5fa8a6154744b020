"""Client-side playout buffer: network audio in, device-callback-sized blocks out.

The network thread (or event loop) pushes the assistant's audio as it arrives; the sound device's
callback pulls exactly the number of samples it needs, at the device's own rate (audio pushed at
another rate is resampled on the way in). A short prebuffer absorbs network jitter;
`clear()` drops everything queued at once (barge-in). The buffer counts what the listener actually
heard so the client can report the played position to the server, and can hand every pulled block
to a listener (the echo canceller's reference: exactly what the device was given).

Two positions are kept, both in samples at the buffer's (the device's) sample rate:
- `played_samples`: received samples that went out to the device (cleared or trimmed ones excluded).
- `stream_position`: index, in the received stream, of the next sample to play; it advances over
  played, cleared and trimmed samples alike, so it stays on the sender's output timeline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from audio.resample import StreamResampler


class PlayoutBuffer:
    """A thread-safe FIFO of float32 mono samples with jitter prebuffer, clear and underrun counting.

    sample_rate_hz: the device's rate: of everything pulled, and of what is queued.
    input_rate_hz: rate of what is pushed (default: sample_rate_hz); other rates are resampled.
    prebuffer_ms: audio that must be queued before playback starts (and restarts after an underrun).
    max_ms: queue bound; older audio beyond it is dropped (`trimmed_samples`) so latency stays bounded.
    on_pull: called with each block handed to the device, silence included, on the device's thread.
    """

    def __init__(
        self,
        sample_rate_hz: int,
        prebuffer_ms: float = 100.0,
        max_ms: float = 1000.0,
        on_pull: Callable[[np.ndarray], None] | None = None,
        input_rate_hz: int | None = None,
    ):
        if sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        if prebuffer_ms < 0:
            raise ValueError(f"prebuffer_ms must be >= 0, got {prebuffer_ms}")
        if max_ms <= prebuffer_ms:
            raise ValueError(f"max_ms ({max_ms}) must be larger than prebuffer_ms ({prebuffer_ms})")
        self.sample_rate_hz = int(sample_rate_hz)
        self.input_rate_hz = int(input_rate_hz or sample_rate_hz)
        # Only push and clear use it, both on the producer's side.
        self._resampler = (
            StreamResampler(self.input_rate_hz, self.sample_rate_hz)
            if self.input_rate_hz != self.sample_rate_hz
            else None
        )
        self.prebuffer_samples = round(prebuffer_ms * sample_rate_hz / 1000)
        self.max_samples = round(max_ms * sample_rate_hz / 1000)
        self._lock = threading.Lock()
        self._ring = np.zeros(self.max_samples, dtype=np.float32)
        self._start = 0  # ring index of the oldest queued sample
        self._len = 0
        self._playing = False  # False while (re)filling the prebuffer
        self.played_samples = 0
        self.stream_position = 0
        self.cleared_samples = 0
        self.trimmed_samples = 0
        self.underruns = 0  # pulls that ran dry after playback had started
        self.clears = 0
        self.on_pull = on_pull

    # -- producer side -------------------------------------------------------------------
    def push(self, pcm: np.ndarray | bytes) -> None:
        """Queue audio at input_rate_hz: int16 or float (n,) samples, or little-endian PCM16 bytes."""
        x = _as_float32(pcm)
        if self._resampler is not None:
            x = self._resampler.process(x)
        with self._lock:
            n = x.shape[0]
            if n >= self.max_samples:
                # Only the newest max_samples can fit; the rest and the whole queue are trimmed.
                self._drop_oldest(self._len)
                self._count_trim(n - self.max_samples)
                x = x[n - self.max_samples :]
                n = x.shape[0]
            overflow = self._len + n - self.max_samples
            if overflow > 0:
                self._drop_oldest(overflow)
            end = (self._start + self._len) % self.max_samples
            first = min(n, self.max_samples - end)
            self._ring[end : end + first] = x[:first]
            self._ring[: n - first] = x[first:]
            self._len += n

    def clear(self) -> int:
        """Drop everything queued now (the listener will never hear it); return how many samples went."""
        if self._resampler is not None:
            self._resampler.reset()  # the few samples in its filter belong to the dropped audio
        with self._lock:
            dropped = self._len
            self.stream_position += dropped
            self.cleared_samples += dropped
            self._start = 0
            self._len = 0
            self._playing = False
            self.clears += 1
            return dropped

    # -- device side ---------------------------------------------------------------------
    def pull(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Take the next n samples for the device: float32 (n,), silence where the queue ran dry.

        out: optional float32 buffer of length n to fill in place (no allocation in the callback).
        """
        if out is None:
            out = np.empty(n, dtype=np.float32)
        elif out.shape[0] != n:
            raise ValueError(f"out has {out.shape[0]} samples, expected {n}")
        with self._lock:
            if not self._playing and self._len >= max(self.prebuffer_samples, 1):
                self._playing = True
            take = min(n, self._len) if self._playing else 0
            if take:
                first = min(take, self.max_samples - self._start)
                out[:first] = self._ring[self._start : self._start + first]
                out[first:take] = self._ring[: take - first]
                self._start = (self._start + take) % self.max_samples
                self._len -= take
                self.played_samples += take
                self.stream_position += take
            if take < n:
                out[take:] = 0.0
                if self._playing:
                    self.underruns += 1
                    self._playing = False  # refill the prebuffer before resuming
        if self.on_pull is not None:
            self.on_pull(out)
        return out

    # -- reading ---------------------------------------------------------------------------
    @property
    def queued_samples(self) -> int:
        with self._lock:
            return self._len

    @property
    def queued_ms(self) -> float:
        return self.queued_samples * 1000.0 / self.sample_rate_hz

    @property
    def played_ms(self) -> float:
        return self.played_samples * 1000.0 / self.sample_rate_hz

    @property
    def stream_position_ms(self) -> float:
        return self.stream_position * 1000.0 / self.sample_rate_hz

    def _drop_oldest(self, n: int) -> None:
        n = min(n, self._len)
        self._start = (self._start + n) % self.max_samples
        self._len -= n
        self._count_trim(n)

    def _count_trim(self, n: int) -> None:
        self.trimmed_samples += n
        self.stream_position += n


def _as_float32(pcm: np.ndarray | bytes) -> np.ndarray:
    """int16 / float / PCM16 bytes (n,) -> float32 (n,) in [-1, 1]."""
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        if len(pcm) % 2:
            raise ValueError(f"PCM16 bytes must have an even length, got {len(pcm)}")
        pcm = np.frombuffer(pcm, dtype="<i2")
    x = np.asarray(pcm)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {x.shape}")
    if x.dtype == np.int16:
        return x.astype(np.float32) / np.float32(32768.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"expected int16 or float samples, got {x.dtype}")
    return x.astype(np.float32, copy=False)
