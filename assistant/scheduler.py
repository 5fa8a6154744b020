"""The 12.5 Hz frame clock: one batched engine step per 80 ms for every live session.

Each tick (absolute wall-clock deadlines start + k * 80 ms, so no drift accumulates):
  1. apply queued slot changes (open, close, force_silence, update, image) while no step is running,
  2. take one input frame from every live session (silence on underrun; the session counts it);
     if a session's input is just short of a frame, wait a few ms (grace_ms) once before that,
  3. run `engine.step` on the whole batch in a worker thread (the event loop stays free),
  4. hand each session its row of the output at once.
A step that overruns makes the clock skip the ticks it missed instead of bursting to catch up.

This is the only frame loop. Three clocks drive it:
- the server: `run()`, wall-clock deadlines (above);
- `assistant talk --local`: `tick()` whenever the user's audio completes a frame (the sound
  device is the clock);
- offline (`respond`, evaluation): `step_now()` once per frame of a recording, in this thread,
  with an `OfflineClock` that advances 80 ms per frame.

A session that must announce itself to a client (the server's) is attached with `announce`: the
frame loop opens its slot held, calls its `start()` once the slot is open (and its prompt, if any,
is in) and hands the events to its host, and starts stepping it at the first tick that has a whole
frame of its input, so the model's first step for it hears the client's first audio however late
that comes after the announcement (or at `first_audio_wait_s` after it, for a client that listens
first).

The policy parts (`FrameClock`, `gather_batch`) are pure and tested without threads or sockets.
A session is anything with `take_frame() -> float32 (1920,) | None`, `deliver(pcm, text,
speaking, step_ms)`, `check_limits(now)` and `end(reason)` (assistant/conversation's
Conversation). The last three return the session's events; the loop hands them, as soon as the
call has returned, to the host that attached the session (`SlotHandle.attach(session, options,
host)`), which carries them out as it does the events of its own calls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from assistant.conversation.events import SessionEnded, SetEngineOptions, SetEngineSilent
from assistant.engine import Engine, SlotOptions, StepOutput
from assistant.frame_gc import FrameGarbageCollector
from assistant.images import PreparedImage
from audio.frames import FRAME_MS

log = logging.getLogger(__name__)

# How often the clock, waiting for its next tick, looks again at a lone session held for its first
# audio (s): that chunk places its first step to within this.
FOLLOW_POLL_S = 0.004


class TickLog:
    """(tick start - deadline ms, step ms or nan, live sessions) of the last `size` ticks, for
    benchmarks and `--clock-stats`. Fixed memory (2.4 MB at the default size, about 2 h of ticks):
    a long-running server's log neither grows nor allocates per tick."""

    def __init__(self, size: int = 100_000):
        self._rows = np.zeros((size, 3), dtype=np.float64)
        self.count = 0

    def append(self, late_ms: float, step_ms: float, live: int) -> None:
        self._rows[self.count % len(self._rows)] = (late_ms, step_ms, live)
        self.count += 1

    def rows(self) -> np.ndarray:
        """The logged ticks (oldest first once the log has wrapped)."""
        if self.count <= len(self._rows):
            return self._rows[: self.count].copy()
        return np.roll(self._rows, -(self.count % len(self._rows)), axis=0)

    def __len__(self) -> int:
        return min(self.count, len(self._rows))


class FrameSource(Protocol):
    def frame_ready(self) -> bool: ...  # optional: False makes the tick wait `grace_ms` once

    # optional: how far the tick due at tick_s should move for a lone session (sooner: while held)
    def tick_move(self, tick_s: float, *, sooner: bool) -> float | None: ...

    def tick_due(self, tick_s: float) -> None: ...  # optional: when the tick taking the next frame is due

    def frames_queued(self) -> int: ...  # optional: whole frames of input waiting (0 holds a new session)

    def start(self) -> list: ...  # called once its slot is open, for a session attached with announce

    def take_frame(self) -> np.ndarray | None: ...

    def deliver(self, pcm: np.ndarray, text: str, speaking: bool, step_ms: float) -> list: ...

    def check_limits(self, now: float) -> list: ...

    def end(self, reason: str) -> list: ...


