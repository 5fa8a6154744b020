"""The frame clock: absolute deadlines, skip-ahead on overrun, one batched step per tick off the
event loop, slot changes applied between steps."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from assistant.conversation import SessionEnded, SetEngineSilent
from assistant.conversation.frame_phase import FramePhase
from assistant.engine import Engine, SlotOptions, StepOutput
from assistant.scheduler import FrameClock, Scheduler, TickLog, gather_batch

F = 1920


# -- FrameClock (pure) ------------------------------------------------------------------------


def test_deadlines_are_absolute_so_lateness_never_accumulates():
    clock = FrameClock(0.08, start=100.0)
    for k in range(1000):
        tick = clock.next_tick(now=100.0 + k * 0.08 + 0.03)  # every tick 30 ms late
        assert tick.index == k and tick.skipped == 0
        assert tick.deadline == pytest.approx(100.0 + k * 0.08)


def test_an_overrun_skips_ahead_instead_of_bursting():
    clock = FrameClock(0.08, start=0.0)
    assert clock.next_tick(0.0).index == 0
    tick = clock.next_tick(0.33)  # the step took 330 ms: ticks 1..4 are gone
    assert tick.skipped == 4 and tick.index == 5 and tick.deadline == pytest.approx(0.40)
    assert tick.deadline > 0.33  # the next tick waits for its own deadline
    tick = clock.next_tick(0.41)
    assert tick.index == 6 and tick.skipped == 0


def test_a_slightly_late_tick_runs_at_once():
    clock = FrameClock(0.08, start=0.0)
    clock.next_tick(0.0)
    tick = clock.next_tick(0.115)  # 35 ms late: less than half a period, run it now
    assert tick.index == 1 and tick.skipped == 0


def test_bad_period_is_refused():
    with pytest.raises(ValueError):
        FrameClock(0, 0.0)


class Source:
    def __init__(self, frames):
        self.frames = list(frames)
        self.got: list = []
        self.ended: str | None = None

    def take_frame(self):
        return self.frames.pop(0) if self.frames else None

    def frames_queued(self) -> int:
        return len(self.frames)

    def start(self):
        return ["ready"]

    def deliver(self, pcm, text, speaking, step_ms):
        self.got.append((pcm.copy(), text, speaking))

    def check_limits(self, now):
        pass

    def end(self, reason):
        self.ended = reason


def test_gather_batch_fills_rows_and_reports_underruns():
    batch = np.ones((3, F), dtype=np.float32)
    a, b = Source([np.full(F, 0.5, np.float32)]), Source([])
    out, underran = gather_batch(batch, {0: a, 2: b})
    assert underran == [2]
    assert (out[0] == 0.5).all() and (out[1] == 0).all() and (out[2] == 0).all()


# -- Scheduler with a fake engine --------------------------------------------------------------


class VirtualTime:
    """A clock and a sleep that only move when waited on, so timing tests need no real waiting."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


class EchoEngine(Engine):
    """Echoes each slot's input, tags text with the slot's open count; records what it was asked.

    With a VirtualTime `clock`, a step "takes" step_s of it instead of sleeping."""

    name = "echo"

    def __init__(self, batch_size, step_s=0.0, clock=None):
        super().__init__(batch_size)
        self.clock = clock
        self.step_s = step_s
        self.opens = [0] * batch_size
        self.log: list = []
        self.threads: set[int] = set()
        self.step_starts: list[float] = []

    def _reset_slot(self, slot, options):
        self.log.append(("reset", slot))

    def open(self, slot, options=None, held=False):
        super().open(slot, options, held)
        self.opens[slot] += 1

    def _step(self, pcm_in):
        self.step_starts.append(self.clock() if self.clock else time.monotonic())
        self.threads.add(threading.get_ident())
        self.log.append(("step", self.live.copy(), self.silenced.copy()))
        if self.step_s and self.clock:
            self.clock.now += self.step_s
        elif self.step_s:
            time.sleep(self.step_s)
        return StepOutput(
            pcm_out=pcm_in.copy(),
            text=[f"s{b}o{self.opens[b]}" for b in range(self.batch_size)],
            speaking=self.live.copy(),
        )


