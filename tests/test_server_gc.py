"""The server's frame loop and Python's garbage collector: a finished session's objects are freed
at once by reference counting (no reference cycles left for a collector pass, which would pause
every live session), and the collector itself runs only between ticks."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json

import pytest
from websockets.asyncio.client import connect

from assistant.frame_gc import FrameGarbageCollector

pytestmark = pytest.mark.timeout(60)


def _alive(*names: str) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)
    for o in gc.get_objects():
        name = type(o).__name__
        if name in counts:
            counts[name] += 1
    return counts


async def test_a_finished_session_leaves_nothing_for_the_garbage_collector():
    from server.app import build_server_engine, serve_forever
    from server.config import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(
        parser.parse_args(["--backend", "scripted", "--captions", "off", "--port", "0"])
    )
    engine = build_server_engine(config)
    thresholds = gc.get_threshold()
    gc.collect()
    gc.set_threshold(10**9, 10**9, 10**9)  # no collection at all during the test: only refcounting frees
    stop = asyncio.Event()
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve_forever(config, engine, ready=ready.set_result, stop=stop))
    try:
        ctx = await asyncio.wait_for(ready, 30)
        url = f"ws://127.0.0.1:{ctx.port}/ws"
        for i in range(4):
            ws = await connect(url)
            await ws.send(json.dumps({"type": "session.start", "sample_rate": 24000}))
            while json.loads(await ws.recv())["type"] != "session.ready":
                pass
            await ws.send(b"\x00" * 3840)
            if i % 2:
                await ws.close()
            else:
                ws.transport.abort()  # a client that vanishes mid-session
        for _ in range(50):  # the server notices, ends the sessions and frees their slots
            await asyncio.sleep(0.1)
            if ctx.healthz()["live_sessions"] == 0:
                break
        await asyncio.sleep(0.3)
        assert ctx.healthz()["live_sessions"] == 0
        kinds = ("NativeConnection", "Conversation", "Outbox", "WebSocketTransport")
        assert _alive(*kinds) == dict.fromkeys(kinds, 0)
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def test_the_collector_runs_between_ticks_only_while_the_clock_runs():
    from assistant.backends import build_engine
    from assistant.scheduler import Scheduler

    sched = Scheduler(build_engine("silence", batch_size=1), collect_garbage=True)
    assert gc.isenabled()
    clock = asyncio.create_task(sched.run())
    await asyncio.sleep(0.05)
    assert not gc.isenabled()  # automatic collection is off while the frame clock runs

    class Node:
        pass

    import weakref

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle only a collector pass can free
    gone = weakref.ref(a)
    del a, b
    keep = [[] for _ in range(2000)]  # tracked objects past the interpreter's threshold
    for _ in range(20):
        await asyncio.sleep(0.08)
        if gone() is None:
            break
    assert gone() is None and sum(sched.gc.collections) >= 1 and keep
    sched.stop()
    await asyncio.wait_for(clock, 5)
    assert gc.isenabled()  # given back


def test_the_collector_follows_the_interpreters_generations():
    collector = FrameGarbageCollector()
    collector.thresholds = (10, 2, 2)
    gc.collect()
    collector.start()
    try:
        generations = []
        keep = []
        for _ in range(12):
            keep.append([[] for _ in range(20)])  # 20 new tracked objects per round, over t0
            generations.append(collector.collect_if_due())
        assert generations[:3] == [0, 0, 1] and 2 in generations
        assert collector.max_ms >= 0
    finally:
        collector.stop()
    assert gc.isenabled()
