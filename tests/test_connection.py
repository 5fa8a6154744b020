"""The connection base's bounded outgoing queue: order kept, a stalled reader flagged."""

from __future__ import annotations

import asyncio

import pytest

from server.connection import Outbox, SlowClient


async def test_outbox_sends_in_order_and_flags_a_stalled_reader():
    sent: list = []
    gate = asyncio.Event()

    async def send(item):
        await gate.wait()
        sent.append(item)

    now = [0.0]
    box = Outbox(send, max_items=4, max_lag_s=1.0, clock=lambda: now[0])
    writer = asyncio.create_task(box.run())
    for i in range(4):
        box.put(i)
    with pytest.raises(SlowClient, match="too slow"):
        box.put(4)  # full
    gate.set()
    await asyncio.sleep(0.01)
    assert sent == [0, 1, 2, 3]
    gate.clear()
    box.put(5)
    await asyncio.sleep(0.01)
    now[0] = 1.5  # the oldest message has waited too long
    with pytest.raises(SlowClient):
        box.put(6)
    gate.set()
    box.close()
    await asyncio.wait_for(writer, 1)
    assert sent == [0, 1, 2, 3, 5]


class FakeWebsocket:
    path, headers, remote_address = "/ws", {}, None
    close_code = close_reason = None

    def __init__(self):
        self.sent: list = []
        self.closed: tuple | None = None

    async def send(self, item):
        self.sent.append(item)

    async def close(self, code, reason):
        self.closed = (code, reason)

    def abort(self):
        pass


def fake_context():
    from types import SimpleNamespace

    from server.config import ServerConfig
    from server.metrics import Metrics

    return SimpleNamespace(config=ServerConfig(backend="silence"), metrics=Metrics())


async def test_a_failing_handler_costs_one_message_then_the_connection_closes_1011_if_it_persists():
    from server.connection import Connection

    class Flaky(Connection):
        fail = True

        def handle_message(self, message):
            if self.fail:
                raise RuntimeError("bug")

        def encode_error(self, code, message, *, server_side=False):
            return f"{code}:{server_side}"

    ws = FakeWebsocket()
    conn = Flaky(fake_context(), ws)
    conn.receive("a")
    Flaky.fail = False
    conn.receive("b")  # handled: the conversation goes on
    Flaky.fail = True
    for _ in range(Flaky.max_internal_errors - 1):
        conn.receive("c")
    await asyncio.sleep(0.01)
    assert conn.closing is None, "not yet: 9 failures in a row"
    assert ws.sent == ["internal_error:True"] * Flaky.max_internal_errors
    conn.receive("d")
    await asyncio.wait_for(conn.closing, 2)
    assert ws.closed == (1011, "internal server error")
