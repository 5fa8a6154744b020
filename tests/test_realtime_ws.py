"""/v1/realtime over a raw websocket: every error path answers with the documented `error` event
and leaves the connection usable; manual turns; auth, capacity and size limits as on /ws."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from audio_utils import speech_dir
from server_utils import start_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

TOKEN = "ws-test-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server():
    with start_server("--auth-token", TOKEN) as address:
        yield address


def url(server, model: str = "ws-test-model") -> str:
    return f"ws://{server.host}:{server.port}/v1/realtime?model={model}"


async def recv(ws, timeout: float = 5.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def next_of(ws, *types: str, timeout: float = 10.0, seen: list | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        event = await recv(ws, max(0.01, deadline - time.monotonic()))
        if seen is not None:
            seen.append(event)
        if event["type"] in types:
            return event


async def assert_usable(ws) -> None:
    """A valid event still gets its answer, and nothing else (no second error) came first."""
    await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
    event = await recv(ws)
    assert event["type"] == "session.updated", event


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode()


async def test_session_exists_from_connect_so_audio_sent_before_reading_anything_is_accepted(server):
    async with connect(url(server), additional_headers=HEADERS) as ws:
        # Sent before session.created was even read: accepted, not refused.
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(b"\x00\x00" * 2400)}))
        first = await recv(ws)
        assert first["type"] == "session.created"
        assert first["session"]["model"] == "ws-test-model"
        assert first["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        await assert_usable(ws)


ERROR_CASES = {
    "bad_json": ('{"type": "input_audio_buffer.append", ', "invalid_json", None),
    "unknown_type": (json.dumps({"type": "response.explode", "event_id": "c1"}), "unknown_event", "type"),
    "missing_type": (json.dumps({"event_id": "c1"}), "missing_field", "type"),
    "bad_base64": (
        json.dumps({"type": "input_audio_buffer.append", "audio": "not*base64!", "event_id": "c1"}),
        "invalid_audio",
        "audio",
    ),
    "odd_bytes": (
        json.dumps({"type": "input_audio_buffer.append", "audio": b64(b"\x00" * 3), "event_id": "c1"}),
        "invalid_audio",
        "audio",
    ),
    "wrong_format": (
        json.dumps(
            {
                "type": "session.update",
                "event_id": "c1",
                "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}},
            }
        ),
        "unsupported_audio_format",
        "session.audio.input.format",
    ),
    "wrong_rate": (
        json.dumps(
            {
                "type": "session.update",
                "event_id": "c1",
                "session": {
                    "type": "realtime",
                    "audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}},
                },
            }
        ),
        "unsupported_audio_format",
        "session.audio.output.format",
    ),
    "transcription_session": (
        json.dumps({"type": "session.update", "event_id": "c1", "session": {"type": "transcription"}}),
        "unsupported_feature",
        "session.type",
    ),
    "text_item": (
        json.dumps(
            {
                "type": "conversation.item.create",
                "event_id": "c1",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hello"}],
                },
            }
        ),
        "unsupported_feature",
        "item.content[0].type",
    ),
    "truncate_unknown_item": (
        json.dumps(
            {
                "type": "conversation.item.truncate",
                "event_id": "c1",
                "item_id": "item_missing",
                "content_index": 0,
                "audio_end_ms": 10,
            }
        ),
        "item_not_found",
        "item_id",
    ),
    "commit_empty": (
        json.dumps({"type": "input_audio_buffer.commit", "event_id": "c1"}),
        "input_audio_buffer_commit_empty",
        None,
    ),
    "cancel_without_response": (
        json.dumps({"type": "response.cancel", "event_id": "c1"}),
        "response_cancel_not_active",
        None,
    ),
    "unsupported_event": (
        json.dumps({"type": "output_audio_buffer.clear", "event_id": "c1"}),
        "unsupported_event",
        "type",
    ),
    "retrieve_unknown_item": (
        json.dumps({"type": "conversation.item.retrieve", "item_id": "x", "event_id": "c1"}),
        "item_retrieve_invalid_item_id",
        "item_id",
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
async def test_each_error_path_gets_the_documented_error_event_and_the_connection_stays_usable(server, case):
    message, code, param = ERROR_CASES[case]
    async with connect(url(server), additional_headers=HEADERS) as ws:
        assert (await recv(ws))["type"] == "session.created"
        await ws.send(message)
        event = await recv(ws)
        assert event["type"] == "error", event
        error = event["error"]
        assert (error["code"], error["param"]) == (code, param)
        assert error["type"] == "invalid_request_error"
        assert error["message"]
        assert error["event_id"] == ("c1" if '"c1"' in message else None)
        assert event["event_id"].startswith("event_")
        await assert_usable(ws)


async def test_binary_frames_get_an_error_and_the_connection_stays_usable(server):
    async with connect(url(server), additional_headers=HEADERS) as ws:
        await recv(ws)
        await ws.send(b"\x00\x00" * 100)
        event = await recv(ws)
        assert event["error"]["code"] == "invalid_json"
        await assert_usable(ws)


async def stream(ws, pcm: bytes, chunk_ms: int = 40, lead_chunks: int = 3) -> None:
    """Send PCM16 in real time, a few chunks ahead (a client's send buffer) so a busy box does not starve it."""
    chunk = chunk_ms * 48
    start = time.monotonic()
    for n, i in enumerate(range(0, len(pcm), chunk), start=1):
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(pcm[i : i + chunk])}))
        await asyncio.sleep(max(0.0, start + (n - lead_chunks) * chunk_ms / 1000 - time.monotonic()))


