"""A simulated room for echo tests and benchmarks: what a laptop's mic hears while its speakers play.

mic = near-end speech + echo + noise. The echo is what was played, compressed at its peaks (a
small speaker driven hard is not linear, which no linear filter can model), delayed (device
latency plus the air), attenuated, low-passed (small speakers lose the highs) and smeared by a few
wall reflections. `SimulatedRoom.capture` is streaming: block by block on the mic's timeline it gives
the same samples as one call on the whole signal. `run_through_room` feeds a canceller the way
`assistant talk` does; `erle_db` and `speech_level_db` score what it made of the mic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from audio.pcm import as_mono_float32

# Wall reflections after the direct sound: (ms later, gain relative to it).
REFLECTIONS = ((4.5, 0.5), (11.0, 0.3), (23.0, 0.15))
_LOWPASS_TAPS_MS = 1.5
MEASURE_WINDOW_MS = 50  # scoring windows: long enough that the canceller's few ms of delay do not matter


@dataclass(frozen=True)
class RoomConfig:
    delay_ms: float = 80.0  # from a sample being handed to the speaker to its direct sound at the mic
    echo_db: float = -6.0  # gain of the direct sound
    lowpass_hz: float = 4000.0
    # Speaker non-linearity, tanh(drive * x) / drive: 1 gives ~4% distortion at a 0.7 peak, a laptop
    # speaker turned well up; 0 = linear.
    drive: float = 1.0
    noise_dbfs: float = -70.0  # the mic's own noise floor
    seed: int = 0


def _lowpass_half(sample_rate_hz: int) -> int:
    return max(1, round(_LOWPASS_TAPS_MS * sample_rate_hz / 2000))


def room_response(sample_rate_hz: int, config: RoomConfig) -> np.ndarray:
    """The echo path: float64 (L,), the direct sound's low-pass kernel first (its peak at index
    `_lowpass_half`), then the reflections."""
    half = _lowpass_half(sample_rate_hz)
    t = np.arange(-half, half + 1)
    cutoff = config.lowpass_hz / sample_rate_hz
    lowpass = 2 * cutoff * np.sinc(2 * cutoff * t) * np.hamming(t.shape[0])
    lowpass /= lowpass.sum()  # unit gain at DC
    taps = [(0.0, 1.0), *REFLECTIONS]
    response = np.zeros(round(taps[-1][0] * sample_rate_hz / 1000) + lowpass.shape[0])
    for ms, gain in taps:
        start = round(ms * sample_rate_hz / 1000)
        response[start : start + lowpass.shape[0]] += gain * lowpass
    return response * 10 ** (config.echo_db / 20)


class SimulatedRoom:
    """One mic and one speaker in a room; `capture` is called once per mic block, in order."""

    def __init__(self, sample_rate_hz: int, config: RoomConfig | None = None):
        self.config = config or RoomConfig()
        self.sample_rate_hz = int(sample_rate_hz)
        self.response = room_response(self.sample_rate_hz, self.config)
        # The kernel's peak, not its first tap, arrives after delay_ms.
        delay = max(
            0, round(self.config.delay_ms * self.sample_rate_hz / 1000) - _lowpass_half(sample_rate_hz)
        )
        # What was played, as far back as the delayed response reaches.
        self._history = np.zeros(delay + self.response.shape[0] - 1)
        self._rng = np.random.default_rng(self.config.seed)
        self._noise_rms = 10 ** (self.config.noise_dbfs / 20)

    def capture(self, speech: np.ndarray, played: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One block: near-end speech and what the speaker plays over the same span, float (n,) each.

        Returns (mic, echo), float32 (n,) each: what the mic records, and the echo part of it.
        """
        speech, played = as_mono_float32(speech), as_mono_float32(played)
        if speech.shape != played.shape:
            raise ValueError(f"speech {speech.shape} and played {played.shape} must cover the same span")
        n = speech.shape[0]
        if self.config.drive:
            played = np.tanh(self.config.drive * played) / self.config.drive
        signal = np.concatenate([self._history, played])
        echo = np.convolve(signal[: n + self.response.shape[0] - 1], self.response, mode="valid")
        self._history = signal[signal.shape[0] - self._history.shape[0] :]
        noise = self._rng.normal(0.0, self._noise_rms, n)
        return (speech + echo + noise).astype(np.float32), echo.astype(np.float32)