async def test_each_tick_steps_the_whole_batch_once_and_dispatches_rows():
    engine = EchoEngine(3)
    sched = Scheduler(engine)
    frames_a = [np.full(F, 0.1 * (i + 1), np.float32) for i in range(2)]
    a, b = Source(frames_a), Source([np.full(F, -0.5, np.float32)])
    ha, hb = sched.reserve(), sched.reserve()
    ha.attach(a, SlotOptions())
    hb.attach(b)
    assert sched.free_slots == 1 and sched.live_sessions == 2
    await sched.tick()
    await sched.tick()
    steps = [e for e in engine.log if e[0] == "step"]
    assert len(steps) == 2
    assert [g[1] for g in a.got] == ["s0o1", "s0o1"]
    np.testing.assert_array_equal(a.got[0][0], frames_a[0])
    np.testing.assert_array_equal(a.got[1][0], frames_a[1])
    np.testing.assert_array_equal(b.got[0][0], np.full(F, -0.5))
    np.testing.assert_array_equal(b.got[1][0], np.zeros(F))  # underrun: silence went in
    assert engine.threads and threading.get_ident() not in engine.threads  # never on the event loop


async def test_slot_changes_apply_between_steps_and_a_freed_slot_starts_clean():
    engine = EchoEngine(1)
    sched = Scheduler(engine)
    handle = sched.reserve()
    assert sched.reserve() is None  # full
    first = Source([])
    handle.attach(first)
    handle.force_silence(True)
    await sched.tick()
    assert engine.log[-1][0] == "step" and engine.log[-1][2][0]  # silenced before the step ran
    handle.release()
    # Capacity is free at once (a client that reconnects is not refused) ...
    handle2 = sched.reserve()
    assert handle2 is not None and handle2.slot == 0
    second = Source([])
    handle2.attach(second)
    before = len(engine.log)
    await sched.tick()
    # ... and the slot is still wiped (closed), then opened fresh, before the next step runs.
    assert [entry[0] for entry in engine.log[before:]] == ["reset", "reset", "step"]
    assert engine.opens[0] == 2
    assert second.got[0][1] == "s0o2"  # reopened
    assert not engine.log[-1][2][0]  # the previous session's forced silence did not leak
    assert len(first.got) == 1


async def test_a_released_slot_is_closed_at_the_next_tick():
    engine = EchoEngine(1)
    sched = Scheduler(engine)
    handle = sched.reserve()
    handle.attach(Source([]))
    await sched.tick()
    assert engine.live[0]
    handle.release()
    assert sched.free_slots == 1
    await sched.tick()
    assert engine.log[-1] == ("reset", 0) and not engine.live[0]


async def test_a_session_that_fails_is_ended_and_the_others_go_on():
    engine = EchoEngine(2)
    sched = Scheduler(engine)

    class Broken(Source):
        def deliver(self, *args):
            raise RuntimeError("boom")

    bad, good = Broken([]), Source([])
    sched.reserve().attach(bad)
    sched.reserve().attach(good)
    await sched.tick()
    assert bad.ended == "internal_error"
    assert len(good.got) == 1


# -- a session announced to its client: held until its slot is open and its first frame is in ----------


class HoldingEngine(Engine):
    """Echoes; opening a slot starts a prompt of `prefill_steps` steps (as PersonaPlex's); records the
    frames each slot's model heard, stepping only slots that are open, not held and past the prompt."""

    def __init__(self, batch_size: int, prefill_steps: int = 0):
        super().__init__(batch_size)
        self.prefill_steps = prefill_steps
        self.pending = np.zeros(batch_size, dtype=int)
        self.heard: list[list[np.ndarray]] = [[] for _ in range(batch_size)]

    def open(self, slot, options=None, held=False):
        super().open(slot, options, held)
        self.pending[slot] = self.prefill_steps

    def is_ready(self, slot):
        return bool(self.live[slot]) and self.pending[slot] == 0

    def _reset_slot(self, slot, options):
        self.heard[slot] = []

    def _step(self, pcm_in):
        for slot in np.flatnonzero(self.live & ~self.held & (self.pending == 0)):
            self.heard[slot].append(pcm_in[slot].copy())
        self.pending = np.maximum(self.pending - 1, 0)
        return StepOutput(pcm_out=pcm_in.copy(), text=[""] * self.batch_size, speaking=self.live.copy())


def frame(value: float) -> np.ndarray:
    return np.full(F, value, np.float32)


