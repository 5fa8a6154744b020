"""Per-session recordings (`assistant serve --record DIR`).

Each session writes `DIR/<session_id>.wav`, a stereo 24 kHz 16-bit WAV (left: the user's input
as the engine heard it, right: the assistant's output, sample-aligned frame by frame), and
`DIR/<session_id>.jsonl`, one JSON object per event (text pieces, VAD events, barge-ins with
what was cut, latencies). Both are flushed every half second and the WAV header is
rewritten on every flush, so a killed server leaves valid files missing at most ~0.5 s.

A recording never ends a conversation. `Recordings` opens each session's `Recorder` only while
the directory has `min_free_mb` free; a recorder that cannot open, or whose disk fails or fills
mid-session, leaves its session unrecorded (what was flushed stays on disk), logs one warning for
it and counts it in `recording_failures_total`, and `describe()` (in /healthz) says "failing",
with the reason, until a recording opens again or a later check finds the directory usable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ

FLUSH_EVERY_S = 0.5  # a killed server loses at most about this much
RECHECK_EVERY_S = 10.0  # a failing directory is looked at again at most this often (on a health request)

log = logging.getLogger("assistant.server")


class Recorder:
    """One session's WAV and JSONL. Opening raises OSError; afterwards nothing raises: the first
    OSError stops the recording (the files closed as they are) and is handed to `on_failure`."""

    def __init__(
        self,
        directory: str | Path,
        session_id: str,
        *,
        clock=time.monotonic,
        on_failure: Callable[[OSError], None] | None = None,
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.wav_path = self.directory / f"{session_id}.wav"
        self.events_path = self.directory / f"{session_id}.jsonl"
        self.clock = clock
        self.on_failure = on_failure
        self._t0 = clock()
        self._file = self._events = self._wav = None
        try:
            self._file = open(self.wav_path, "wb")  # noqa: SIM115 - closed in close()
            self._wav = wave.open(self._file, "wb")
            self._wav.setnchannels(2)
            self._wav.setsampwidth(2)
            self._wav.setframerate(SAMPLE_RATE_HZ)
            # Write the header now so even an empty recording is a valid WAV.
            self._wav.writeframes(b"")
            self._file.flush()
            self._events = open(self.events_path, "w", encoding="utf-8")  # noqa: SIM115
        except OSError:
            if self._wav is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._wav.close()
            self._close_files()
            for path in (self.wav_path, self.events_path):  # a header-less WAV would look like a recording
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            raise
        self._pending: list[np.ndarray] = []
        self._lines: list[str] = []
        self._last_flush = self._t0
        self.frames = 0
        self.closed = False
        self.error: OSError | None = None  # what stopped the recording early

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
        if self.closed:
            return
        self._last_flush = self.clock()
        try:
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
        except OSError as exc:
            self._fail(exc)

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        if self.closed:  # the last flush failed: the files are closed already
            return
        self.closed = True
        try:
            self._wav.close()
        except OSError as exc:
            self._fail(exc)
            return
        self._close_files()

    def _fail(self, exc: OSError) -> None:
        """Stop recording: drop what is buffered, close the files without writing more."""
        self.closed = True
        self.error = exc
        self._pending.clear()
        self._lines.clear()
        # The WAV writer patches its header on close (and on garbage collection): let it try once, now.
        with contextlib.suppress(OSError, ValueError):
            self._wav.close()
        self._close_files()
        if self.on_failure is not None:
            self.on_failure(exc)

    def _close_files(self) -> None:
        for f in (self._file, self._events):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()  # flushes its buffer first: that may fail, and the file is closed anyway


def free_mb(directory: Path) -> float:
    """Megabytes (10**6 bytes) an unprivileged writer may still use on `directory`'s filesystem."""
    return shutil.disk_usage(directory).free / 1e6


class Recordings:
    """The server's recording directory: opens each session's Recorder, keeps the health of it.

    metrics: server/metrics.py's Metrics (recording_failures_total is counted there).
    clock: seconds, monotonic (when to look at a failing directory again)."""

    def __init__(self, directory: str | Path, *, min_free_mb: float, metrics=None, clock=time.monotonic):
        self.directory = Path(directory)
        self.min_free_mb = min_free_mb
        self.metrics = metrics
        self.clock = clock
        self.failing: str | None = None  # why the last recording failed; None while they work
        self._failed_at = 0.0

    def open(self, session_id: str) -> Recorder | None:
        """The session's recorder, or None (the session goes on unrecorded; the reason is logged)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            free = free_mb(self.directory)
            if free < self.min_free_mb:
                self.failed(session_id, "low_disk", self._low_disk(free))
                return None
            recorder = Recorder(
                self.directory,
                session_id,
                on_failure=lambda exc: self.failed(session_id, "write", f"writing failed: {_describe(exc)}"),
            )
        except OSError as exc:
            self.failed(session_id, "open", f"cannot open a recording in {self.directory}: {_describe(exc)}")
            return None
        self.failing = None
        return recorder

    def failed(self, session_id: str, stage: str, reason: str) -> None:
        """One session's recording failed at `stage` (low_disk, open or write): counted, logged once."""
        self.failing = reason
        self._failed_at = self.clock()
        if self.metrics is not None:
            self.metrics.inc("recording_failures", label=stage)
        log.warning("session %s goes on unrecorded: %s", session_id, reason)

    def describe(self) -> tuple[str, str | None]:
        """("ok" | "failing", the reason when failing). A failing directory is looked at again (free
        space, writable) at most every RECHECK_EVERY_S, so one that was fixed reads "ok" again
        without waiting for a session."""
        if self.failing is not None and self.clock() - self._failed_at >= RECHECK_EVERY_S:
            self._failed_at = self.clock()
            with contextlib.suppress(OSError):
                free = free_mb(self.directory)
                if free < self.min_free_mb:
                    self.failing = self._low_disk(free)
                elif os.access(self.directory, os.W_OK):
                    self.failing = None
        return ("ok", None) if self.failing is None else ("failing", self.failing)

    def _low_disk(self, free: float) -> str:
        return (
            f"{free:.1f} MB free in {self.directory}, under the {self.min_free_mb:g} MB "
            "--record-min-free-mb asks for"
        )


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc) if exc.errno else str(exc)