async def test_manual_turns_response_create_cancel_and_truncate_beyond_the_audio_sent(server):
    pcm, rate = sf.read(speech_dir() / "q1.wav", dtype="int16")
    assert rate == 24_000
    async with connect(url(server), additional_headers=HEADERS) as ws:
        await recv(ws)
        await ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
                }
            )
        )
        updated = await next_of(ws, "session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        seen: list[dict] = []
        await stream(ws, np.asarray(pcm).tobytes())
        # Push to talk: the user let go of the button.
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await ws.send(json.dumps({"type": "response.create"}))
        silence = asyncio.create_task(stream(ws, b"\x00\x00" * 24_000 * 6))
        try:
            committed = await next_of(ws, "input_audio_buffer.committed", seen=seen)
            response = (await next_of(ws, "response.created", seen=seen))["response"]
            # Nothing was said before response.create: no VAD events, no response of the model's own.
            assert [e["type"] for e in seen if e["type"].startswith("input_audio_buffer.speech")] == []
            assert committed["item_id"]
            for _ in range(8):  # 640 ms of the reply
                delta = await next_of(ws, "response.output_audio.delta", seen=seen)
                assert delta["response_id"] == response["id"]
            item_id = delta["item_id"]
            await ws.send(json.dumps({"type": "response.cancel"}))
            done = await next_of(ws, "response.done", seen=seen)
            assert done["response"]["status"] == "cancelled"
            assert done["response"]["status_details"]["reason"] == "client_cancelled"
            sent_ms = (
                sum(
                    len(base64.b64decode(e["delta"]))
                    for e in seen
                    if e["type"] == "response.output_audio.delta"
                )
                // 48
            )
            # A client that estimates what it played by its own clock can name more than was sent
            # (the server sends in real time): the listener heard all of it, and the item stays whole.
            await ws.send(
                json.dumps(
                    {
                        "type": "conversation.item.truncate",
                        "item_id": item_id,
                        "content_index": 0,
                        "audio_end_ms": sent_ms + 5000,
                        "event_id": "tr1",
                    }
                )
            )
            whole = await next_of(ws, "conversation.item.truncated", "error", seen=seen)
            assert (whole["type"], whole.get("audio_end_ms")) == ("conversation.item.truncated", sent_ms), (
                whole
            )
            await ws.send(
                json.dumps(
                    {
                        "type": "conversation.item.truncate",
                        "item_id": item_id,
                        "content_index": 0,
                        "audio_end_ms": 300,
                    }
                )
            )
            truncated = await next_of(ws, "conversation.item.truncated", "error", seen=seen)
            assert truncated["type"] == "conversation.item.truncated", truncated
            await ws.send(json.dumps({"type": "response.cancel", "event_id": "rc2"}))
            again = await next_of(ws, "error", seen=seen)
            assert again["error"]["code"] == "response_cancel_not_active"
            # The engine is held silent after the cancel: no audio for the next second.
            tail: list[dict] = []
            with pytest.raises(TimeoutError):
                await next_of(ws, "response.output_audio.delta", "response.created", timeout=1.0, seen=tail)
        finally:
            silence.cancel()


async def test_wrong_or_missing_token_is_refused_at_the_handshake(server):
    with pytest.raises(InvalidStatus) as info:
        async with connect(url(server)):
            pass
    assert info.value.response.status_code == 401
    with pytest.raises(InvalidStatus):
        async with connect(url(server), additional_headers={"Authorization": "Bearer nope"}):
            pass


async def test_events_over_one_mib_are_refused_and_over_16_mib_close_the_socket_with_1009(server):
    async with connect(url(server), additional_headers=HEADERS, max_size=None) as ws:
        await recv(ws)
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (1 << 20)}))
        error = await next_of(ws, "error")
        assert error["error"]["code"] == "message_too_large"
        await assert_usable(ws)
    # Not `async with`: the client library fails to close a socket the server cut off mid-message.
    ws = await connect(url(server), additional_headers=HEADERS, max_size=None)
    await recv(ws)
    with contextlib.suppress(ConnectionClosed):
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (16 << 20)}))
    await asyncio.wait_for(ws.wait_closed(), 10)
    assert ws.close_code == 1009


