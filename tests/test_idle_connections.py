"""Connections that never start a session hold nothing a real user needs: an engine slot is taken
at `session.start`, not at the websocket upgrade, so idle or slow upgrades never fill the server
nor make `/readyz` say full; a connection must start within `--start-timeout` s (counted from the
upgrade, whatever it sends meanwhile); and one client address may hold at most
`--max-connections-per-client` connections at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
from server_utils import NativeClient, http_get, start_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

LIVE_START = {
    "type": "session.start",
    "session": {"model": "m", "audio": {"format": {"type": "audio/pcm", "rate": 24000}}},
}


def readiness(server) -> tuple[int, dict]:
    status, _, _ = http_get(server, "/readyz")
    _, _, health = http_get(server, "/healthz")
    return status, json.loads(health)


async def closed_with(ws, timeout_s: float = 10.0) -> tuple[int | None, str, list[dict]]:
    """Read until the server closes: (close code, reason, the JSON events it sent before)."""
    events = []
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(timeout_s):
            async for message in ws:
                if isinstance(message, str):
                    events.append(json.loads(message))
    return ws.close_code, ws.close_reason or "", events


async def test_idle_upgrades_take_no_slot_and_a_real_user_gets_in():
    with start_server("--max-sessions", "2", "--start-timeout", "30") as server:
        idle = [await connect(server.ws_url) for _ in range(4)]
        idle += [await connect(f"ws://{server.host}:{server.port}/v1/live/sessions") for _ in range(3)]
        try:
            status, health = readiness(server)
            assert status == 200 and health["capacity_left"] == 2 and health["status"] == "ok", health
            async with connect(server.ws_url) as ws:
                client = NativeClient(ws)
                ready = await client.start()
                assert ready["type"] == "session.ready"
                status, health = readiness(server)
                assert status == 200 and health["capacity_left"] == 1
            assert all(ws.close_code is None for ws in idle), "idle connections are left alone meanwhile"
        finally:
            for ws in idle:
                await ws.close()


async def test_a_start_after_the_server_filled_is_refused_with_1013_and_holds_nothing():
    with start_server("--max-sessions", "1", "--start-timeout", "30") as server:
        async with connect(server.ws_url) as early, connect(server.ws_url) as late:
            first = NativeClient(late)
            await first.start()  # the later connection starts first and takes the one slot
            await early.send(json.dumps({"type": "session.start", "sample_rate": 24000}))
            code, reason, events = await closed_with(early)
            assert code == 1013 and "server full" in reason, (code, reason, events)
            assert not [e for e in events if e["type"] == "session.ready"]
            _, health = readiness(server)
            assert health["live_sessions"] == 1 and health["capacity_left"] == 0


@pytest.mark.parametrize("path", ["/ws", "/v1/live/sessions"])
async def test_a_connection_that_never_starts_is_closed_after_the_start_timeout(path):
    url_base = "ws://{}:{}" + path
    with start_server("--start-timeout", "1.5", "--idle-timeout", "60") as server:
        url = url_base.format(server.host, server.port)
        async with connect(url) as quiet, connect(url) as chatty:
            t0 = time.monotonic()

            async def chatter() -> None:  # a message every 0.5 s, none of them a start
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        await chatty.send(json.dumps({"type": "ping.me"}))
                        await asyncio.sleep(0.5)

            sender = asyncio.create_task(chatter())
            for ws in (quiet, chatty):
                code, reason, events = await closed_with(ws)
                elapsed = time.monotonic() - t0
                assert code == 1000 and reason == "start_timeout", (code, reason)
                errors = [e for e in events if e["type"] == "error"]
                message = errors[-1].get("message") or errors[-1]["error"]["message"]
                assert "no session.start within 1.5 s" in message
                assert 1.2 <= elapsed <= 4.0, f"closed after {elapsed:.1f} s"
            sender.cancel()


async def test_one_address_holds_at_most_its_share_of_connections():
    with start_server("--max-connections-per-client", "3", "--start-timeout", "30") as server:
        held = [await connect(server.ws_url) for _ in range(3)]
        extra = await connect(server.ws_url)
        code, reason, _ = await closed_with(extra)
        assert code == 1013 and "3 connections" in reason and "this address" in reason, (code, reason)
        status, _ = readiness(server)
        assert status == 200
        await held.pop().close()
        await asyncio.sleep(0.3)  # the server sees the close
        async with connect(server.ws_url) as again:
            client = NativeClient(again)
            assert (await client.start())["type"] == "session.ready"
        for ws in held:
            await ws.close()
        _, _, metrics = http_get(server, "/metrics")
        assert "assistant_client_cap_refused_total 1.0" in metrics.decode()


async def test_the_per_client_cap_can_be_turned_off_for_a_trusted_proxy():
    with start_server("--max-connections-per-client", "0", "--start-timeout", "30") as server:
        held = [await connect(server.ws_url) for _ in range(20)]
        try:
            async with connect(server.ws_url) as ws:
                client = NativeClient(ws)
                assert (await client.start())["type"] == "session.ready"
            assert all(ws.close_code is None for ws in held)
        finally:
            for ws in held:
                await ws.close()