@dataclass(frozen=True)
class RoomRun:
    """One pass through a room: float32 (n,) each on the mic's timeline, and the canceller's CPU time."""

    mic: np.ndarray
    echo: np.ndarray
    cleaned: np.ndarray  # the canceller's output, zero where it still held samples at the end
    cpu_ms_per_10ms: float


def run_through_room(
    canceller, room: SimulatedRoom, far: np.ndarray, near: np.ndarray, block_samples: int
) -> RoomRun:
    """Play `far` into the room while `near` talks, block by block as `assistant talk` does: each
    block goes to the canceller as its reference (`played`) before the mic block it echoes in
    (`process`). far, near: float (n,) at the room's rate."""
    n = min(far.shape[0], near.shape[0]) // block_samples * block_samples
    mic, echo, cleaned = (np.zeros(n, np.float32) for _ in range(3))
    cpu_ns = 0
    done = 0
    for start in range(0, n, block_samples):
        span = slice(start, start + block_samples)
        mic[span], echo[span] = room.capture(near[span], far[span])
        t0 = time.thread_time_ns()
        canceller.played(far[span])
        out = canceller.process(mic[span])
        cpu_ns += time.thread_time_ns() - t0
        cleaned[done : done + out.shape[0]] = out
        done += out.shape[0]
    return RoomRun(mic, echo, cleaned, cpu_ns / 1e6 / max(1.0, n * 100 / room.sample_rate_hz))


def _window_energy(x: np.ndarray, window: int) -> np.ndarray:
    n = x.shape[0] // window
    return np.square(x[: n * window].astype(np.float64)).reshape(n, window).sum(axis=1)


def erle_db(
    mic: np.ndarray,
    cleaned: np.ndarray,
    echo: np.ndarray,
    speech: np.ndarray,
    sample_rate_hz: int,
    settle_s: float = 1.0,
) -> float:
    """Echo return loss enhancement: how much quieter a canceller made the echo, in dB.

    All float (n,) on the mic's timeline: the mic, the canceller's output, the echo part of the
    mic and the near-end speech part. Scored over the windows where the echo is within 40 dB of
    its loudest and no near-end speech is within a window either side, from `settle_s` after the
    echo first appears (the canceller converging is left out).
    """
    window = sample_rate_hz * MEASURE_WINDOW_MS // 1000
    n = min(x.shape[0] for x in (mic, cleaned, echo, speech)) // window * window
    e_mic, e_out = _window_energy(mic[:n], window), _window_energy(cleaned[:n], window)
    e_echo, e_speech = _window_energy(echo[:n], window), _window_energy(speech[:n], window)
    loud = e_echo > e_echo.max() * 1e-4
    talking = e_speech > window * 1e-6  # near-end above -60 dBFS
    talking = talking | np.roll(talking, 1) | np.roll(talking, -1)
    first = np.flatnonzero(loud)
    if first.size == 0:
        raise ValueError("the mic holds no echo to score")
    settled = np.arange(loud.shape[0]) >= first[0] + settle_s * 1000 / MEASURE_WINDOW_MS
    pick = loud & ~talking & settled
    if not pick.any():
        raise ValueError("no echo-only stretch after the settling time to score")
    return float(10 * np.log10(e_mic[pick].sum() / max(e_out[pick].sum(), 1e-20)))


def speech_level_db(cleaned: np.ndarray, speech: np.ndarray, sample_rate_hz: int) -> float:
    """Level of the canceller's output relative to the near-end speech, where that speech is loud.

    0 dB: the user's voice came through whole; very negative: the canceller suppressed it too.
    """
    window = sample_rate_hz * MEASURE_WINDOW_MS // 1000
    n = min(cleaned.shape[0], speech.shape[0]) // window * window
    e_out, e_speech = _window_energy(cleaned[:n], window), _window_energy(speech[:n], window)
    loud = e_speech > e_speech.max() * 1e-2
    return float(10 * np.log10(e_out[loud].sum() / e_speech[loud].sum()))
