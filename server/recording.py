"""Per-session recordings (`assistant serve --record DIR`).

Each session writes `DIR/<session_id>.wav`, a stereo 24 kHz 16-bit WAV (left: the user's input
as the engine heard it, right: the assistant's output, sample-aligned frame by frame), and
`DIR/<session_id>.jsonl`, one JSON object per event (text pieces, VAD events, barge-ins with
what was cut, latencies). Both are flushed every half second and the WAV header is
rewritten on every flush, so a killed server leaves valid files missing at most ~0.5 s.
"""

from __future__ import annotations

import json
import time
import wave
from pathlib import Path

import numpy as np

from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ

FLUSH_EVERY_S = 0.5  # a killed server loses at most about this much


class Recorder:
    def __init__(self, directory: str | Path, session_id: str, *, clock=time.monotonic):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.wav_path = self.directory / f"{session_id}.wav"
        self.events_path = self.directory / f"{session_id}.jsonl"
        self.clock = clock
        self._t0 = clock()
        self._file = open(self.wav_path, "wb")  # noqa: SIM115 - closed in close()
        self._wav = wave.open(self._file, "wb")
        self._wav.setnchannels(2)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE_HZ)
        # Write the header now so even an empty recording is a valid WAV.
        self._wav.writeframes(b"")
        self._file.flush()
        self._events = open(self.events_path, "w", encoding="utf-8")  # noqa: SIM115
        self._pending: list[np.ndarray] = []
        self._lines: list[str] = []
        self._last_flush = self._t0
        self.frames = 0
        self.closed = False

    def write(self, user: np.ndarray, assistant: np.ndarray) -> None:
        """One 80 ms frame of each side: float32 (1920,) at 24 kHz."""
        if self.closed:
            return
        stereo = np.empty((FRAME_SAMPLES, 2), dtype=np.float32)
        stereo[:, 0] = user
        stereo[:, 1] = assistant
        self._pending.append(stereo)
        self.frames += 1
        self._maybe_flush()

    def log(self, record: dict) -> None:
        if self.closed:
            return
        record = {"t_s": round(self.clock() - self._t0, 3), "frame": self.frames, **record}
        self._lines.append(json.dumps(record, separators=(",", ":")))
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self.clock() - self._last_flush >= FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered; the WAV header is patched to the new length (wave does it on write)."""
        self._last_flush = self.clock()
        if self._pending:
            pcm = np.concatenate(self._pending)
            self._pending.clear()
            pcm16 = np.clip(np.rint(pcm * 32768.0), -32768, 32767).astype("<i2")
            self._wav.writeframes(pcm16.tobytes())
            self._file.flush()
        if self._lines:
            self._events.write("\n".join(self._lines) + "\n")
            self._lines.clear()
            self._events.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        self.closed = True
        self._wav.close()
        self._file.close()
        self._events.close()
