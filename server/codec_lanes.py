"""Audio coding off the event loop: worker threads, one ordered lane per connection and direction.

Opus costs about 1.2 ms of CPU per session and 80 ms frame (encode and decode). On the event loop
that is the whole per-session budget, and 64 Opus sessions would need more than a frame's time.
Here the coding runs on a small pool of worker threads; the event loop only hands bytes over and
takes results back. PyAV's libopus calls (/ws's packets) release the GIL: two workers code about
1.4 times as much as one on two busy cores. sphn's (/api/chat's Ogg) hold it, so two code no more
than one, and /api/chat keeps them inline (`assistant bench server --audio-format opus` measures
both).

A lane keeps one connection's order in one direction: its jobs run one after another (a codec's
state is sequential), and their results are handed back on the event loop in the order they were
submitted, so a message that needs no coding (a `playback.clear`, a text piece) submitted behind
an audio frame still goes out behind it. Jobs queued while the lane is busy run together in one
worker call, so a busy lane costs the loop one hand-over per batch, not per job.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("assistant.server")

DEFAULT_THREADS = 2

Job = Callable[[], Any] | None  # None: nothing to compute, the result is None
Done = Callable[[Any], None]  # gets the job's result, or the exception it raised
Group = list[tuple["CodecLane", list[tuple[Job, Done]]]]  # the batches one worker codes in one go


def _run_all(jobs: list[Job]) -> list[Any]:
    results = []
    for job in jobs:
        try:
            results.append(None if job is None else job())
        except Exception as exc:  # handed to its own callback: one bad packet fails only itself
            results.append(exc)
    return results


class CodecPool:
    """The worker threads every lane shares.

    The batches lanes start in one pass of the event loop (every session's frame at a tick, the
    packets of all the sockets one poll found readable) go to the workers together: one hand-over
    per thread, not per lane. Results come back through one queue, and a worker wakes the loop
    (its self-pipe) only when that queue was empty: results that finish while the loop is busy
    ride along with the wake already under way. Every hand-over is a thread woken and a trip back
    through the loop, and those context switches were a quarter of the loop's time with 16 Opus
    sessions; asyncio's executor futures (three callbacks and two futures per call) were another
    tenth.
    """

    def __init__(self, threads: int = DEFAULT_THREADS):
        if threads < 1:
            raise ValueError(f"codec threads must be >= 1, got {threads}")
        self.threads = threads
        self._waiting: Group = []  # batches lanes started in this pass of the loop
        self._inboxes: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(threads)]
        self._done: collections.deque[tuple[Group, list[list[Any]]]] = collections.deque()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._workers = [
            threading.Thread(target=self._work, args=(inbox,), name=f"codec_{k}", daemon=True)
            for k, inbox in enumerate(self._inboxes)
        ]
        for worker in self._workers:
            worker.start()

    def lane(self) -> CodecLane:
        return CodecLane(self)

    def run(self, lane: CodecLane, batch: list[tuple[Job, Done]]) -> None:
        """Code `batch` on a worker, then hand it back to `lane` on the event loop."""
        if not self._waiting:
            loop = asyncio.get_running_loop()
            if self._loop is None:
                self._loop = loop
            elif loop is not self._loop:
                raise RuntimeError("a codec pool serves one event loop")
            loop.call_soon(self._hand_out)
        self._waiting.append((lane, batch))

    def _hand_out(self) -> None:
        waiting, self._waiting = self._waiting, []
        for k in range(min(self.threads, len(waiting))):
            group = waiting[k :: self.threads]
            if self._closed:  # every job gets the error: no lane is left waiting for a batch
                error = RuntimeError("the codec pool is shut down")
                _hand_back(group, [[error] * len(batch) for _, batch in group])
            else:
                self._inboxes[k].put(group)

    def _work(self, inbox: queue.SimpleQueue) -> None:
        while (group := inbox.get()) is not None:
            try:
                results = [_run_all([job for job, _ in batch]) for _, batch in group]
            except BaseException as exc:  # noqa: BLE001 - not a job's own error (those are caught)
                results = [[exc] * len(batch) for _, batch in group]
            self._done.append((group, results))
            if not self._wake_pending:
                self._wake_pending = True
                try:
                    self._loop.call_soon_threadsafe(self._collect)
                except RuntimeError:  # the loop is closed: nobody is waiting for these results
                    return

    def _collect(self) -> None:
        self._wake_pending = False  # before reading: a result added after this wakes the loop again
        while self._done:
            _hand_back(*self._done.popleft())

    def shutdown(self) -> None:
        """Stop the workers once the groups handed to them are coded (their results are handed
        back if the loop still runs); batches handed out later get an error."""
        self._closed = True
        for inbox in self._inboxes:
            inbox.put(None)
        for worker in self._workers:
            worker.join()


class CodecLane:
    """One connection's jobs in one direction, in order. Call from the event loop only."""

    def __init__(self, pool: CodecPool):
        self.pool = pool
        self._queue: collections.deque[tuple[Job, Done]] = collections.deque()
        self._busy = False
        self._idle: asyncio.Event | None = None  # made by `idle`, set whenever the lane runs dry
        self.closed = False

    def submit(self, job: Job, done: Done) -> None:
        """Run `job()` on a worker (None: nothing to run), then `done(result)` on the event loop,
        after every earlier job's `done`. A job that raises hands `done` the exception instead."""
        if self.closed:
            return
        self._queue.append((job, done))
        if not self._busy:
            self._start()

    def close(self) -> None:
        """Drop what has not run; results still coming are not handed over."""
        self.closed = True
        self._queue.clear()
        if self._idle is not None:
            self._idle.set()

    async def idle(self) -> None:
        """Until the lane has run dry (jobs submitted meanwhile included: their results handed
        over too) or is closed: what a client sent just before it left is still carried out."""
        while self._busy and not self.closed:
            if self._idle is None:
                self._idle = asyncio.Event()
            self._idle.clear()
            await self._idle.wait()

    def _start(self) -> None:
        batch = list(self._queue)
        self._queue.clear()
        self._busy = True
        if all(job is None for job, _ in batch):  # nothing to code: hand over now, in order
            self._finish(batch, [None] * len(batch))
            return
        self.pool.run(self, batch)

    def _finish(self, batch: list[tuple[Job, Done]], results: list[Any]) -> None:
        if not self.closed:
            for (_, done), result in zip(batch, results, strict=True):
                try:
                    done(result)
                except Exception:
                    log.exception("a codec result could not be handed over")
        self._busy = False
        if self._queue and not self.closed:
            self._start()
        elif self._idle is not None:
            self._idle.set()


def _hand_back(group: Group, results: list[list[Any]]) -> None:
    """Each lane of a group its batch's results (an error for each job where the worker call itself
    failed), in order."""
    for (lane, batch), batch_results in zip(group, results, strict=True):
        lane._finish(batch, batch_results)
