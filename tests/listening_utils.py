"""Compare what a client played (or captured) with what the other side sent: speed, pitch, gaps.

Pure numpy on mono float32 (and `recorded_session`, which reads a server's `--record` files). `compare(heard, heard_rate, sent, sent_rate)` resamples `heard` to
`sent_rate`, measures the voiced span of each (first to last loud 20 ms window), and finds the
one lag at which `heard` best matches the voiced part of `sent`. Played at the wrong rate, the
voiced span stretches (duration ratio != 1) and no single lag fits (low correlation); a dropped
or repeated stretch shifts everything after it, which also breaks the single-lag fit.

`window_correlations` matches each quarter second of `sent` on its own, for a path that may
legitimately pad or trim a pause (the server does, for input that is late or piles up): the
rate is right when nearly every window matches, wherever the gaps fell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

WINDOW_S = 0.02
# A 20 ms window counts as voiced when it is within this many dB of the loudest one.
VOICED_BELOW_PEAK_DB = 35.0


@dataclass(frozen=True)
class Listening:
    """How `heard` matches `sent`: `duration_ratio` of the voiced spans, `correlation` (normalised,
    over the voiced part of `sent`) at the best single `lag_s` (heard time - sent time)."""

    duration_ratio: float
    correlation: float
    lag_s: float
    heard_voiced_s: float
    sent_voiced_s: float

    def __str__(self) -> str:
        return (
            f"duration ratio {self.duration_ratio:.3f} ({self.heard_voiced_s:.2f} s heard / "
            f"{self.sent_voiced_s:.2f} s sent), correlation {self.correlation:.3f} at lag {self.lag_s * 1000:.1f} ms"
        )


def voiced_windows(x: np.ndarray, rate: int) -> np.ndarray:
    """Whether each 20 ms window of `x` is voiced (within VOICED_BELOW_PEAK_DB of the loudest)."""
    n = int(WINDOW_S * rate)
    frames = len(x) // n
    rms = np.sqrt(np.mean(x[: frames * n].reshape(frames, n).astype(np.float64) ** 2, axis=1))
    if frames == 0 or rms.max() <= 0:
        return np.zeros(frames, dtype=bool)
    return rms >= rms.max() * 10 ** (-VOICED_BELOW_PEAK_DB / 20)


def voiced_span(x: np.ndarray, rate: int) -> tuple[int, int]:
    """(first, end) sample of the voiced part of `x`: first to last loud 20 ms window; (0, 0) if silent."""
    n = int(WINDOW_S * rate)
    loud = np.flatnonzero(voiced_windows(x, rate))
    return (int(loud[0] * n), int((loud[-1] + 1) * n)) if len(loud) else (0, 0)


def best_lag(heard: np.ndarray, template: np.ndarray) -> tuple[int, float]:
    """The offset in `heard` where `template` fits best, and the normalised correlation there."""
    if len(heard) < len(template) or len(template) == 0:
        return 0, 0.0
    size = 1 << int(np.ceil(np.log2(len(heard) + len(template))))
    spectrum = np.fft.rfft(heard.astype(np.float64), size) * np.conj(
        np.fft.rfft(template.astype(np.float64), size)
    )
    dots = np.fft.irfft(spectrum, size)[: len(heard) - len(template) + 1]
    energy = np.cumsum(np.concatenate([[0.0], heard.astype(np.float64) ** 2]))
    heard_norms = np.sqrt(np.maximum(energy[len(template) :] - energy[: -len(template)], 1e-20))
    scores = dots / (heard_norms * np.linalg.norm(template))
    at = int(np.argmax(scores))
    return at, float(scores[at])


def window_correlations(
    heard: np.ndarray, heard_rate: int, sent: np.ndarray, sent_rate: int, window_s: float = 0.25
) -> np.ndarray:
    """For each voiced `window_s` window of `sent`, its correlation at its own best lag in `heard`."""
    if heard_rate != sent_rate:
        heard = soxr.resample(heard.astype(np.float32), heard_rate, sent_rate)
    n = int(window_s * sent_rate)
    first, end = voiced_span(sent, sent_rate)
    windows = [sent[at : at + n] for at in range(first, end - n + 1, n)]
    loud = max(float(np.sqrt(np.mean(w**2))) for w in windows)
    return np.array(
        [
            best_lag(heard, w)[1]
            for w in windows
            if np.sqrt(np.mean(w**2)) >= loud * 10 ** (-VOICED_BELOW_PEAK_DB / 20)
        ]
    )


def compare(heard: np.ndarray, heard_rate: int, sent: np.ndarray, sent_rate: int) -> Listening:
    """Match `heard` (at `heard_rate`) against `sent` (at `sent_rate`); see the module docstring."""
    if heard_rate != sent_rate:
        heard = soxr.resample(heard.astype(np.float32), heard_rate, sent_rate)
    sent_first, sent_end = voiced_span(sent, sent_rate)
    heard_first, heard_end = voiced_span(heard, sent_rate)
    at, correlation = best_lag(heard, sent[sent_first:sent_end])
    sent_s = (sent_end - sent_first) / sent_rate
    heard_s = (heard_end - heard_first) / sent_rate
    return Listening(
        duration_ratio=heard_s / sent_s if sent_s else float("nan"),
        correlation=correlation,
        lag_s=(at - sent_first) / sent_rate,
        heard_voiced_s=heard_s,
        sent_voiced_s=sent_s,
    )


def recorded_session(
    record_dir: Path, session_id: str, timeout_s: float = 5.0
) -> tuple[np.ndarray, np.ndarray, int]:
    """A finished session's `--record` WAV: (what the model heard, what the server sent, rate)."""
    events = record_dir / f"{session_id}.jsonl"
    deadline = time.monotonic() + timeout_s
    while "session.ended" not in events.read_text():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server never finished recording session {session_id}")
        time.sleep(0.1)
    recorded, rate = sf.read(record_dir / f"{session_id}.wav", dtype="float32", always_2d=True)
    return recorded[:, 0], recorded[:, 1], rate


def playout_headroom_ms(handed: list[tuple[float, float]], target_ms: float) -> float:
    """The least audio an ideal playout buffer would have held, in ms, when each piece came in.

    `handed`: (arrival ms, duration ms) of each piece of audio, in order. The ideal buffer starts
    playing once `target_ms` is queued and then plays without pause; just before each later piece
    arrives it holds what has come in less what has played. Below 0 it would have run dry: that
    audio came in too late for any player with that buffer, whatever the player does. Once dry it
    waits for `target_ms` again, as the page's does. inf if it never started."""
    queued, playing, last, least = 0.0, False, 0.0, float("inf")
    for at, duration in handed:
        if playing:
            queued -= at - last
            least = min(least, queued)
            if queued < 0:
                queued, playing = 0.0, False
        queued += duration
        last = at
        playing = playing or queued >= target_ms
    return least
