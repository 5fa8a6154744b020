"""The user's audio between arrival and the frame clock: the bounded input FIFO, and the recent
audio kept so a finished utterance can be cut out for its caption."""

from __future__ import annotations

import functools

import numpy as np

from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ
from audio.resample import StreamResampler

FRAME_OK = "ok"
FRAME_PADDED = "padded"  # a partial frame completed with silence while the user was silent
FRAME_UNDERRUN = "underrun"  # input missing (in part or whole) while the user spoke, or none at all


class InputBuffer:
    """The session's input FIFO between arrival (any chunk size) and the frame clock (80 ms frames).

    Latency stays bounded:
    - input beyond `max_backlog_frames` is dropped oldest first (counted as drops);
    - a tick that finds less than a frame takes what there is behind leading zeros, so late input
      never queues up behind inserted silence and frames stay aligned to the clock: the end of a
      turn reaches the engine at the next tick;
    - while the user is silent, queued audio beyond a frame (and the cushion) is dropped when it is
      quiet (below -50 dBFS), or in any case once the engine has heard the end of the last turn.
    """

    def __init__(
        self,
        frame_samples: int = FRAME_SAMPLES,
        max_backlog_frames: int = 3,
        quiet_level: float = 10 ** (-50 / 20),
        max_chunk_samples: int = SAMPLE_RATE_HZ,
        lead_samples: int = 0,
        trim_silence: bool = True,
    ):
        # A cushion kept queued while the user is silent, so input that arrives in bursts (a
        # resampler's blocks) does not run dry mid-utterance; 0 for smooth 24 kHz input.
        self.lead_samples = lead_samples
        # False when the frame loop ticks on the input itself (every frame is taken as soon as it is
        # complete): a backlog then never builds up behind a clock, and no silence is dropped.
        self.trim_silence = trim_silence
        self.quiet_level = quiet_level  # peak below this (-50 dBFS) counts as quiet
        self.max_chunk_samples = max_chunk_samples  # chunks up to this (1 s) are kept whole
        if max_backlog_frames < 1:
            raise ValueError(f"max_backlog_frames must be >= 1, got {max_backlog_frames}")
        self.frame_samples = frame_samples
        self.max_samples = max_backlog_frames * frame_samples
        self._buf = np.zeros(self.max_samples + 2 * frame_samples, dtype=np.float32)
        self._len = 0
        self.last_taken = 0  # input samples in the frame the last `take` returned (the rest is padding)

    @property
    def level(self) -> int:
        """Samples waiting."""
        return self._len

    def push(self, x: np.ndarray) -> int:
        """Append float32 samples; return how many of the oldest were dropped to respect the bound.

        The bound is `max_backlog_frames`, or one frame more than this chunk for clients that send
        big chunks (up to `max_chunk_samples`), so a chunk is never cut only for being big.
        """
        n = x.shape[0]
        bound = max(self.max_samples, min(n, self.max_chunk_samples) + self.frame_samples)
        if bound > self._buf.shape[0]:
            grown = np.zeros(bound, dtype=np.float32)
            grown[: self._len] = self._buf[: self._len]
            self._buf = grown
        if n >= bound:
            dropped = self._len + n - bound
            self._buf[:bound] = x[n - bound :]
            self._len = bound
            return dropped
        dropped = max(0, self._len + n - bound)
        if dropped:
            self._discard(dropped)
        self._buf[self._len : self._len + n] = x
        self._len += n
        return dropped

    def _discard(self, n: int) -> None:
        self._buf[: self._len - n] = self._buf[n : self._len]
        self._len -= n

    def take(
        self, user_silent: bool, may_trim: bool = False, shift: int | None = None
    ) -> tuple[np.ndarray | None, str]:
        """The frame for this tick, float32 (frame_samples,) or None, and FRAME_OK/PADDED/UNDERRUN.

        A short buffer is taken whole behind leading zeros, so late input never adds latency: the
        frame always ends at the newest sample. That is an underrun when the user was speaking (or
        nothing came at all), and harmless padding of silence otherwise.
        may_trim: the engine has already heard the end of the last turn, so queued silence beyond
            one frame may go (dropping it earlier would delay the engine's own end-of-turn).
        shift: where the frame should end against a whole frame from the front of the queue
            (assistant/conversation/frame_phase.py), applied only while the user is silent: < 0 pads
            that much silence in front of fewer input samples, > 0 drops that much queued input
            first (quiet, or `may_trim`). None: no phase is kept (the frame ends at the newest sample
            when the buffer is short, and a quiet backlog is trimmed).
        """
        f = self.frame_samples
        self.last_taken = 0
        if self._len == 0:
            return None, FRAME_UNDERRUN
        if shift is not None:
            return self._take_aligned(user_silent, may_trim, shift)
        if self._len < f or (user_silent and self._len < f + self.lead_samples):
            # Take what there is behind leading zeros, keeping the cushion.
            take = max(0, self._len - self.lead_samples)
            frame = np.zeros(f, dtype=np.float32)
            frame[f - take :] = self._buf[:take]
            self._discard(take)
            self.last_taken = take
            return frame, (FRAME_PADDED if user_silent else FRAME_UNDERRUN)
        trim = self.trim_silence and user_silent
        if trim and may_trim and self._len > f + self.lead_samples:
            self._discard(self._len - f - self.lead_samples)
        elif trim and self._len - f - self.lead_samples >= f // 4:
            # Backlog while the user is silent (a stall, or late input piled up behind the clock):
            # drop its oldest part if it is quiet, down to the cushion. Never inside a turn, not even
            # in its closing silence: the engine must not hear the end of a turn before the server
            # has (and dropping there would not bring the engine's end of turn any sooner).
            excess = self._len - f - self.lead_samples
            if np.abs(self._buf[:excess]).max() < self.quiet_level:
                self._discard(excess)
        frame = self._buf[:f].copy()
        self._discard(f)
        self.last_taken = f
        return frame, FRAME_OK

    def _take_aligned(self, user_silent: bool, may_trim: bool, shift: int) -> tuple[np.ndarray, str]:
        f = self.frame_samples
        if user_silent and shift > 0 and self._len > f:
            drop = min(shift, self._len - f)
            if may_trim or np.abs(self._buf[:drop]).max() < self.quiet_level:
                self._discard(drop)
        need = max(0, f + shift) if user_silent and shift < 0 else f
        status = FRAME_OK if need == f else FRAME_PADDED
        if self._len < need:  # late: what there is, behind zeros (the next silence re-aligns)
            need, status = self._len, (FRAME_PADDED if user_silent else FRAME_UNDERRUN)
        frame = np.zeros(f, dtype=np.float32)
        frame[f - need :] = self._buf[:need]
        self._discard(need)
        self.last_taken = need
        return frame, status

    def reset(self) -> None:
        self._len = 0