Host = Callable[[list], None]  # carries out a session's events (the list a FrameSource call returned)


# -- pure policy ---------------------------------------------------------------------------------


@dataclass
class Tick:
    index: int  # tick number since the clock started
    deadline: float  # when it is due (clock seconds)
    skipped: int  # ticks given up since the previous one because a step overran


class OfflineClock:
    """Frame time for a host without a wall clock: seconds that advance one frame per `advance()`."""

    def __init__(self, period_s: float = FRAME_MS / 1000.0):
        self.period_s = period_s
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self) -> float:
        self.now_s += self.period_s
        return self.now_s


class FrameClock:
    """Absolute deadlines `start + k * period_s`.

    `next_tick(now)` returns the next tick to run. When we are late by half a period or more
    (a step overran), the missed ticks are skipped and the next deadline in the future is used,
    so the clock never bursts steps back to back to catch up.
    """

    def __init__(self, period_s: float, start: float):
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self.period_s = period_s
        self.start = start
        self._next = 0

    def deadline(self, index: int) -> float:
        return self.start + index * self.period_s

    def move(self, seconds: float) -> None:
        """Move every deadline from the next tick on by `seconds` (< 0: sooner)."""
        self.start += seconds

    def next_tick(self, now: float) -> Tick:
        index = self._next
        skipped = 0
        if now - self.deadline(index) >= self.period_s / 2:
            later = math.ceil((now - self.start) / self.period_s)
            skipped = later - index
            index = later
        self._next = index + 1
        return Tick(index=index, deadline=self.deadline(index), skipped=skipped)


def gather_batch(batch: np.ndarray, sessions: dict[int, FrameSource]) -> tuple[np.ndarray, list[int]]:
    """Fill `batch` (B, 1920) with one frame per session row (zeros for idle rows and underruns).

    Returns the batch and the slots that underran.
    """
    batch.fill(0.0)
    underran = []
    for slot, session in sessions.items():
        frame = session.take_frame()
        if frame is None:
            underran.append(slot)
        else:
            batch[slot] = frame
    return batch, underran


# -- slots ---------------------------------------------------------------------------------------


