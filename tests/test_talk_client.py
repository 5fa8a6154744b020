"""The native-protocol client and the talk session loop against a small in-test websocket server.

The fake server follows docs/protocol.md closely enough to check what the client puts on the wire
(session.start first, auth header, PCM16 audio, playback.position cadence, session.end) and what
the listener hears (prebuffered playout, playback.clear applied at once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.server import serve
from websockets.exceptions import InvalidStatus

from client import talk
from client.native import (
    ClientError,
    NativeClient,
    ServerEvent,
    decode_message,
    describe_connect_error,
    start_message,
)

RATE = 24000
FRAME = 1920  # 80 ms


# -- pure wire format -----------------------------------------------------------------------
def test_start_message_declares_rate_and_options():
    msg = json.loads(start_message(48000, barge_in="vad", captions=None))
    assert msg == {"type": "session.start", "sample_rate": 48000, "barge_in": "vad"}
    with pytest.raises(ValueError, match="22050"):
        start_message(22050)
    with pytest.raises(ValueError, match="barge_in"):
        start_message(24000, barge_in="always")
    with pytest.raises(ValueError, match="unknown session option"):
        start_message(24000, volume=3)


def test_decode_message_audio_and_events():
    audio = decode_message(np.array([1, -2, 32767], dtype="<i2").tobytes())
    assert audio.dtype == np.int16 and audio.tolist() == [1, -2, 32767]
    event = decode_message('{"type": "barge_in", "at_ms": 10, "cut_text": "x"}')
    assert event == ServerEvent("barge_in", {"at_ms": 10, "cut_text": "x"})
    with pytest.raises(ValueError, match="even"):
        decode_message(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="type"):
        decode_message('{"at_ms": 1}')


# -- a fake server --------------------------------------------------------------------------
class FakeServer:
    """Answers session.start, streams `frames` 80 ms frames of `level` in real time, then clears."""

    def __init__(self, token: str | None = None, frames: int = 10, level: float = 0.5, full: bool = False):
        self.token = token
        self.frames = frames
        self.level = level
        self.full = full
        self.received: list[tuple[float, str | bytes]] = []
        self.headers = None

    async def handler(self, ws):
        self.headers = ws.request.headers
        if self.full:
            await ws.close(1013, "all 4 slots are busy")
            return
        start = json.loads(await ws.recv())
        self.received.append((time.monotonic(), json.dumps(start)))
        await ws.send(
            json.dumps(
                {
                    "type": "session.ready",
                    "session_id": "s1",
                    "sample_rate": start["sample_rate"],
                    "frame_ms": 80,
                    "options": {},
                }
            )
        )
        sender = asyncio.create_task(self.stream(ws))
        try:
            async for message in ws:
                self.received.append((time.monotonic(), message))
                if isinstance(message, str) and json.loads(message)["type"] == "session.end":
                    sender.cancel()
                    await ws.send(json.dumps({"type": "session.ended", "reason": "client_ended"}))
                    await ws.close()
        finally:
            sender.cancel()

    async def stream(self, ws):
        frame = np.full(FRAME, int(self.level * 32767), dtype="<i2").tobytes()
        silence = bytes(2 * FRAME)
        t0 = time.monotonic()
        for k in range(10_000):
            await asyncio.sleep(max(0.0, t0 + k * 0.08 - time.monotonic()))
            if k == self.frames:
                await ws.send(json.dumps({"type": "playback.clear", "reason": "barge_in"}))
                await ws.send(json.dumps({"type": "barge_in", "at_ms": k * 80, "cut_text": "never heard"}))
            await ws.send(frame if k < self.frames else silence)

    def check_token(self, connection, request):
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return connection.respond(401, "bad token\n")
        return None

    def events(self, type_: str) -> list[tuple[float, dict]]:
        out = []
        for t, m in self.received:
            if isinstance(m, str) and json.loads(m)["type"] == type_:
                out.append((t, json.loads(m)))
        return out

    def audio_bytes(self) -> int:
        return sum(len(m) for _, m in self.received if isinstance(m, bytes))


async def running(fake: FakeServer):
    server = await serve(
        fake.handler, "127.0.0.1", 0, process_request=fake.check_token if fake.token else None
    )
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://127.0.0.1:{port}/ws"


async def test_connect_sends_token_and_reports_refusals():
    fake = FakeServer(token="s3cret")
    server, url = await running(fake)
    async with server:
        client = await NativeClient.connect(url, sample_rate=24000, token="s3cret", barge_in="model")
        assert client.session_id == "s1" and client.sample_rate == 24000
        await client.update(barge_in="vad", min_interrupt_ms=200)
        await client.end()
        assert fake.events("session.update")[0][1] == {
            "type": "session.update",
            "barge_in": "vad",
            "min_interrupt_ms": 200,
        }
        assert fake.headers["Authorization"] == "Bearer s3cret"
        with pytest.raises(ClientError, match="401.*--token"):
            await NativeClient.connect(url, sample_rate=24000, token="wrong")
    full = FakeServer(full=True)
    server, url = await running(full)
    async with server:
        with pytest.raises(ClientError, match="full.*all 4 slots are busy.*try again later"):
            await NativeClient.connect(url, sample_rate=24000)


def test_describe_connect_error_names_the_fix():
    assert "assistant serve" in describe_connect_error("ws://h/ws", ConnectionRefusedError(111, "refused"))

    class Response:
        status_code = 404

    assert "/ws" in describe_connect_error("ws://h/x", InvalidStatus(Response()))


# -- the talk loop against the fake server -------------------------------------------------
def talk_args(tmp_path, url: str, seconds: float, **over) -> argparse.Namespace:
    wav = tmp_path / "in.wav"
    sf.write(wav, np.zeros(int(seconds * RATE), dtype=np.float32), RATE)
    args = dict(
        server=url,
        token=None,
        barge_in="vad",
        input_device=None,
        output_device=None,
        list_devices=False,
        sample_rate=None,
        block_ms=20.0,
        buffer_ms=120.0,
        input_file=wav,
        output_file=tmp_path / "out.wav",
        tail_seconds=0.0,
        captions=True,
        local=False,
        backend="moshi",
        model=None,
        device=None,
        dtype=None,
        compile=None,
        quantize=None,
        context_policy=None,
        plain=True,
    )
    args.update(over)
    return argparse.Namespace(**args)


class Captured:
    """A display that keeps its lines (stands in for the terminal)."""

    def __init__(self, title: str):
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)

    def update(self, view) -> None:
        self.lines.extend(view.take_lines())

    close = update


async def test_talk_streams_mic_reports_position_and_applies_clear(tmp_path):
    fake = FakeServer(frames=10)  # 800 ms of audio at 0.5, then clear + silence
    server, url = await running(fake)
    displays: list[Captured] = []

    def display(title):
        displays.append(Captured(title))
        return displays[0]

    args = talk_args(tmp_path, url, seconds=1.6)
    async with server:
        assert await talk.talk(args, display_factory=display) == 0

    start = json.loads(fake.received[0][1])
    assert start == {"type": "session.start", "sample_rate": RATE, "barge_in": "vad", "captions": True}
    assert fake.audio_bytes() == 2 * int(1.6 * RATE), "every mic sample reached the server as PCM16"
    assert fake.events("session.end"), "the session is ended cleanly"

    positions = fake.events("playback.position")
    times = np.array([t for t, _ in positions])
    played = np.array([m["played_ms"] for _, m in positions])
    assert len(positions) >= 6, "a position about every 150 ms over 1.6 s"
    assert np.all(np.diff(played) > 0) and np.median(np.diff(times)) == pytest.approx(0.15, abs=0.05)
    assert played[-1] > 800, "the position includes the cleared audio: it is on the server's output timeline"

    heard, _ = sf.read(args.output_file, dtype="float32")
    block = RATE * 20 // 1000
    onset = np.flatnonzero(np.abs(heard) > 0.25)[0]
    # Frames flow from session.ready on; playback starts once 120 ms (two frames) are queued.
    assert block <= onset <= 0.3 * RATE + block
    loud_end = np.flatnonzero(np.abs(heard) > 0.25)[-1]
    # 800 ms were sent; the clear came at 800 ms wall clock, so less than that was heard and the rest never.
    assert (loud_end - onset) / RATE < 0.8
    assert not heard[loud_end + block :].any(), "nothing plays after the clear"
    lines = displays[0].lines
    assert "assistant: [cut: never heard]" in lines and "-- interrupted" in lines
    assert "clears 1" in lines[-1]


async def test_talk_ends_when_the_server_goes_away(tmp_path):
    async def rude(ws):
        await ws.recv()
        await ws.send(json.dumps({"type": "session.ready", "session_id": "s", "sample_rate": RATE}))
        await asyncio.sleep(0.3)
        await ws.close(1011, "internal error")

    server = await serve(rude, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
    args = talk_args(tmp_path, url, seconds=5.0)
    start = time.monotonic()
    async with server:
        with pytest.raises(talk.TalkError, match="1011"):
            await talk.talk(args, display_factory=Captured)
    assert time.monotonic() - start < 3.0, (
        "the client notices the server left instead of playing the file out"
    )
    assert args.output_file.is_file(), "what was heard so far is still written"


async def test_talk_refuses_a_server_that_does_not_speak_the_protocol(tmp_path):
    async def odd(ws):
        await ws.recv()
        await ws.send(json.dumps({"type": "session.ready", "session_id": "s", "sample_rate": RATE}))
        await ws.send(b"\x01\x02\x03")  # half a sample: not PCM16
        await asyncio.sleep(1)

    server = await serve(odd, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
    async with server:
        with pytest.raises(talk.TalkError, match="does not speak the native protocol.*even length"):
            await talk.talk(talk_args(tmp_path, url, seconds=3.0), display_factory=Captured)