@functools.cache
def resampler_burst_samples(rate_hz: int, chunk_ms: int = 20) -> int:
    """How unevenly the streaming resampler rate_hz -> 24 kHz hands out samples (they come in
    blocks): the spread of its running deficit against a steady stream, in 24 kHz samples."""
    resampler = StreamResampler(rate_hz, SAMPLE_RATE_HZ)
    chunk = np.zeros(rate_hz * chunk_ms // 1000, dtype=np.float32)
    got = np.cumsum([resampler.process(chunk).shape[0] for _ in range(100)])
    deficit = SAMPLE_RATE_HZ * chunk_ms // 1000 * np.arange(1, 101) - got
    steady = deficit[25:]
    return int(steady.max() - steady.min())


class UtteranceAudio:
    """The user's recent input (24 kHz) so a finished utterance can be cut out for its caption.

    Outside an utterance only the last `keep_samples` are kept (the VAD reports onsets late and
    with prefix padding); inside one, up to `max_samples`.
    """

    def __init__(self, keep_samples: int = SAMPLE_RATE_HZ, max_samples: int = 30 * SAMPLE_RATE_HZ):
        self.keep_samples = keep_samples
        self.max_samples = max_samples
        self._chunks: list[np.ndarray] = []
        self._len = 0
        self.base = 0  # input position of the first kept sample
        self.active = False

    def push(self, x: np.ndarray) -> None:
        self._chunks.append(x)
        self._len += x.shape[0]
        limit = self.max_samples if self.active else 2 * self.keep_samples
        if self._len > limit:
            pcm = np.concatenate(self._chunks)[-(self.max_samples if self.active else self.keep_samples) :]
            self.base += self._len - pcm.shape[0]
            self._chunks, self._len = [pcm], pcm.shape[0]

    def cut(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) of the input timeline that are still kept."""
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        return pcm[max(0, start - self.base) : max(0, end - self.base)]
