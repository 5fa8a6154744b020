"""Codec lanes: a connection's jobs run on worker threads one after another, and their results come
back on the event loop in the order they were submitted, messages that needed no coding included."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from server.codec_lanes import CodecPool


@pytest.fixture
def pool():
    pool = CodecPool(2)
    yield pool
    pool.shutdown()


async def test_results_come_back_in_order_on_the_event_loop(pool):
    lane = pool.lane()
    got: list = []
    loop_thread = threading.get_ident()
    workers = set()

    def slow(i: int):
        workers.add(threading.get_ident())
        time.sleep(0.01 if i % 2 else 0.0)
        return i

    done = asyncio.Event()
    for i in range(6):
        lane.submit(lambda i=i: slow(i), lambda r: got.append((r, threading.get_ident())))
        lane.submit(None, lambda _, i=i: got.append((f"after {i}", threading.get_ident())))
    lane.submit(None, lambda _: done.set())
    await asyncio.wait_for(done.wait(), 5)
    assert [r for r, _ in got] == [x for i in range(6) for x in (i, f"after {i}")]
    assert {t for _, t in got} == {loop_thread}  # handed back on the loop
    assert loop_thread not in workers  # coded elsewhere


async def test_a_failing_job_hands_its_error_to_its_own_callback_and_the_lane_goes_on(pool):
    lane = pool.lane()
    got: list = []
    done = asyncio.Event()
    lane.submit(lambda: 1 / 0, got.append)
    lane.submit(lambda: "next", got.append)
    lane.submit(None, lambda _: done.set())
    await asyncio.wait_for(done.wait(), 5)
    assert isinstance(got[0], ZeroDivisionError) and got[1] == "next"


async def test_two_lanes_code_at_once_and_one_lane_never_does(pool):
    lanes = [pool.lane(), pool.lane()]
    running, most, same_lane = [0], [0], []
    lock = threading.Lock()
    active_per_lane = [0, 0]

    def work(k: int):
        with lock:
            running[0] += 1
            active_per_lane[k] += 1
            most[0] = max(most[0], running[0])
            same_lane.append(active_per_lane[k])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
            active_per_lane[k] -= 1

    finished = asyncio.Event()
    left = [8]

    def one_done(_):
        left[0] -= 1
        if not left[0]:
            finished.set()

    for _ in range(4):
        for k, lane in enumerate(lanes):
            lane.submit(lambda k=k: work(k), one_done)
    await asyncio.wait_for(finished.wait(), 5)
    assert most[0] == 2  # the two lanes in parallel
    assert max(same_lane) == 1  # a lane's jobs one after another (a codec's state is sequential)


async def test_a_closed_lane_drops_what_is_left(pool):
    lane = pool.lane()
    got: list = []
    lane.submit(lambda: time.sleep(0.05) or 1, got.append)
    lane.submit(lambda: 2, got.append)
    lane.close()
    await asyncio.sleep(0.2)
    assert got == []


async def test_idle_waits_for_every_result_submitted_so_far(pool):
    lane = pool.lane()
    got: list = []
    await asyncio.wait_for(lane.idle(), 1)  # a lane with nothing to do is idle at once
    for i in range(3):
        lane.submit(lambda i=i: time.sleep(0.02) or i, got.append)
    lane.submit(None, lambda _: got.append("end"))
    await asyncio.wait_for(lane.idle(), 5)
    assert got == [0, 1, 2, "end"]
    lane.submit(lambda: time.sleep(0.05), got.append)
    lane.close()  # a closed lane hands nothing over: nothing to wait for
    await asyncio.wait_for(lane.idle(), 1)
    assert got == [0, 1, 2, "end"]


async def test_lanes_started_in_one_pass_of_the_loop_go_to_the_workers_together(pool):
    # Every session's frame at a tick: one worker call per thread, not one per lane (each call is a
    # thread woken and a trip back through the loop's self-pipe).
    calls = []

    class Counted:  # an inbox that counts what is handed to its worker
        def __init__(self, inbox):
            self.inbox = inbox

        def put(self, group):
            calls.append(group)
            self.inbox.put(group)

    pool._inboxes = [Counted(inbox) for inbox in pool._inboxes]
    lanes = [pool.lane() for _ in range(16)]
    got: list = []
    finished = asyncio.Event()

    def one_done(result):
        got.append(result)
        if len(got) == 16:
            finished.set()

    for k, lane in enumerate(lanes):
        lane.submit(lambda k=k: k, one_done)
    await asyncio.wait_for(finished.wait(), 5)
    assert len(calls) == pool.threads == 2
    assert sorted(got) == list(range(16))


async def test_batches_waiting_when_the_pool_shuts_down_get_the_error_and_no_lane_hangs():
    pool = CodecPool(2)
    lanes = [pool.lane() for _ in range(3)]
    got: list = []
    for lane in lanes:
        lane.submit(lambda: "coded", got.append)  # handed out at the loop's next pass...
    pool.shutdown()  # ...which comes after the workers are gone
    await asyncio.wait_for(asyncio.gather(*(lane.idle() for lane in lanes)), 5)
    assert len(got) == 3 and all(isinstance(r, RuntimeError) for r in got), got
