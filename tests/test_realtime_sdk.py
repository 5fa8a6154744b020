"""The official `openai` SDK holds a conversation with `assistant serve --backend scripted` on /v1/realtime.

A microphone task streams real speech (tests/data/speech) paced in real time, silence in between, as a
client does; the test listens like a client: VAD events, one response per reply, audio deltas that
add up to exactly the scripted reply, its transcript, then a barge-in that cancels the second
reply and a truncate to what was "played".
"""

from __future__ import annotations

import asyncio
import base64
import collections
import time

import numpy as np
import pytest
import soundfile as sf
from audio_utils import speech_dir
from openai import AsyncOpenAI
from server_utils import start_server

from assistant.backends.scripted import load_reply

TOKEN = "sdk-test-token"
CHUNK_MS = 40
LEAD_CHUNKS = 3
FRAME_BYTES = 1920 * 2


def load_pcm16(name: str) -> bytes:
    pcm, rate = sf.read(speech_dir() / name, dtype="int16")
    assert rate == 24_000, f"{name} must be 24 kHz"
    return np.asarray(pcm).tobytes()


class Mic:
    """Streams PCM16 to the server in real time: queued speech first, silence otherwise."""

    def __init__(self, send):
        self.send = send
        self.queue: collections.deque[bytes] = collections.deque()

    def say(self, pcm16: bytes) -> None:
        chunk = CHUNK_MS * 48
        self.queue.extend(pcm16[i : i + chunk] for i in range(0, len(pcm16), chunk))

    @property
    def idle(self) -> bool:
        return not self.queue

    async def run(self) -> None:
        silence = b"\x00\x00" * CHUNK_MS * 24
        start, n = time.monotonic(), 0
        while True:
            chunk = self.queue.popleft() if self.queue else silence
            await self.send(base64.b64encode(chunk).decode())
            n += 1
            # A small lead, as a client's send buffer has, so a busy CI box does not starve the model.
            await asyncio.sleep(max(0.0, start + (n - LEAD_CHUNKS) * CHUNK_MS / 1000 - time.monotonic()))