class SlotHandle:
    """One reserved engine slot. The session holds it; every engine call is queued for the clock."""

    def __init__(self, scheduler: Scheduler, slot: int):
        self.scheduler = scheduler
        self.slot = slot
        self.released = False

    def attach(
        self,
        session: FrameSource,
        options: SlotOptions | None = None,
        host: Host | None = None,
        *,
        announce: bool = False,
    ) -> None:
        """Open the engine slot with `options` and start feeding `session` from the next tick;
        `host` gets the events of every call the frame loop makes (None: they are dropped).
        announce: hold the slot until it is open, then call `session.start()` (its events to `host`),
        and feed the session from its first whole frame of input."""
        scheduler = self.scheduler
        scheduler._ops.append(("open", self.slot, (options or SlotOptions(), announce)))
        scheduler._sessions[self.slot] = session
        scheduler._hosts[self.slot] = host
        if announce:
            scheduler._starting[self.slot] = None

    def carry_out(self, event) -> None:
        """The slot's part of one event a conversation returned: hold the engine or let it speak, new
        options, and the slot given back at SessionEnded; nothing for the others."""
        if isinstance(event, SetEngineSilent):
            self.force_silence(event.silent)
        elif isinstance(event, SetEngineOptions):
            self.update(event.options)
        elif isinstance(event, SessionEnded):
            self.release()

    def force_silence(self, silent: bool) -> None:
        if not self.released:
            self.scheduler._ops.append(("silence", self.slot, bool(silent)))

    def next_tick_after(self, t: float) -> float | None:
        """When the frame loop's first tick after clock time `t` is due (None: no wall clock ticks)."""
        return self.scheduler.next_tick_after(t)

    def clock(self) -> float:
        """The frame loop's clock, seconds."""
        return self.scheduler.clock()

    def check_prompt(self, instructions: str | None, voice: str | None) -> None:
        """Raise ValueError now (not at the next tick) unless the engine can use this prompt."""
        self.scheduler.engine.check_prompt(instructions, voice)

    def context_fill(self) -> float | None:
        """How full the slot's model context is, 0..1 (`Engine.context_fill`); None once released."""
        return None if self.released else self.scheduler.engine.context_fill(self.slot)

    def update(self, options: SlotOptions) -> None:
        if not self.released:
            self.scheduler._ops.append(("update", self.slot, options))

    def reset_encoder(self) -> None:
        """Encode the next input frame as a stream's first (see Engine.reset_encoder), from the next tick."""
        if not self.released:
            self.scheduler._ops.append(("reset_encoder", self.slot, None))

    @property
    def takes_images(self) -> bool:
        return self.scheduler.engine.takes_images

    def check_image(self, data: bytes) -> PreparedImage:
        """Validate and prepare image bytes on the caller's thread (decoding and resizing take a few
        ms: call it from a worker thread, not the event loop). Raises an `ImageError` subclass,
        `ImagesNotSupported` for a model without vision; the session is untouched either way."""
        return self.scheduler.engine.check_image(data)

    def set_image(self, image: PreparedImage | None, *, start_frame: int | None = None) -> None:
        """Show the conversation `image` (from `check_image`), or remove its image (None), at the
        next tick; it is encoded in the following ticks' spare time and counts from the step after."""
        if not self.released:
            self.scheduler._ops.append(("image", self.slot, (image, start_frame)))

    def image_status(self) -> str:
        """ "none", "encoding" or "set" (see `Engine.image_status`)."""
        return "none" if self.released else self.scheduler.engine.image_status(self.slot)

    def release(self) -> None:
        """Stop feeding the session and free its capacity now; the engine slot is wiped before the next step."""
        if self.released:
            return
        self.released = True
        self.scheduler._sessions.pop(self.slot, None)
        self.scheduler._hosts.pop(self.slot, None)
        self.scheduler._starting.pop(self.slot, None)
        # Capacity is free at once: a new session's "open" is queued behind this "close", and the
        # slot is wiped before it opens again.
        self.scheduler._reserved.discard(self.slot)
        self.scheduler._ops.append(("close", self.slot, None))


# -- the clock -----------------------------------------------------------------------------------


