"""/v1/live/sessions over a raw websocket: bad input gets a typed `error` and the session goes on;
the handshake, capacity, size and time limits are those of /ws and /v1/realtime; every server event
validates against the SDK's `ServerEvent` models (tests/live_utils.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re

import numpy as np
import pytest
from live_utils import LiveInbox, Mic, audio_of, load_pcm16
from server_utils import http_get, start_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from assistant.backends.scripted import load_reply
from audio import g711
from audio.resample import resample

TOKEN = "live-ws-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
START = json.dumps(
    {
        "type": "session.start",
        "event_id": "s1",
        "session": {"model": "gpt-live-1", "audio": {"format": {"type": "audio/pcm", "rate": 24000}}},
    }
)


@pytest.fixture(scope="module")
def server():
    with start_server(
        "--auth-token", TOKEN, "--max-sessions", "2", "--idle-timeout", "3", "--start-timeout", "3"
    ) as address:
        yield address


def url(server, query: str = "") -> str:
    return f"ws://{server.host}:{server.port}/v1/live/sessions{query}"


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode()


async def started(ws) -> LiveInbox:
    inbox = LiveInbox(ws.recv)
    await ws.send(START)
    event = await inbox.next("session.started", "error", timeout=5)
    assert event.type == "session.started", event
    return inbox


async def assert_usable(ws, inbox: LiveInbox) -> None:
    """A valid command still gets its answer (and the audio clock still takes whole samples)."""
    await ws.send(json.dumps({"type": "session.input_audio.append", "audio": b64(b"\x00\x00" * 960)}))
    await ws.send(json.dumps({"type": "session.input_audio.mute", "event_id": "ok"}))
    muted = await inbox.next("session.input_audio.muted", "error", timeout=5)
    assert muted.type == "session.input_audio.muted" and muted.client_event_id == "ok", muted


BAD_INPUT = {
    "malformed JSON": ('{"type": "session.input_audio.append", ', "invalid_json", None),
    "binary frame": (b"\x00\x00" * 100, "invalid_json", None),
    "wrong type": (
        json.dumps({"type": "session.input_audio.append", "audio": [1]}),
        "invalid_value",
        "audio",
    ),
    "unknown event": (json.dumps({"type": "session.explode", "event_id": "c1"}), "unknown_event", "type"),
    "text-model event": (
        json.dumps({"type": "decision.create", "event_id": "c1"}),
        "unsupported_event",
        "type",
    ),
    "odd-length audio": (
        json.dumps({"type": "session.input_audio.append", "audio": b64(b"\x00" * 961), "event_id": "c1"}),
        "invalid_audio",
        "audio",
    ),
    "huge field": (
        json.dumps({"type": "session.instructions.append", "content": "x" * 500_000}),
        "invalid_value",
        "content",
    ),
    "second start at another rate": (
        json.dumps(
            {"type": "session.start", "session": {"model": "m", "audio": {"format": {"rate": 16000}}}}
        ),
        "session_already_started",
        "type",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
async def test_bad_input_gets_a_typed_error_and_the_session_goes_on(server, case):
    message, code, param = BAD_INPUT[case]
    async with connect(url(server), additional_headers=HEADERS) as ws:
        inbox = await started(ws)
        await ws.send(message)
        error = await inbox.next("error", timeout=5)
        assert (error.error.code, error.error.param) == (code, param)
        assert error.error.type == "invalid_request_error" and error.error.message
        assert error.error.client_event_id == ("c1" if '"c1"' in str(message) else None)
        await assert_usable(ws, inbox)


async def test_a_wrong_sample_rate_is_refused_and_a_corrected_start_works(server):
    async with connect(url(server, f"?token={TOKEN}")) as ws:  # ?token= works as on the other endpoints
        inbox = LiveInbox(ws.recv)
        await ws.send(json.dumps({"type": "session.input_audio.append", "audio": ""}))
        assert (await inbox.next("error")).error.code == "session_not_started"
        bad = {
            "type": "session.start",
            "session": {"model": "m", "audio": {"format": {"type": "audio/pcm", "rate": 44100}}},
        }
        await ws.send(json.dumps(bad))
        error = await inbox.next("error")
        assert (error.error.code, error.error.param) == ("unsupported_audio_format", "session.audio.format")
        assert "16000 or 24000" in error.error.message
        await ws.send(START)
        assert (await inbox.next("session.started")).session.audio.format.rate == 24000


async def test_handshake_auth_and_origin_are_those_of_the_other_endpoints(server):
    for headers in ({}, {"Authorization": "Bearer nope"}):
        with pytest.raises(InvalidStatus) as info:
            async with connect(url(server), additional_headers=headers):
                pass
        assert info.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as info:
        async with connect(url(server), additional_headers={**HEADERS, "Origin": "https://evil.example"}):
            pass
    assert info.value.response.status_code == 403


async def test_messages_over_one_mib_are_refused_and_over_16_mib_close_the_socket_with_1009(server):
    async with connect(url(server), additional_headers=HEADERS, max_size=None) as ws:
        inbox = await started(ws)
        await ws.send(json.dumps({"type": "session.input_audio.append", "audio": "A" * (1 << 20)}))
        error = await inbox.next("error", timeout=5)
        assert error.error.code == "message_too_large"
        await assert_usable(ws, inbox)
    # Not `async with`: the client library fails to close a socket the server cut off mid-message.
    ws = await connect(url(server), additional_headers=HEADERS, max_size=None)
    await started(ws)
    with contextlib.suppress(ConnectionClosed):
        await ws.send(json.dumps({"type": "session.input_audio.append", "audio": "A" * (16 << 20)}))
    await asyncio.wait_for(ws.wait_closed(), 10)
    assert ws.close_code == 1009


async def test_a_full_server_closes_new_connections_with_1013_and_counts_them(server):
    async with (
        connect(url(server), additional_headers=HEADERS) as a,
        connect(url(server), additional_headers=HEADERS) as b,
    ):
        inbox = await started(a)
        await started(b)
        await a.send("not json")
        assert (await inbox.next("error")).error.code == "invalid_json"
        async with connect(url(server), additional_headers=HEADERS) as third:
            with pytest.raises(ConnectionClosed) as info:
                await third.recv()
            assert info.value.rcvd.code == 1013 and "server full" in info.value.rcvd.reason
    metrics = http_get(server, "/metrics")[2].decode()
    assert float(re.search(r"^assistant_refused_total (\d+)", metrics, re.M).group(1)) >= 1
    assert re.search(r'^assistant_errors_total\{code="invalid_json"\} \d+', metrics, re.M)


async def test_no_session_start_in_time_closes_and_no_audio_ends_the_session(server):
    async with connect(url(server), additional_headers=HEADERS) as ws:
        inbox = LiveInbox(ws.recv)
        error = await inbox.next("error", timeout=10)
        assert (
            error.error.code == "session_not_started" and "no session.start within 3 s" in error.error.message
        )
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == 1000
    async with connect(url(server), additional_headers=HEADERS) as ws:
        inbox = await started(ws)
        error = await inbox.next("error", timeout=10)
        assert error.error.code == "session_expired" and "idle" in error.error.message
        closed = await inbox.next("session.closed")
        assert closed.reason == "expired"
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == 1000


async def test_session_close_before_session_start_just_closes(server):
    async with connect(url(server), additional_headers=HEADERS) as ws:
        await ws.send(json.dumps({"type": "session.close"}))
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == 1000


async def test_a_g711_session_at_8_khz_is_heard_and_answered_in_mu_law(server):
    reply = load_reply()
    async with connect(url(server), additional_headers=HEADERS) as ws:
        inbox = LiveInbox(ws.recv)
        fmt = {"type": "audio/pcmu", "rate": 8000}
        await ws.send(
            json.dumps({"type": "session.start", "session": {"model": "phone", "audio": {"format": fmt}}})
        )
        assert (await inbox.next("session.started")).session.audio.format.type == "audio/pcmu"

        async def send(audio: str) -> None:
            await ws.send(json.dumps({"type": "session.input_audio.append", "audio": audio}))

        mic = Mic(send, rate_hz=8000, encode=lambda pcm16: g711.encode(pcm16, "ulaw"))
        mic_task = asyncio.create_task(mic.run())
        try:
            mic.say(load_pcm16("q1.wav", 8000))
            await inbox.next("session.output_audio.delta")
            await inbox.drain(1.5)
        finally:
            mic_task.cancel()
    # One byte per sample, and the scripted reply's own sound once decoded.
    heard = (
        np.frombuffer(g711.decode(audio_of(inbox.of("session.output_audio.delta")), "ulaw"), "<i2") / 32768
    )
    expected = resample(reply.frames.reshape(-1), 24_000, 8_000)[: len(heard)]
    assert len(heard) >= 8000  # a second and more of the reply
    lag = int(np.argmax(np.correlate(heard[:4000], expected[:4000], "full"))) - 3999
    a, b = (heard[lag:], expected[: len(heard) - lag]) if lag >= 0 else (heard[:lag], expected[-lag:])
    assert np.corrcoef(a, b)[0, 1] > 0.9