class Inbox:
    """Every server event received, in order, with a way to wait for the next one of a type."""

    def __init__(self, conn):
        self.conn = conn
        self.events: list = []
        self._seen = 0

    async def next(self, *types: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while True:
            while self._seen < len(self.events):
                event = self.events[self._seen]
                self._seen += 1
                if event.type in types:
                    return event
            try:
                self.events.append(
                    await asyncio.wait_for(self.conn.recv(), max(0.0, deadline - time.monotonic()))
                )
            except TimeoutError:
                got = [
                    (e.type, getattr(e, "audio_start_ms", getattr(e, "audio_end_ms", "")))
                    for e in self.events[-40:]
                ]
                raise AssertionError(f"no {types} within {timeout} s; last events: {got}") from None

    async def first_after(self, anchor, type_: str, timeout: float = 15.0):
        """The first `type_` event received after `anchor`, waiting for it if needed.

        A full-duplex reply may start in the same frame as the end of the user's turn, so its
        response.created can come just before or after input_audio_buffer.committed.
        """
        start = self.events.index(anchor) + 1
        found = [e for e in self.events[start:] if e.type == type_]
        return found[0] if found else await self.next(type_, timeout=timeout)

    def of(self, type_: str, **match) -> list:
        return [
            e for e in self.events if e.type == type_ and all(getattr(e, k) == v for k, v in match.items())
        ]


@pytest.fixture(scope="module")
def server():
    with start_server("--auth-token", TOKEN, "--max-sessions", "2") as address:
        yield address


async def test_sdk_conversation_with_reply_interruption_and_truncate(server):
    reply = load_reply()
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=TOKEN)
    async with client.realtime.connect(model="duplex-test-model") as conn:
        inbox = Inbox(conn)
        created = await inbox.next("session.created")
        assert created.session.model == "duplex-test-model"
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "Be brief.",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "turn_detection": {
                            "type": "server_vad",
                            "threshold": 0.5,
                            "prefix_padding_ms": 300,
                            "silence_duration_ms": 500,
                            "create_response": True,
                            "interrupt_response": True,
                        },
                    },
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}},
                },
            }
        )
        updated = await inbox.next("session.updated")
        assert updated.session.audio.input.turn_detection.silence_duration_ms == 500
        assert updated.session.instructions == ""  # reported as not applied, not pretended
        assert any(w["param"] == "session.instructions" for w in updated.model_extra["warnings"])

        mic = Mic(lambda audio: conn.input_audio_buffer.append(audio=audio))
        mic_task = asyncio.create_task(mic.run())
        try:
            # -- turn 1: q1, then the whole scripted reply ------------------------------------------
            mic.say(load_pcm16("q1.wav"))
            started = await inbox.next("input_audio_buffer.speech_started")
            assert 0 <= started.audio_start_ms < 1000
            stopped = await inbox.next("input_audio_buffer.speech_stopped")
            assert stopped.item_id == started.item_id
            assert 3500 < stopped.audio_end_ms < 6000  # q1 is 4.2 s long
            committed = await inbox.next("input_audio_buffer.committed")
            assert committed.item_id == started.item_id
            response = (await inbox.first_after(started, "response.created")).response
            done = await inbox.next("response.done")
            assert done.response.id == response.id
            assert done.response.status == "completed"
            deltas = inbox.of("response.output_audio.delta", response_id=response.id)
            audio = b"".join(base64.b64decode(d.delta) for d in deltas)
            # Exactly the scripted reply: no silence before, after, or in place of it.
            assert len(audio) == reply.num_frames * FRAME_BYTES
            transcript = "".join(
                d.delta for d in inbox.of("response.output_audio_transcript.delta", response_id=response.id)
            )
            assert transcript == reply.text
            assert inbox.of("response.output_audio_transcript.done")[0].transcript == reply.text
            (item,) = done.response.output
            assert item.role == "assistant" and item.status == "completed"
            assert len(inbox.of("response.created")) == 1

            # -- turn 2: q2, then interrupt.wav over the reply --------------------------------------
            mic.say(load_pcm16("q2.wav"))
            await inbox.next("input_audio_buffer.speech_stopped")
            second_created = await inbox.first_after(done, "response.created")
            second = second_created.response
            first_delta = await inbox.first_after(second_created, "response.output_audio.delta")
            assert first_delta.response_id == second.id
            await asyncio.sleep(1.0)  # let the listener hear a second of it
            mic.say(load_pcm16("interrupt.wav"))
            barge = await inbox.next("input_audio_buffer.speech_started")
            cancelled = await inbox.next("response.done")
            assert cancelled.response.id == second.id
            assert cancelled.response.status == "cancelled"
            assert cancelled.response.status_details.reason == "turn_detected"
            assert inbox.events.index(barge) < inbox.events.index(cancelled)
            sent = b"".join(
                base64.b64decode(d.delta)
                for d in inbox.of("response.output_audio.delta", response_id=second.id)
            )
            assert 1000 <= len(sent) / 48 < reply.num_frames * 80  # cut short: not the whole reply
            item_id = cancelled.response.output[0].id
            await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=500)
            truncated = await inbox.next("conversation.item.truncated", "error")
            assert truncated.type == "conversation.item.truncated", truncated
            assert truncated.item_id == item_id and truncated.audio_end_ms == 500
            # Nothing more of the cancelled response arrives after its response.done.
            await inbox.next("input_audio_buffer.speech_stopped")
            after = inbox.events[inbox.events.index(cancelled) + 1 :]
            assert not [e for e in after if getattr(e, "response_id", None) == second.id]
            assert not inbox.of("error")
        finally:
            mic_task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await mic_task


async def test_sdk_without_the_token_is_refused(server):
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="wrong-token")
    with pytest.raises(Exception, match="401"):
        async with client.realtime.connect(model="duplex-test-model") as conn:
            await conn.recv()
