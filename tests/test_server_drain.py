"""SIGTERM drains with the port open, so a balancer sees it: /healthz and /readyz say draining
(503), new websockets on either endpoint are refused with 1013, live sessions go on for up to
--drain-seconds and are then told `server_shutdown`, and the process exits as soon as the last
one has gone (or at once on a second signal). Real servers on loopback, real clients."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import numpy as np
from server_utils import NativeClient, http_get, start_server
from websockets.asyncio.client import connect


async def sigterm_and_wait_for_draining(address) -> float:
    """Send SIGTERM; returns when /healthz says draining (the signal is handled asynchronously)."""
    sent = time.monotonic()
    address.proc.send_signal(signal.SIGTERM)
    for _ in range(100):
        # Off the event loop: a blocking GET would stall the clients' readers and fake frame gaps.
        status, _, body = await asyncio.to_thread(http_get, address, "/healthz")
        if json.loads(body)["status"] == "draining":
            assert status == 503
            return sent
        await asyncio.sleep(0.02)
    raise AssertionError(f"/healthz never said draining: {body}")


async def test_sigterm_refuses_new_sessions_while_live_ones_finish_then_ends_them():
    with start_server("--backend", "silence", "--drain-seconds", "1.5") as address:
        async with connect(address.ws_url) as ws:
            client = NativeClient(ws)
            await client.start()
            mic = asyncio.create_task(client.stream(np.zeros(24000 * 4, dtype="<i2")))  # an open microphone
            await asyncio.sleep(0.3)
            sent = await sigterm_and_wait_for_draining(address)
            status, _, body = await asyncio.to_thread(http_get, address, "/readyz")
            assert status == 503 and json.loads(body)["ready"] is False
            for path in ("/ws", "/v1/realtime"):
                async with connect(f"ws://{address.host}:{address.port}{path}") as refused:
                    await asyncio.wait_for(refused.wait_closed(), 5)
                assert (refused.close_code, refused.close_reason) == (1013, "server is shutting down")

            ended_at, ended = await client.wait_for("session.ended", 5)
            assert ended["reason"] == "server_shutdown"
            assert 1.4 <= ended_at - sent <= 3.0, "the live session was not given its --drain-seconds"
            # It was served all along: an audio frame every 80 ms until it was told.
            during = [t for t, _ in client.audio if sent <= t <= ended_at]
            assert len(during) >= 15
            await client.wait_closed()
            mic.cancel()
            assert ws.close_code == 1000
        assert address.proc.wait(5) == 0
        assert time.monotonic() - sent < 4.0
    assert address.clock_stats()["skipped_at_once"] <= 2  # the frame clock never lost 3 ticks in a row


async def test_the_process_exits_once_its_last_session_has_ended():
    with start_server("--backend", "silence", "--drain-seconds", "60") as address:
        async with connect(address.ws_url) as ws:
            client = NativeClient(ws)
            await client.start()
            sent = await sigterm_and_wait_for_draining(address)
            await asyncio.sleep(0.3)
            await ws.send(json.dumps({"type": "session.end"}))
            _, ended = await client.wait_for("session.ended", 5)
            assert ended["reason"] == "client_ended"
        assert await asyncio.to_thread(address.proc.wait, 5) == 0
        # Well within the 60 s bound, with room for a busy machine's slow exit.
        assert time.monotonic() - sent < 15.0, "the drain waited for its bound with no session left"


async def test_a_second_signal_ends_live_sessions_at_once():
    with start_server("--backend", "silence", "--drain-seconds", "60") as address:
        async with connect(address.ws_url) as ws:
            client = NativeClient(ws)
            await client.start()
            await sigterm_and_wait_for_draining(address)
            again = time.monotonic()
            address.proc.send_signal(signal.SIGTERM)
            ended_at, ended = await client.wait_for("session.ended", 5)
            assert ended["reason"] == "server_shutdown" and ended_at - again < 1.0
            await client.wait_closed()
            assert ws.close_code == 1000
        assert await asyncio.to_thread(address.proc.wait, 5) == 0
