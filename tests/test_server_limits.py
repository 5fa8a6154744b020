"""Bad input gets its error or refusal, and a streaming session on the same server keeps receiving
audio without gaps meanwhile: invalid JSON, unknown events, audio before session.start, odd audio,
unsupported rates, messages beyond what the websocket layer reads (1009), floods (1008), a client
that stops reading (1008), idle and overlong sessions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import numpy as np
from server_utils import NativeClient, http_get, start_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def expect_error(ws, code: str) -> dict:
    while True:
        message = await asyncio.wait_for(ws.recv(), 5)
        if isinstance(message, str) and json.loads(message)["type"] == "error":
            event = json.loads(message)
            assert event["code"] == code, event
            return event


async def misbehave(url: str) -> dict[str, object]:
    """Every kind of bad input, each on its own connection; returns what happened."""
    seen: dict[str, object] = {}
    async with connect(url) as ws:
        await ws.send("{not json")
        seen["invalid_json"] = await expect_error(ws, "invalid_json")
        await ws.send(b"\x00\x00" * 960)
        seen["not_started"] = await expect_error(ws, "not_started")
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 22050}))
        seen["unsupported_sample_rate"] = await expect_error(ws, "unsupported_sample_rate")
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000}))  # the session is kept
        client = NativeClient(ws)
        client._start_reader()
        await client.wait_for("session.ready")
        await ws.send(json.dumps({"type": "session.dance"}))
        await ws.send(b"\x00\x00\x00")
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000}))
        await asyncio.sleep(0.3)
        seen["codes"] = [e["code"] for _, e in client.of("error")]
        await ws.send(json.dumps({"type": "session.end"}))
        await client.wait_for("session.ended")
        await client.wait_closed()
        seen["end_close"] = ws.close_code

    # Not `async with`: the client library fails to close a socket the server cut off mid-message.
    ws = await connect(url, max_size=None)
    await ws.send(json.dumps({"type": "session.start", "sample_rate": 24000}))
    with contextlib.suppress(ConnectionClosed):
        await ws.send(b"\x00" * ((16 << 20) + 2))  # 1 MiB is refused with an error, 16 MiB closes
    await asyncio.wait_for(ws.wait_closed(), 5)
    seen["oversized"] = ws.close_code

    async with connect(url) as ws:
        client = NativeClient(ws)
        await client.start()
        try:
            for _ in range(3000):
                await ws.send('{"type":"playback.position","played_ms":0}')
        except Exception:
            pass
        await client.wait_closed()
        seen["flood"] = (ws.close_code, [e["code"] for _, e in client.of("error")])
    return seen


async def stall_reading(address) -> tuple[float, int | None]:
    """A client that starts a session, then never reads: how long until the server drops it, and the
    close code it finally reads once it looks again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # before connect: no autotuning
    sock.connect((address.host, address.port))
    sock.setblocking(False)
    async with connect(address.ws_url, sock=sock, max_queue=1) as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 24000}))
        t0 = time.monotonic()
        # Stop reading: with max_queue=1 the client library stops draining the socket too.
        while time.monotonic() - t0 < 20:
            metrics = http_get(address, "/metrics")[2].decode()
            if "assistant_slow_clients_total 1" in metrics:
                break
            await asyncio.sleep(0.2)
        dropped_after = time.monotonic() - t0
        try:
            async for _ in ws:  # look again: the buffered audio, then the close frame
                pass
        except Exception:
            pass
        return dropped_after, ws.close_code


