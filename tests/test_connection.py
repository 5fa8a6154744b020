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
