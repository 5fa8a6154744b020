"""`assistant talk` on speakers: in a simulated room against `assistant serve --backend scripted`.

The session runs `client.talk.talk` in this process with a room device (tests/room_utils.py) in
place of the sound devices: the mic hears the user's recorded speech plus the echo of what the
speaker plays, 40-120 ms late, attenuated, distorted, low-passed, with noise; the device runs at
48 kHz. What the client sends and receives is spied on at `NativeClient`, unchanged otherwise.

Without echo cancellation the scripted assistant hears its own reply and barges in on itself.
With it, a whole reply plays out untouched, and the user's real interruption still cuts the next
reply within 300 ms. ERLE is computed from the mic and what actually left the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from room_utils import RoomAudio
from server_utils import start_server

from assistant import cli
from assistant.backends.scripted import load_reply
from audio.resample import resample
from bench.room import RoomConfig, erle_db
from client import talk
from client.native import NativeClient, ServerEvent

AUDIO = Path(__file__).resolve().parent / "data" / "speech"
RATE = 48000  # a laptop's device rate; the files are 24 kHz
WINDOW_MS = 10
ERLE_FLOOR_DB = 20.0


def speech(name: str) -> np.ndarray:
    pcm, rate = sf.read(AUDIO / name, dtype="float32")
    return resample(pcm, rate, RATE)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def envelope_db(pcm: np.ndarray) -> np.ndarray:
    """dBFS per WINDOW_MS window: float (n // window,)."""
    window = RATE * WINDOW_MS // 1000
    n = pcm.shape[0] // window
    return 10 * np.log10(
        np.mean(pcm[: n * window].astype(np.float64).reshape(n, window) ** 2, axis=1) + 1e-12
    )


@dataclass
class Session:
    """What one talk session did: the room device, what was sent, the events received."""

    audio: RoomAudio
    sent: list[np.ndarray] = field(default_factory=list)
    events: list[ServerEvent] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def of(self, kind: str) -> list[float]:
        """at_ms of each event of this kind, on the input timeline."""
        return [e.get("at_ms") for e in self.events if e.type == kind]

    @property
    def sent_pcm(self) -> np.ndarray:
        return np.concatenate([np.asarray(b, dtype=np.float32) for b in self.sent])


class Lines:
    def __init__(self, session: Session):
        self.session = session

    def say(self, line):
        self.session.lines.append(line)

    def update(self, view):
        self.session.lines.extend(view.take_lines())

    def close(self, view):
        self.update(view)


async def talk_in_room(
    monkeypatch, tmp_path, url: str, user: np.ndarray, delay_ms: float, *options
) -> Session:
    wav = tmp_path / "user.wav"
    sf.write(wav, user, RATE)
    argv = [
        "talk",
        "--server",
        url,
        "--input-file",
        str(wav),
        "--output-file",
        str(wav.with_suffix(".out.wav")),
    ]
    argv += ["--tail-seconds", "0", "--buffer-ms", "500", "--no-captions", *options]
    args = cli.build_parser(argv).parse_args(argv)
    config = RoomConfig(delay_ms=delay_ms, echo_db=-6.0, noise_dbfs=-65.0)
    session = Session(RoomAudio(wav, args.output_file, args.block_ms, args.tail_seconds, config))
    send, receive = NativeClient.send_audio, NativeClient.receive

    async def spy_send(self, pcm):
        session.sent.append(np.array(pcm, dtype=np.float32))
        await send(self, pcm)

    async def spy_receive(self):
        async for item in receive(self):
            if isinstance(item, ServerEvent):
                session.events.append(item)
            yield item

    monkeypatch.setattr(NativeClient, "send_audio", spy_send)
    monkeypatch.setattr(NativeClient, "receive", spy_receive)
    assert await talk.talk(args, display_factory=lambda title: Lines(session), audio=session.audio) == 0
    return session


def onsets_ms(pcm: np.ndarray, gap_ms: float = 1000) -> list[float]:
    """Where each stretch of speech begins after a quiet gap of at least gap_ms."""
    voiced = np.flatnonzero(envelope_db(pcm) > -45.0) * WINDOW_MS
    starts = [voiced[0]] + [b for a, b in zip(voiced[:-1], voiced[1:], strict=True) if b - a > gap_ms]
    return [float(s) for s in starts]


@pytest.fixture(scope="module")
def server():
    with start_server("--backend", "scripted") as address:
        yield address


async def test_speakers_without_echo_cancellation_the_assistant_interrupts_itself(
    server, monkeypatch, tmp_path
):
    q1 = speech("q1.wav")
    user = np.concatenate([q1, silence(6.0)])
    q1_end_ms = q1.shape[0] * 1000 / RATE
    session = await talk_in_room(monkeypatch, tmp_path, server.ws_url, user, 40.0, "--no-echo-cancel")
    print("\n".join(["", *session.lines]))
    self_barge_ins = [t for t in session.of("barge_in") if t > q1_end_ms]
    assert self_barge_ins, f"the reply's echo should have cut it; events: {[e.type for e in session.events]}"
    assert "-- interrupted" in session.lines, "the listener saw the reply cut while nobody spoke"
    print(
        f"echo off: {len(self_barge_ins)} barge-ins on its own voice, the first {self_barge_ins[0] - q1_end_ms:.0f} ms after q1"
    )


async def test_speakers_with_echo_cancellation_a_whole_reply_plays_and_the_user_still_interrupts(
    server, monkeypatch, tmp_path
):
    q1, q2, interrupt = speech("q1.wav"), speech("q2.wav"), speech("interrupt.wav")
    user = np.concatenate([q1, silence(6.5), q2, silence(2.5), interrupt, silence(1.0)])
    session = await talk_in_room(monkeypatch, tmp_path, server.ws_url, user, 120.0, "--echo-cancel")
    print("\n".join(["", *session.lines]))
    audio = session.audio
    onsets = onsets_ms(audio.speech)
    assert len(onsets) == 3, onsets  # q1, q2, the interruption

    # The server heard the user start speaking three times, each when they did, and never the replies.
    started = session.of("input.speech_started")
    assert len(started) == 3 and all(abs(t - o) <= 300 for t, o in zip(started, onsets, strict=True)), (
        f"user speech began at {onsets} ms; the server heard speech at {started}"
    )
    replies = [line.split("assistant: ", 1)[1] for line in session.lines if line.startswith("assistant: ")]
    assert replies[0] == load_reply().text, f"the first reply must play whole, got {replies[0]!r}"

    # The interruption (over the second reply's echo) still cuts it, within 300 ms of its onset.
    barge_ins = session.of("barge_in")
    assert len(barge_ins) == 1 and 0 <= barge_ins[0] - onsets[2] <= 300, (barge_ins, onsets)
    heard = envelope_db(audio.output)
    first = int(onsets[2] // WINDOW_MS)
    assert heard[first - 50 : first].max() > -40.0, "the second reply was playing when the user cut in"
    cut_ms = np.flatnonzero(heard[first:] < -100.0)[0] * WINDOW_MS
    assert cut_ms <= 300, f"playback went silent {cut_ms} ms after the interruption began"

    erle = erle_db(
        audio.mic, np.pad(session.sent_pcm, (0, audio.mic.shape[0])), audio.echo, audio.speech, RATE
    )
    print(
        f"echo on: ERLE {erle:.1f} dB after the first second of echo; barge-in {barge_ins[0] - onsets[2]:.0f} ms "
        f"and silence {cut_ms} ms after the interruption began"
    )
    assert erle >= ERLE_FLOOR_DB