def test_the_model_first_hears_the_clients_first_frame_however_late_it_comes_after_ready():
    engine = HoldingEngine(2)
    now = [0.0]
    sched = Scheduler(engine, clock=lambda: now[0])
    other = Source([frame(0.9)] * 8)
    sched.reserve().attach(other)  # someone already talking: the clock steps all along
    source, announced = Source([]), []
    sched.reserve().attach(source, host=lambda _: announced.append(now[0]), announce=True)
    assert announced == []  # not before the frame loop opened the slot
    for _ in range(4):  # the client answers the announcement three ticks late
        sched.step_now()
        now[0] += 0.08
    assert announced == [0.0] and engine.live[1] and engine.held[1]
    assert source.got == [] and engine.heard[1] == []  # neither fed nor stepped meanwhile
    source.frames = [frame(0.25), frame(0.5)]
    sched.step_now()
    sched.step_now()
    assert [float(f[0]) for f in engine.heard[1]] == [0.25, 0.5]
    assert len(source.got) == 2 and len(other.got) == 6
    sched.shutdown()


def test_a_prompted_slot_is_announced_once_its_prompt_is_in():
    engine = HoldingEngine(1, prefill_steps=3)
    sched = Scheduler(engine)
    source, announced = Source([frame(0.5)]), []
    handle = sched.reserve()
    handle.attach(source, host=lambda _: announced.append(len(engine.heard[0])), announce=True)
    for _ in range(3):
        sched.step_now()
        assert announced == [] and source.got == []  # three steps of prompt
    sched.step_now()
    assert announced == [0]  # announced before the model heard anything of this conversation
    assert [float(f[0]) for f in engine.heard[0]] == [0.5] and len(source.got) == 1
    sched.shutdown()


def test_a_client_that_listens_first_is_fed_after_the_wait():
    engine = HoldingEngine(1)
    now = [0.0]
    sched = Scheduler(engine, clock=lambda: now[0], first_audio_wait_s=0.5)
    source = Source([])
    sched.reserve().attach(source, announce=True)
    while now[0] < 0.5:
        sched.step_now()
        assert source.got == []
        now[0] += 0.08
    sched.step_now()
    assert len(source.got) == 1 and len(engine.heard[0]) == 1  # silence, the client sent nothing
    sched.shutdown()


async def test_the_loops_calls_hand_their_events_to_the_host_after_the_call():
    """A session's events of deliver/check_limits/end go to the host that attached it, once the call
    has returned; the host carries out the slot's part (here: hold the engine, then end)."""
    engine = EchoEngine(1)
    sched = Scheduler(engine)
    handle = sched.reserve()
    calls: list[str] = []

    class Talking(Source):
        def deliver(self, pcm, text, speaking, step_ms):
            calls.append("deliver")
            return [SetEngineSilent(True)] if len(calls) == 1 else []

        def check_limits(self, now):
            return self.end("idle_timeout") if self.got_all else []

        def end(self, reason):
            self.ended = reason
            return [SessionEnded(reason)]

    session = Talking([])
    session.got_all = False
    hosted: list = []

    def host(events):
        calls.append("host")
        hosted.extend(events)
        for event in events:
            handle.carry_out(event)

    handle.attach(session, SlotOptions(), host)
    await sched.tick()
    assert calls == ["deliver", "host"] and hosted == [SetEngineSilent(True)]
    await sched.tick()
    assert engine.log[-1][0] == "step" and engine.log[-1][2][0]  # held from the next step on
    session.got_all = True
    await sched.tick()  # the limit ends it: the host gives the slot back at once
    assert hosted[-1] == SessionEnded("idle_timeout") and sched.free_slots == 1 and sched.live_sessions == 0


async def test_run_keeps_12_5_hz_and_skips_ticks_when_a_step_overruns():
    clock = VirtualTime()
    start = clock.now

    class Slowing(EchoEngine):
        def _step(self, pcm_in):
            if clock.now >= start + 1.0:
                self.step_s = 0.2  # from 1 s on every step overruns 2.5 frames
            return super()._step(pcm_in)

    engine = Slowing(1, step_s=0.0, clock=clock)
    sched = Scheduler(engine, clock=clock, sleep=clock.sleep)
    sched.reserve().attach(Source([]))

    async def until(t: float) -> None:
        while clock.now < start + t:
            await asyncio.sleep(0.0005)

    task = asyncio.create_task(sched.run())
    await until(2.0)
    sched.stop()
    await asyncio.wait_for(task, 2)
    sched.shutdown()
    starts = np.array(engine.step_starts)
    fast = starts[starts < starts[0] + 0.95]
    intervals = np.diff(fast)
    assert 10 <= len(fast) <= 14
    assert np.median(intervals) == pytest.approx(0.08, abs=0.01)
    slow = np.diff(starts[starts > starts[0] + 1.25])
    assert sched.skipped >= 3
    assert sched.clock_stats()["skipped_at_once"] == 2  # a 200 ms step costs the two ticks it covers
    # No burst after an overrun: the next step waits for a fresh deadline (3 periods = 240 ms after
    # the last start) instead of starting the moment the 200 ms step returns.
    assert slow.min() >= 0.23


