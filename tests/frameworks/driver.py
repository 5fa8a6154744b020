"""What every framework driver shares. A driver runs in its framework's own virtualenv (the
frameworks pin versions of websockets, livekit, protobuf, soundfile that the project's own
environment does not hold), so this module needs only the standard library, numpy and soundfile.

A driver holds one conversation with `assistant serve --backend scripted` through its framework's
own realtime classes, fed from tests/data/speech in real time along `TIMELINE`: q1 and the whole
reply, then q2, and interrupt.wav over its reply (a barge-in), then the reply to that. It writes a
`Report` as JSON: what the framework handed the application (reply audio, its transcript, its
interruption signal, the errors it reported).

    python tests/frameworks/agents_sdk.py --url ws://127.0.0.1:8998 --out report.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import soundfile as sf

SPEECH_DIR = Path(__file__).resolve().parents[1] / "data" / "speech"
RATE_HZ = 24_000
CHUNK_MS = 40
LEAD_CHUNKS = 3  # a client's send-ahead, so a busy box does not starve the model
TOKEN = "framework-test-token"
# (clip or None for silence, seconds of silence): the microphone's whole stream.
TIMELINE: list[tuple[str | None, float]] = [
    (None, 0.5),
    ("q1.wav", 0.0),
    (None, 6.0),  # the whole reply (4.5 s) after the end of the turn
    ("q2.wav", 0.0),
    (None, 1.5),  # a second of the reply is heard
    ("interrupt.wav", 0.0),  # ... and talked over
    (None, 6.0),  # the reply to the interruption
]


def timeline() -> tuple[bytes, dict[str, float]]:
    """The microphone's PCM16 at 24 kHz, and where each clip starts in it (seconds)."""
    parts, starts, at = [], {}, 0
    for clip, seconds in TIMELINE:
        if clip is None:
            pcm = np.zeros(round(seconds * RATE_HZ), "<i2")
        else:
            pcm, rate = sf.read(SPEECH_DIR / clip, dtype="int16")
            assert rate == RATE_HZ, clip
            starts[clip] = at / RATE_HZ
        parts.append(np.asarray(pcm, "<i2"))
        at += len(pcm)
    return np.concatenate(parts).tobytes(), starts


@dataclasses.dataclass
class Report:
    """What the framework handed the application, and when (seconds since the microphone started)."""

    framework: str
    version: str
    connected: bool = False
    reply_audio_s: list[float] = dataclasses.field(default_factory=list)  # start of each received chunk
    reply_audio_ms: float = 0.0
    transcript: str = ""
    user_transcripts: list[str] = dataclasses.field(default_factory=list)
    interruptions_s: list[float] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    clips_s: dict[str, float] = dataclasses.field(default_factory=dict)

    def audio(self, at_s: float, ms: float) -> None:
        self.reply_audio_s.append(at_s)
        self.reply_audio_ms += ms

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1))


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0


async def stream(pcm16: bytes, send: Callable[[bytes], Awaitable[None]], clock: Clock) -> None:
    """Send the microphone's stream in CHUNK_MS chunks, paced by the wall clock."""
    chunk = RATE_HZ * 2 * CHUNK_MS // 1000
    for n, i in enumerate(range(0, len(pcm16), chunk)):
        await send(pcm16[i : i + chunk])
        await asyncio.sleep(max(0.0, (n + 1 - LEAD_CHUNKS) * CHUNK_MS / 1000 - clock.now()))


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="the server's root (ws://HOST:PORT)")
    parser.add_argument("--out", type=Path, required=True, help="where the JSON report goes")
    return parser.parse_args()