async def test_item_audio_piling_up_beyond_60_s_is_refused_and_the_session_goes_on(server):
    async with connect(url(server), additional_headers=HEADERS, max_size=None) as ws:
        await recv(ws)
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": b64(b"\x00\x00" * 240_000)}],
        }
        for i in range(8):  # 8 x 10 s, far faster than it can be heard
            await ws.send(json.dumps({"type": "conversation.item.create", "event_id": f"i{i}", "item": item}))
        seen: list = []
        error = await next_of(ws, "error", seen=seen)
        assert error["error"]["code"] == "input_audio_backlog_full" and error["error"]["event_id"] == "i6"
        assert [e["type"] for e in seen].count("conversation.item.done") == 6
        assert (await next_of(ws, "error"))["error"]["event_id"] == "i7"  # still full
        await assert_usable(ws)


async def test_an_event_flood_is_refused_once_a_second_then_closed_with_1008(server):
    """The same limits as /ws (one connection base): errors at most once a second, then 1008."""
    async with connect(url(server), additional_headers=HEADERS) as ws:
        await recv(ws)
        errors: list[str] = []

        async def read() -> None:
            try:
                while True:
                    event = json.loads(await ws.recv())
                    if event["type"] == "error":
                        errors.append(event["error"]["code"])
            except ConnectionClosed:
                pass

        reader = asyncio.create_task(read())
        message = json.dumps({"type": "input_audio_buffer.append", "audio": b64(b"\x00\x00" * 480)})
        started = time.monotonic()
        # Until the server closes: a server that reads fast may take every message of a burst
        # into its buffers before its rate limits catch up, so no fixed count is sure to be cut off.
        with pytest.raises(ConnectionClosed):
            while time.monotonic() - started < 10:
                await ws.send(message)
                # A client's reader runs between sends, as any client's would: a send that never
                # yields starves it, and the server, its close frame unanswered, cuts the TCP (1006).
                await asyncio.sleep(0)
        await asyncio.wait_for(reader, 10)
        assert ws.close_code == 1008 and "flood" in (ws.close_reason or "")
        assert time.monotonic() - started < 10
        assert errors and set(errors) == {"rate_limited"}
        assert len(errors) <= 1 + (time.monotonic() - started), "rate errors come at most once a second"