async def test_a_tick_waits_briefly_for_input_that_is_just_late():
    engine = EchoEngine(2)
    sched = Scheduler(engine, grace_ms=20)

    class Late(Source):
        ready = False

        def frame_ready(self):
            return self.ready

    late, punctual = Late([]), Source([np.full(F, 0.2, np.float32)])
    sched.reserve().attach(late)
    sched.reserve().attach(punctual)

    def arrive():
        late.frames.append(np.full(F, 0.7, np.float32))
        late.ready = True

    asyncio.get_running_loop().call_later(0.005, arrive)
    await sched.tick()
    np.testing.assert_array_equal(late.got[0][0], np.full(F, 0.7, np.float32))  # not a silence frame
    np.testing.assert_array_equal(punctual.got[0][0], np.full(F, 0.2, np.float32))
    # Input that is not there after the grace period is an underrun as before.
    await sched.tick()
    np.testing.assert_array_equal(late.got[1][0], np.zeros(F))


def test_tick_log_keeps_the_last_ticks_in_fixed_memory():
    log = TickLog(size=4)
    buffer = log._rows
    for i in range(10):
        log.append(float(i), 2.0 * i, i % 3)
    assert len(log) == 4 and log.count == 10
    np.testing.assert_array_equal(log.rows()[:, 0], [6, 7, 8, 9])  # oldest first after wrapping
    np.testing.assert_array_equal(log.rows()[:, 1], [12, 14, 16, 18])
    assert log._rows is buffer  # no growth: the same buffer all along
    short = TickLog(size=8)
    short.append(1.0, float("nan"), 1)
    assert short.rows().shape == (1, 3)


async def test_clock_stats_count_only_ticks_that_served_someone():
    engine = EchoEngine(2)
    sched = Scheduler(engine)
    sched.tick_log.append(5.0, 1.0, 0)  # idle ticks do not count
    sched.tick_log.append(1.0, 2.0, 1)
    sched.tick_log.append(3.0, 4.0, 2)
    stats = sched.clock_stats()
    assert stats["ticks"] == 2 and stats["max_live"] == 2
    assert stats["late_ms"]["max"] == 3.0 and stats["step_ms"]["p50"] == 3.0


class PacedClient(Source):
    """A client whose k-th frame is due at `first + k * (80 ms + drift)` of a VirtualTime, sent in
    chunks of `chunk_ms` (the first in at `first`); it asks for its tick as a Conversation does
    (FramePhase.tick_move over the chunks in so far)."""

    def __init__(self, clock: VirtualTime, first: float, drift: float = 0.0, chunk_ms: int = 80):
        super().__init__([])
        self.clock, self.first, self.drift = clock, first, drift
        self.chunk = F * chunk_ms // 80
        self.phase = FramePhase()
        self.arrived = 0
        self.waits: list[float] = []  # each frame's wait from its chunk to the tick that took it
        self.underruns = 0

    def due(self, k: int) -> float:
        return self.first + k * (0.08 + self.drift)

    def chunk_due(self, k: int) -> float:
        return self.first + k * self.chunk / F * (0.08 + self.drift)

    def tick_move(self, tick_s: float, *, sooner: bool) -> float | None:
        while self.chunk_due(self.arrived) <= self.clock():
            self.arrived += 1
            self.phase.arrived(self.arrived * self.chunk, self.chunk_due(self.arrived - 1))
        return self.phase.tick_move(tick_s, sooner=sooner)

    def take_frame(self):
        if self.clock() < self.due(len(self.waits)):
            self.underruns += bool(self.waits)  # before its first chunk a client cannot be late
            return None
        self.waits.append(self.clock() - self.due(len(self.waits)))
        return np.zeros(F, np.float32)


async def run_for(sched: Scheduler, clock: VirtualTime, seconds: float) -> None:
    end = clock.now + seconds
    task = asyncio.create_task(sched.run())
    while clock.now < end:
        await asyncio.sleep(0.0005)
    sched.stop()
    await asyncio.wait_for(task, 2)
    sched.shutdown()


