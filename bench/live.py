"""`assistant bench live`: what a user of the OpenAI Live API (/v1/live/sessions) feels, over loopback.

Starts `assistant serve --backend scripted --barge-in vad` as its own process and holds one Live
session with it from this process. Each round streams tests/data/speech q1.wav in real time, lets the
scripted reply play for a second, streams interrupt.wav over it, and waits out the reply to that.
Measured on the client's side:
- end of user speech -> first output delta: from sending the chunk that holds q1's last voiced
  sample to receiving the reply's first `session.output_audio.delta` (the server's end of turn, 500 ms
  of silence, is part of it),
- interrupt onset -> last assistant audio: from sending interrupt.wav's first voiced sample to
  receiving the interrupted reply's last delta,
- server CPU per session per 80 ms frame over the whole run (the server process's time / frames),
and, in this process without sockets, the Live protocol's own CPU per frame: server/protocols/live/state_machine.py
decoding two 40 ms appends and encoding one spoken frame with its text, JSON included. Compare with
`assistant bench server --protocol live` for many sessions. Prints figures only; never fails on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import time
from pathlib import Path

import numpy as np

from audio.frames import FRAME_SAMPLES
from bench.server import SPEECH_DIR, http_get, metric_value, process_cpu_s, serving

CHUNK_MS = 40
LEAD_CHUNKS = 3  # a client's send buffer, so a busy box does not starve the model
REPLY_WINDOW_S = 1.0  # the reply plays this long before the interruption


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3, help="question + interruption rounds (default 3)")
    parser.add_argument(
        "--rate",
        type=int,
        choices=(16000, 24000),
        default=24000,
        help="the session's PCM sample rate (default: 24000)",
    )
    parser.add_argument(
        "--audio-dir",
        type=Path,
        default=SPEECH_DIR,
        help="where q1.wav and interrupt.wav are (default: the checkout's tests/data/speech)",
    )


def load_clip(path: Path, rate_hz: int) -> np.ndarray:
    """A WAV as int16 samples at rate_hz."""
    import soundfile as sf

    from audio.resample import resample

    if not path.is_file():
        raise SystemExit(
            f"{path} not found; the benchmark speaks the test speech of a checkout (tests/data/speech; see --audio-dir)"
        )
    pcm, rate = sf.read(path, dtype="float32", always_2d=True)
    pcm = resample(pcm[:, 0], rate, rate_hz) if rate != rate_hz else pcm[:, 0]
    return np.clip(np.rint(pcm * 32767), -32768, 32767).astype("<i2")


def voiced_span(pcm16: np.ndarray, threshold: int = 300) -> tuple[int, int]:
    """First and last+1 sample louder than `threshold` (about -40 dBFS): the speech a listener hears."""
    idx = np.flatnonzero(np.abs(pcm16.astype(np.int32)) > threshold)
    return int(idx[0]), int(idx[-1]) + 1


class Mic:
    """Streams PCM16 in real time through `send(base64)`: queued clips first, silence otherwise, and
    remembers when each chunk left (a microphone's timing, with a small send-ahead buffer).
    `encode` turns PCM16 into the session's wire format (G.711, say) on the way out."""

    def __init__(self, send, rate_hz: int = 24_000, encode=None):
        self.send = send
        self.rate_hz = rate_hz
        self.encode = encode or (lambda pcm16: pcm16)
        self.chunk = rate_hz * CHUNK_MS // 1000
        self.queue: collections.deque[np.ndarray] = collections.deque()
        self.queued = 0  # stream position where the next clip starts
        self.sent: list[tuple[float, int]] = []  # (time, samples sent so far) after each chunk

    @property
    def idle(self) -> bool:
        return not self.queue

    def say(self, pcm16: np.ndarray) -> int:
        """Queue a clip; returns its first sample's position in the stream."""
        position = max(self.queued, self.sent[-1][1] if self.sent else 0)
        self.queued = position + len(pcm16)
        self.queue.extend(pcm16[i : i + self.chunk] for i in range(0, len(pcm16), self.chunk))
        return position

    def sent_time_of(self, sample: int) -> float | None:
        """When the chunk holding stream sample `sample` was sent (None: not yet)."""
        for t, end in self.sent:
            if end > sample:
                return t
        return None

    async def wait_sent(self, sample: int) -> float:
        while (t := self.sent_time_of(sample)) is None:
            await asyncio.sleep(0.005)
        return t

    async def run(self) -> None:
        silence = np.zeros(self.chunk, "<i2")
        start, n, total = time.monotonic(), 0, 0
        while True:
            chunk = self.queue.popleft() if self.queue else silence
            await self.send(base64.b64encode(self.encode(chunk.tobytes())).decode())
            total += len(chunk)
            self.sent.append((time.monotonic(), total))
            self.queued = max(self.queued, total)
            n += 1
            await asyncio.sleep(max(0.0, start + (n - LEAD_CHUNKS) * CHUNK_MS / 1000 - time.monotonic()))


async def _rounds(url: str, q1: np.ndarray, interrupt: np.ndarray, rounds: int, rate_hz: int) -> dict:
    from websockets.asyncio.client import connect

    replies: list[float] = []
    stops: list[float] = []
    async with connect(url, compression=None, max_queue=None) as ws:
        fmt = {"type": "audio/pcm", "rate": rate_hz}
        await ws.send(
            json.dumps({"type": "session.start", "session": {"model": "bench", "audio": {"format": fmt}}})
        )
        deltas: list[float] = []  # arrival times of output audio deltas

        async def read() -> None:
            async for message in ws:
                if '"session.output_audio.delta"' in message[:40]:
                    deltas.append(time.monotonic())

        async def quiet_for(seconds: float, timeout: float = 15.0) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and (deltas and time.monotonic() - deltas[-1] < seconds):
                await asyncio.sleep(0.05)

        reader = asyncio.create_task(read())
        mic = Mic(
            lambda audio: ws.send(json.dumps({"type": "session.input_audio.append", "audio": audio})), rate_hz
        )
        mic_task = asyncio.create_task(mic.run())
        try:
            for _ in range(rounds):
                speech_end = mic.say(q1) + voiced_span(q1)[1]
                ended_at = await mic.wait_sent(speech_end - 1)
                while not deltas or deltas[-1] < ended_at:
                    await asyncio.sleep(0.005)
                first = next(t for t in deltas if t >= ended_at)
                replies.append(first - ended_at)
                await asyncio.sleep(max(0.0, first + REPLY_WINDOW_S - time.monotonic()))
                onset_at = await mic.wait_sent(mic.say(interrupt) + voiced_span(interrupt)[0])
                # The reply to the interruption itself comes after it ends, seconds later.
                await asyncio.sleep(max(0.0, onset_at + 2.0 - time.monotonic()))
                stops.append(max(t for t in deltas if t <= onset_at + 2.0) - onset_at)
                while not mic.idle:
                    await asyncio.sleep(0.05)
                idle_at = time.monotonic()
                while time.monotonic() < idle_at + 5.0 and not (deltas and deltas[-1] > idle_at):
                    await asyncio.sleep(0.05)  # the answer to the interruption starts ...
                await quiet_for(1.0)  # ... and is heard out before the next round
        finally:
            mic_task.cancel()
            reader.cancel()
    return {"reply_s": replies, "stop_s": stops}


def bench_protocol(frames: int = 3000) -> float:
    """CPU ms the Live state machine (with JSON) spends per 80 ms frame: two 40 ms appends in, one spoken
    frame with a text piece out."""
    from assistant.conversation import AssistantSpeechStarted, AssistantText, AudioOut
    from server.protocols.live.state_machine import LiveConversation, OpenSession

    conv = LiveConversation(id_prefix="b", engine_name="bench")
    outs = conv.receive(json.dumps({"type": "session.start", "session": {"model": "bench"}}))
    assert any(isinstance(o, OpenSession) for o in outs)
    conv.started("sess_bench", time.time())
    rng = np.random.default_rng(0)
    append = json.dumps(
        {
            "type": "session.input_audio.append",
            "audio": base64.b64encode(
                rng.integers(-3000, 3000, FRAME_SAMPLES // 2, dtype="<i2").tobytes()
            ).decode(),
        }
    )
    pcm = rng.integers(-3000, 3000, FRAME_SAMPLES, dtype="<i2").tobytes()
    conv.conversation_event(AssistantSpeechStarted(at_ms=0.0))
    t = time.process_time()
    for i in range(frames):
        conv.receive(append)
        conv.receive(append)
        out = conv.conversation_event(AudioOut(pcm, i * 80.0, speaking=True))
        out += conv.conversation_event(AssistantText(" word", i * 80.0))
        for sent in out:
            json.dumps(sent.event)
    return (time.process_time() - t) * 1000 / frames


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1:
        print("--rounds must be >= 1", flush=True)
        return 2
    q1 = load_clip(args.audio_dir / "q1.wav", args.rate)
    interrupt = load_clip(args.audio_dir / "interrupt.wav", args.rate)
    serve_args = ["--backend", "scripted", "--barge-in", "vad", "--captions", "off", "--max-sessions", "1"]
    with serving(serve_args) as (proc, port):
        metrics0, cpu0 = http_get("127.0.0.1", port, "/metrics"), process_cpu_s(proc.pid)
        result = asyncio.run(
            _rounds(f"ws://127.0.0.1:{port}/v1/live/sessions", q1, interrupt, args.rounds, args.rate)
        )
        metrics1, cpu1 = http_get("127.0.0.1", port, "/metrics"), process_cpu_s(proc.pid)
    frames = metric_value(metrics1, "assistant_session_frames_total") - metric_value(
        metrics0, "assistant_session_frames_total"
    )
    server_ms = (cpu1 - cpu0) * 1000 / max(frames, 1)
    protocol_ms = bench_protocol()

    def figures(values: list[float]) -> str:
        ms = sorted(1000 * v for v in values)
        return f"p50 {np.median(ms):.0f} ms, min {ms[0]:.0f} ms, max {ms[-1]:.0f} ms"

    print(
        f"live bench: scripted backend, --barge-in vad, audio/pcm at {args.rate} Hz, {args.rounds} rounds of "
        "q1.wav then interrupt.wav over the reply, one session over loopback"
    )
    print(
        f"  end of user speech -> first output delta: {figures(result['reply_s'])} (500 ms of it: end of turn)"
    )
    print(f"  interrupt onset -> last assistant audio:  {figures(result['stop_s'])}")
    print(f"  server CPU per session per 80 ms frame:   {server_ms:.3f} ms (engine, VAD, protocol, sockets)")
    print(
        f"  Live protocol alone per 80 ms frame:      {protocol_ms:.3f} ms (2 appends in, a spoken frame out)"
    )
    return 0