async def test_a_full_server_closes_new_realtime_connections_with_1013_and_idle_sessions_end():
    with start_server("--max-sessions", "1", "--idle-timeout", "2") as full:
        async with connect(url(full)) as first:
            assert (await recv(first))["type"] == "session.created"
            async with connect(url(full)) as second:
                with pytest.raises(ConnectionClosed) as info:
                    await recv(second)
                assert info.value.rcvd.code == 1013
            # No audio for 2 s: the session ends as on /ws, told with an error event, then a normal close.
            ended = await next_of(first, "error", timeout=5.0)
            assert ended["error"]["code"] == "session_ended"
            assert "idle" in ended["error"]["message"]
            with pytest.raises(ConnectionClosed) as info:
                await recv(first)
            assert info.value.rcvd.code == 1000


async def test_closed_realtime_sessions_are_accounted_and_freed(server):
    async with connect(url(server), additional_headers=HEADERS) as ws:
        await recv(ws)
        health = json.loads(urllib.request.urlopen(f"{server.http_url}/healthz", timeout=5).read())
        assert health["live_sessions"] >= 1
    deadline = time.monotonic() + 3.0
    while True:
        health = json.loads(urllib.request.urlopen(f"{server.http_url}/healthz", timeout=5).read())
        if health["live_sessions"] == 0 and health["capacity_left"] == health["max_sessions"]:
            break
        assert time.monotonic() < deadline, f"sessions not freed after close: {health}"
        await asyncio.sleep(0.05)


async def test_a_user_audio_item_is_heard_in_real_time_and_answered(server):
    pcm, _ = sf.read(speech_dir() / "q2.wav", dtype="int16")
    async with connect(url(server), additional_headers=HEADERS) as ws:
        await recv(ws)
        seen: list[dict] = []
        await ws.send(
            json.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_audio", "audio": b64(np.asarray(pcm).tobytes())}],
                    },
                }
            )
        )
        added = await next_of(ws, "conversation.item.added", seen=seen)
        assert added["item"]["role"] == "user"
        # The whole 3.4 s clip reaches the model (fed at real-time speed, not dropped as backlog), so it
        # answers once the clip is over; the item's own VAD turn does not become a second item.
        silence = asyncio.create_task(stream(ws, b"\x00\x00" * 24_000 * 8))
        try:
            response = await next_of(ws, "response.created", timeout=10.0, seen=seen)
            delta = await next_of(ws, "response.output_audio.delta", seen=seen)
            assert delta["response_id"] == response["response"]["id"]
        finally:
            silence.cancel()
        user_items = [
            e for e in seen if e["type"] == "conversation.item.added" and e["item"]["role"] == "user"
        ]
        assert len(user_items) == 1
        assert not [e for e in seen if e["type"] in ("error", "input_audio_buffer.speech_started")]


async def test_user_captions_arrive_as_input_audio_transcription_completed_on_the_committed_item():
    pcm, _ = sf.read(speech_dir() / "q1.wav", dtype="int16")
    with start_server("--captions", "auto") as captioned:
        async with connect(url(captioned)) as ws:
            await recv(ws)
            await ws.send(
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {
                            "type": "realtime",
                            "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                        },
                    }
                )
            )
            updated = await next_of(ws, "session.updated")
            assert updated["session"]["audio"]["input"]["transcription"]["model"] == "tiny.en"
            seen: list[dict] = []
            talk = asyncio.create_task(stream(ws, np.asarray(pcm).tobytes() + b"\x00\x00" * 24_000 * 12))
            try:
                committed = await next_of(ws, "input_audio_buffer.committed", timeout=15.0, seen=seen)
                caption = await next_of(
                    ws, "conversation.item.input_audio_transcription.completed", timeout=20.0, seen=seen
                )
            finally:
                talk.cancel()
            assert caption["item_id"] == committed["item_id"]
            assert "lighthouse" in caption["transcript"].lower()