def held_client(clock: VirtualTime, first: float, drift: float = 0.0, chunk_ms: int = 80) -> PacedClient:
    """A PacedClient the frame loop holds until its first chunk is in, as the server's sessions."""
    client = PacedClient(clock, first=first, drift=drift, chunk_ms=chunk_ms)
    client.frames_queued = lambda: int(clock() >= client.due(len(client.waits)))
    return client


async def test_the_clock_comes_to_a_lone_client_before_its_first_step_and_follows_it_as_it_drifts():
    # The client's chunks end 45 ms before the ticks the clock would have. Held for its first
    # frame, the clock looks every few ms, and its first step comes just after its first chunk.
    clock = VirtualTime()
    sched = Scheduler(EchoEngine(2), clock=clock, sleep=clock.sleep)
    steady = held_client(clock, first=clock.now + 0.195)
    sched.reserve().attach(steady, announce=True)
    await run_for(sched, clock, 1.0)
    placed = 0.003 + 0.002  # FramePhase's margin, and the headroom a moved tick lands past it
    assert len(steady.waits) >= 8 and steady.waits == pytest.approx([placed] * len(steady.waits), abs=1e-6)
    assert sched.clock_moves == 1 and steady.underruns == 0

    clock = VirtualTime()
    sched = Scheduler(EchoEngine(2), clock=clock, sleep=clock.sleep)
    slower = held_client(clock, first=clock.now + 0.195, drift=0.0001)  # its clock 0.125 % slow
    sched.reserve().attach(slower, announce=True)
    await run_for(sched, clock, 10.0)
    # Each chunk comes 0.1 ms later than the last, 12 ms in all: the clock steps back with it, a
    # millisecond at a time, and no frame misses its tick.
    assert slower.underruns == 0 and max(slower.waits) <= placed + 1e-6
    assert min(slower.waits) >= 0.001 and sched.clock_moves >= 6


@pytest.mark.parametrize("chunk_ms", [10, 15, 20, 30, 50, 80, 120])
async def test_the_clock_keeps_its_period_whatever_the_clients_chunks(chunk_ms):
    # Following a lone client moves ticks a little, never the rate: chunk ends that fall at another
    # phase every tick (15, 30, 50, 120 ms) are not followed at all, and tiny chunks are not
    # followed round and round.
    clock = VirtualTime()
    engine = EchoEngine(2, clock=clock)
    sched = Scheduler(engine, clock=clock, sleep=clock.sleep)
    client = held_client(clock, first=clock.now + 0.195, chunk_ms=chunk_ms)
    sched.reserve().attach(client, announce=True)
    await run_for(sched, clock, 8.0)
    starts = np.array(engine.step_starts)
    starts = starts[starts > client.first]  # from its first step on (the one move sooner is before it)
    assert len(starts) >= 95  # 8 s less the wait for the first chunk, at 12.5 Hz
    assert np.diff(starts).mean() == pytest.approx(0.08, abs=0.0015), chunk_ms
    assert np.diff(starts).min() >= 0.079 and sched.clock_moves <= 3, (chunk_ms, sched.clock_moves)


async def test_once_a_session_is_fed_the_clock_comes_no_sooner():
    # Its replies already play: a sooner clock would pile them up in the client's buffer.
    clock = VirtualTime()
    sched = Scheduler(EchoEngine(2), clock=clock, sleep=clock.sleep)
    fed = PacedClient(clock, first=clock.now + 0.035)  # fed from the first tick (not held)
    sched.reserve().attach(fed)
    await run_for(sched, clock, 1.0)
    assert sched.clock_moves == 0
    assert fed.waits == pytest.approx([0.045] * len(fed.waits), abs=1e-6)


async def test_with_two_clients_the_clock_stays_where_it_is():
    clock = VirtualTime()
    sched = Scheduler(EchoEngine(2), clock=clock, sleep=clock.sleep)
    clients = [PacedClient(clock, first=clock.now + 0.035), PacedClient(clock, first=clock.now + 0.065)]
    for client in clients:
        sched.reserve().attach(client)
    await run_for(sched, clock, 1.0)
    assert sched.clock_moves == 0
    assert clients[0].waits[1:] == pytest.approx([0.045] * (len(clients[0].waits) - 1), abs=1e-6)
    assert clients[1].waits[1:] == pytest.approx([0.015] * (len(clients[1].waits) - 1), abs=1e-6)