class Scheduler:
    """Drives one engine at 12.5 Hz for every attached session."""

    def __init__(
        self,
        engine: Engine,
        *,
        frame_ms: float = FRAME_MS,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        grace_ms: float = 5.0,
        collect_garbage: bool = False,
        first_audio_wait_s: float = 0.5,
    ):
        """clock and sleep: the wall clock (seconds) and how to wait on it; tests inject a virtual pair.
        collect_garbage: while run() runs, Python's cycle collector runs only between ticks
        (assistant/frame_gc.py); for a process whose frame clock matters (a server, a live talk).
        first_audio_wait_s: how long an announced session is held for its first frame of input."""
        self.engine = engine
        self.first_audio_wait_s = first_audio_wait_s
        self.grace_s = grace_ms / 1000.0  # how long a tick waits for input that is just late
        self.period_s = frame_ms / 1000.0
        self.metrics = metrics
        self.clock = clock
        self._sleep = sleep
        self._sessions: dict[int, FrameSource] = {}
        self._hosts: dict[int, Host | None] = {}
        # Sessions attached with announce and not fed yet: slot -> when announced (None: not yet).
        self._starting: dict[int, float | None] = {}
        self._reserved: set[int] = set()
        self._ops: list[tuple[str, int, Any]] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-step")
        self._batch = np.zeros((engine.batch_size, engine.frame_samples), dtype=np.float32)
        self._stop = asyncio.Event()
        self.ticks = 0
        self.skipped = 0
        self.skipped_at_once = 0  # the most ticks one stall cost live sessions: a gap of this + 1 periods
        self.clock_moves = 0  # times the clock moved to the one session it served (either way)
        self.tick_log = TickLog()
        self._grid: FrameClock | None = None  # the wall clock's tick deadlines while run() ticks
        self.gc = FrameGarbageCollector() if collect_garbage else None

    @property
    def capacity(self) -> int:
        return self.engine.batch_size

    @property
    def live_sessions(self) -> int:
        return len(self._sessions)

    @property
    def free_slots(self) -> int:
        return self.capacity - len(self._reserved)

    def reserve(self) -> SlotHandle | None:
        """A free slot for a new session, or None when the server is full."""
        for slot in range(self.capacity):
            if slot not in self._reserved:
                self._reserved.add(slot)
                return SlotHandle(self, slot)
        return None

    def sessions(self) -> list[FrameSource]:
        return list(self._sessions.values())

    def stop(self) -> None:
        self._stop.set()

    def _apply_ops(self, raise_errors: bool = False) -> None:
        ops, self._ops = self._ops, []
        for kind, slot, arg in ops:
            try:
                if kind == "open":
                    if self.engine.live[slot]:
                        self.engine.close(slot)
                    options, held = arg
                    self.engine.open(slot, options, held=held)
                elif kind == "close":
                    if self.engine.live[slot]:
                        self.engine.close(slot)
                elif kind == "silence" and self.engine.live[slot]:
                    self.engine.force_silence(slot, arg)
                elif kind == "update" and self.engine.live[slot]:
                    self.engine.update(slot, arg)
                elif kind == "reset_encoder" and self.engine.live[slot]:
                    self.engine.reset_encoder(slot)
                elif kind == "image" and self.engine.live[slot]:
                    self.engine.set_image(slot, arg[0], start_frame=arg[1])
            except Exception:  # one bad slot change must not stop the clock for everyone
                if raise_errors:
                    raise
                log.exception("engine %s of slot %d failed", kind, slot)

    def _joined(self) -> dict[int, FrameSource]:
        """The sessions fed this tick: attached, and not held by `attach(announce=True)`."""
        return {slot: s for slot, s in self._sessions.items() if slot not in self._starting}

    def _start_sessions(self, now: float) -> None:
        """Announce held sessions whose slot is open, and let in those whose first frame has come."""
        for slot, announced_at in list(self._starting.items()):
            session = self._sessions[slot]
            try:
                if not self.engine.live[slot]:
                    raise RuntimeError("the engine did not open its slot")  # why was logged
                if announced_at is None:
                    if not self.engine.is_ready(slot):
                        continue  # its prompt is still going in
                    self._starting[slot] = announced_at = now
                    self._hand_over(slot, session.start())
                    if self._sessions.get(slot) is not session:
                        continue  # its host ended it at the announcement
                waited = now - announced_at
                if getattr(session, "frames_queued", lambda: 1)() < 1 and waited < self.first_audio_wait_s:
                    continue
                self.engine.start(slot)
            except Exception:
                log.exception("the start of the session in slot %d failed; ending it", slot)
                self._hand_over(slot, session.end("internal_error"))
            self._starting.pop(slot, None)

    def _gather(self, deadline: float | None = None) -> tuple[dict[int, FrameSource], np.ndarray] | None:
        """Slot changes, limits, held sessions, then one input frame per fed session (None when no
        session is attached). deadline: when this tick was due on the wall clock, for sessions that
        place their frames."""
        self._apply_ops()
        now = self.clock()
        for slot, session in list(self._sessions.items()):
            self._hand_over(slot, session.check_limits(now))
            if deadline is not None and hasattr(session, "tick_due"):
                session.tick_due(deadline)
        self._start_sessions(now)
        if not self._sessions:
            return None
        sessions = self._joined()
        batch, _ = gather_batch(self._batch, sessions)
        return sessions, batch

    def _dispatch(self, sessions: dict[int, FrameSource], out: StepOutput, step_ms: float) -> None:
        """Hand each session its row of the step's output."""
        if self.metrics:
            self.metrics.observe("step_ms", step_ms)
            self.metrics.inc("session_frames", len(sessions))
        for slot in out.failed.keys() & self._starting.keys():  # a held session whose prompt failed
            log.error("slot %d cannot start (%s); ending its session", slot, out.failed[slot])
            self._hand_over(slot, self._sessions[slot].end("internal_error"))
        for slot, session in sessions.items():
            # A session that left during the step gets nothing more.
            if self._sessions.get(slot) is not session:
                continue
            if slot in out.failed:
                log.error("slot %d cannot go on (%s); ending its session", slot, out.failed[slot])
                self._hand_over(slot, session.end("internal_error"))
                continue
            try:
                events = session.deliver(out.pcm_out[slot], out.text[slot], bool(out.speaking[slot]), step_ms)
                self._hand_over(slot, events)
            except Exception:
                log.exception("session in slot %d failed to take its output; ending it", slot)
                self._hand_over(slot, session.end("internal_error"))

    def _hand_over(self, slot: int, events: list) -> None:
        """A session's events to its host, right after the call that returned them."""
        host = self._hosts.get(slot)
        if host is not None and events:
            host(events)

    async def tick(self, deadline: float | None = None) -> float:
        """One frame: apply slot changes, gather, step in the worker thread, dispatch.
        deadline: when the wall clock's tick was due (`run`); None for a clock driven by the input.

        Returns the step time in ms (nan when no session was live and nothing ran)."""
        if self.grace_s and self._sessions:
            self._apply_ops()
            if not all(getattr(s, "frame_ready", lambda: True)() for s in self._joined().values()):
                # A talking user's chunk is a few ms late: wait that long rather than feed the model a gap
                # (it would also push the user's timeline behind the clock for the rest of the turn).
                await self._sleep(self.grace_s)
        gathered = self._gather(deadline)
        if gathered is None:
            return float("nan")
        sessions, batch = gathered
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        out = await loop.run_in_executor(self._executor, self.engine.step, batch)
        step_ms = (time.perf_counter() - t0) * 1000.0
        self._dispatch(sessions, out, step_ms)
        return step_ms

    def step_now(self) -> float:
        """One frame as `tick` does it, but in this thread and without waiting (offline runs)."""
        gathered = self._gather()
        if gathered is None:
            return float("nan")
        sessions, batch = gathered
        t0 = time.perf_counter()
        out = self.engine.step(batch)
        step_ms = (time.perf_counter() - t0) * 1000.0
        self._dispatch(sessions, out, step_ms)
        return step_ms

    def apply_slot_changes(self, raise_errors: bool = False) -> None:
        """Carry out queued slot changes now (a host without a running clock). raise_errors: a slot
        change that fails raises (an offline run has no one else to tell) instead of being logged."""
        self._apply_ops(raise_errors)

    def next_tick_after(self, t: float) -> float | None:
        """When the first tick after clock time `t` is due (None while `run` is not ticking)."""
        grid = self._grid
        if grid is None:
            return None
        return grid.deadline(max(0, math.floor((t - grid.start) / grid.period_s) + 1))

    async def run(self) -> None:
        """Tick until stop(); slot changes made meanwhile apply at the next tick."""
        clock = self._grid = FrameClock(self.period_s, self.clock())
        if self.gc:
            self.gc.start()
        try:
            while not self._stop.is_set():
                tick = self._follow_lone_session(clock, clock.next_tick(self.clock()))
                if tick.skipped:
                    self.skipped += tick.skipped
                    if self._sessions:  # a stall while nobody is served (a model loading) costs nobody
                        self.skipped_at_once = max(self.skipped_at_once, tick.skipped)
                    if self.metrics:
                        self.metrics.inc("skipped_ticks", tick.skipped)
                wait = tick.deadline - self.clock()
                while wait > 0 and not self._stop.is_set():
                    # A lone session held for its first audio: that can come at any moment. (Once
                    # fed, it is followed once a tick, above: only ever a little later.)
                    poll = self._starting and self._follows()
                    await self._sleep(min(wait, FOLLOW_POLL_S) if poll else wait)
                    if poll:
                        tick = self._follow_lone_session(clock, tick)
                    wait = tick.deadline - self.clock()
                if self._stop.is_set():
                    break
                late_ms = (self.clock() - tick.deadline) * 1000.0
                if self.metrics:
                    self.metrics.observe("tick_late_ms", late_ms)
                self.ticks += 1
                live = len(self._sessions)
                step_ms = await self.tick(tick.deadline)
                self.tick_log.append(late_ms, step_ms, live)
                if self.gc:
                    await asyncio.sleep(0)  # the writers send this tick's output first
                    self.gc.collect_if_due()
        finally:
            self._grid = None
            if self.gc:
                self.gc.stop()
            self._apply_ops()

    def _follows(self) -> bool:
        """Whether the clock may move to a session now: only one, and it says where it would go."""
        return len(self._sessions) == 1 and hasattr(next(iter(self._sessions.values())), "tick_move")

    def _follow_lone_session(self, clock: FrameClock, tick: Tick) -> Tick:
        """With one session, move the clock to that session's phase (`tick_move`). A client's
        chunks as long as a frame all end at one phase against the ticks, and only the clock can
        take the wait after them away (shorter chunks get their frames placed, FramePhase, and this
        takes the rest of their wait).

        Sooner only while the session is held for its first frame: a client that plays the replies
        as one stream (the page, `talk`, Kyutai's client) keeps the phase its first reply set, so a
        clock brought forward later would only pile the replies up in its buffer, not have them
        heard sooner. Later, by a millisecond or a few, at any time: when the client's chunks come
        later and later (its clock runs slow, or its first chunks came early), so that no frame
        waits a period for its last chunk; the client's player covers that small gap. Never with
        two sessions or more: each has its own phase, and their frames are placed instead. What
        the model hears is unchanged; only when."""
        if not self._follows():
            return tick
        ((slot, session),) = self._sessions.items()
        held = slot in self._starting
        move = session.tick_move(tick.deadline, sooner=held) or 0.0
        if move < 0:
            move = min(0.0, max(move, self.clock() - tick.deadline))  # at the soonest, now
        if not move:
            return tick
        clock.move(move)
        self.clock_moves += 1
        return Tick(index=tick.index, deadline=clock.deadline(tick.index), skipped=tick.skipped)

    def clock_stats(self) -> dict:
        """Frame-clock figures over the logged ticks that served at least one session."""
        rows = self.tick_log.rows()
        rows = rows[rows[:, 2] > 0]

        def pct(values: np.ndarray) -> dict:
            values = values[~np.isnan(values)]  # a tick whose sessions had all left ran no step
            if values.size == 0:
                return {"p50": None, "p99": None, "max": None}
            return {
                k: round(float(v), 3)
                for k, v in zip(
                    ("p50", "p99", "max"), (*np.percentile(values, [50, 99]), values.max()), strict=True
                )
            }

        return {
            "ticks": int(rows.shape[0]),
            "skipped": self.skipped,
            "skipped_at_once": self.skipped_at_once,
            "moves": self.clock_moves,
            "late_ms": pct(rows[:, 0]),
            "step_ms": pct(rows[:, 1]),
            "max_live": int(rows[:, 2].max()) if rows.size else 0,
        }

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