async def test_bad_clients_get_errors_while_a_good_session_streams_without_gaps():
    with start_server("--backend", "scripted", "--max-send-lag", "1") as address:
        async with connect(address.ws_url) as good_ws:
            good = NativeClient(good_ws)
            await good.start()
            silence = np.zeros(24000 * 12, dtype="<i2")
            streaming = asyncio.create_task(good.stream(silence))
            await asyncio.sleep(0.5)
            t_bad = time.monotonic()
            seen, (dropped_after, stalled_code) = await asyncio.gather(
                misbehave(address.ws_url), stall_reading(address)
            )
            t_bad_end = time.monotonic()
            await streaming
            await asyncio.sleep(0.3)

        assert seen["invalid_json"]["message"]
        assert "session.start" in seen["not_started"]["message"]
        assert "22050" in seen["unsupported_sample_rate"]["message"]
        assert seen["codes"] == ["unknown_event", "bad_audio", "already_started"]
        assert seen["end_close"] == 1000
        assert seen["oversized"] == 1009
        flood_code, flood_errors = seen["flood"]
        assert flood_code == 1008 and flood_errors[:1] == ["rate_limited"]
        # The stalled reader is dropped within seconds (kernel buffers + 1 s of queued messages),
        # and reads the 1008 close frame behind its buffered audio when it looks again.
        assert dropped_after < 15
        assert stalled_code == 1008

        # The good client heard an audio frame every 80 ms all along, misbehaviour or not.
        times = np.array([t for t, _ in good.audio if t_bad - 0.5 <= t <= t_bad_end])
        assert len(times) > (t_bad_end - t_bad) / 0.08 * 0.9
        stats = good.of("stats")[-1][1]
        # What the server heard from it: whole frames in time, unless this very process (which runs
        # the floods too) could not send them in time: then padding late input and trimming it after
        # is the server doing its job. How far behind its own schedule the good client's sending fell:
        (t_first, n_first), *_ = good.sent
        own_lag_s = max(t - t_first - (n - n_first) / 24000 for t, n in good.sent)
        print(f"good client: sent up to {own_lag_s * 1000:.0f} ms behind its schedule; server: {stats}")
        if own_lag_s < 0.08:  # less than a frame
            assert stats["drops"] == 0 and stats["underruns"] <= 2
        metrics = http_get(address, "/metrics")[2].decode()
        assert 'assistant_errors_total{code="invalid_json"} 1' in metrics
    # ... and no gap over 3 frames: read from the server's own frame clock, since on a busy box the
    # test process, which also runs the misbehaving clients, reads the good one's frames late.
    assert address.clock_stats()["skipped_at_once"] <= 2


async def test_idle_and_overlong_sessions_end_cleanly():
    with start_server(
        "--backend", "silence", "--idle-timeout", "1", "--max-session-seconds", "2.5", "--start-timeout", "1"
    ) as address:
        async with connect(address.ws_url) as idle_ws, connect(address.ws_url) as busy_ws:
            idle, busy = NativeClient(idle_ws), NativeClient(busy_ws)
            await idle.start()
            t0 = time.monotonic()
            await busy.start()
            feeding = asyncio.create_task(busy.stream(np.zeros(24000 * 4, dtype="<i2")))
            t_idle, ended = await idle.wait_for("session.ended", timeout=5)
            assert ended["reason"].startswith("idle_timeout") and 0.9 <= t_idle - t0 <= 2.0
            await idle.wait_closed()
            assert idle_ws.close_code == 1000
            t_busy, ended = await busy.wait_for("session.ended", timeout=5)
            assert ended["reason"].startswith("max_duration") and 2.4 <= t_busy - t0 <= 3.5
            await busy.wait_closed()
            assert busy_ws.close_code == 1000
            feeding.cancel()
        # A connection that never starts a session is closed after the start timeout.
        async with connect(address.ws_url) as silent_ws:
            await asyncio.wait_for(silent_ws.wait_closed(), 5)
        assert json.loads(http_get(address, "/healthz")[2])["live_sessions"] == 0


async def test_a_burst_of_refused_messages_gets_every_error_and_keeps_the_session(scripted_server):
    """A client that reads normally is never taken for a slow reader because its own burst of bad
    messages was answered faster than the replies could be written."""
    async with connect(f"ws://{scripted_server[0]}:{scripted_server[1]}/ws") as ws:
        client = NativeClient(ws)
        await client.start()
        for _ in range(150):
            await ws.send("{not json")
        deadline = time.monotonic() + 10
        while len(client.of("error")) < 150 and not client.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert [e["code"] for _, e in client.of("error")] == ["invalid_json"] * 150
        assert not client.closed, "the session goes on"
        await ws.send('{"type": "session.end"}')
        await client.wait_closed()
        assert ws.close_code == 1000


def test_a_peer_that_ignores_pings_is_closed_with_the_documented_1011():
    """A half-dead peer (its TCP still open, nothing answering) does not hold a slot: it is closed
    with the code and reason the close-code table gives for it."""
    from pathlib import Path

    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    with start_server("--backend", "silence", "--ping-interval", "0.3") as address:
        # The websocket by hand: the protocol answers pings into data_to_send(), which is never sent.
        peer = ClientProtocol(parse_uri(address.ws_url))
        with socket.create_connection((address.host, address.port), timeout=5) as sock:
            peer.send_request(peer.connect())
            sock.sendall(b"".join(peer.data_to_send()))
            t0 = time.monotonic()
            while chunk := sock.recv(65536):
                peer.receive_data(chunk)
        closed_after_s = time.monotonic() - t0
    close = peer.close_rcvd
    assert (close.code, close.reason) == (1011, "keepalive ping timeout")
    assert 0.5 <= closed_after_s <= 3.0  # one interval to the ping, one more waiting for its pong
    table = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| 1011 |"))
    assert "keepalive ping timeout" in row
