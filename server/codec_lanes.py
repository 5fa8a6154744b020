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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger("assistant.server")

DEFAULT_THREADS = 2

Job = Callable[[], Any] | None  # None: nothing to compute, the result is None
Done = Callable[[Any], None]  # gets the job's result, or the exception it raised


def _run_all(jobs: list[Job]) -> list[Any]:
    results = []
    for job in jobs:
        try:
            results.append(None if job is None else job())
        except Exception as exc:  # handed to its own callback: one bad packet fails only itself
            results.append(exc)
    return results


def _run_group(batches: list[list[Job]]) -> list[list[Any]]:
    return [_run_all(jobs) for jobs in batches]


class CodecPool:
    """The worker threads every lane shares.

    The batches lanes start in one pass of the event loop (every session's frame at a tick, the
    packets of all the sockets one poll found readable) go to the workers together: one worker call
    per thread, not per lane. Each hand-over wakes a thread and comes back through the loop's
    self-pipe, and those context switches were a quarter of the loop's time with 16 Opus sessions.
    """

    def __init__(self, threads: int = DEFAULT_THREADS):
        if threads < 1:
            raise ValueError(f"codec threads must be >= 1, got {threads}")
        self.threads = threads
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="codec")
        self._waiting: list[tuple[CodecLane, list[tuple[Job, Done]]]] = []

    def lane(self) -> CodecLane:
        return CodecLane(self)

    def run(self, lane: CodecLane, batch: list[tuple[Job, Done]]) -> None:
        """Code `batch` on a worker, then hand it back to `lane` on the event loop."""
        if not self._waiting:
            asyncio.get_running_loop().call_soon(self._hand_out)
        self._waiting.append((lane, batch))

    def _hand_out(self) -> None:
        waiting, self._waiting = self._waiting, []
        loop = asyncio.get_running_loop()
        for k in range(min(self.threads, len(waiting))):
            group = waiting[k :: self.threads]
            try:
                future = loop.run_in_executor(
                    self.executor, _run_group, [[job for job, _ in batch] for _, batch in group]
                )
            except RuntimeError as exc:  # the pool was shut down: every job gets the error
                _hand_back(group, exc)
            else:
                future.add_done_callback(lambda f, group=group: _hand_back(group, f))

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


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


def _hand_back(
    group: list[tuple[CodecLane, list[tuple[Job, Done]]]], done: asyncio.Future | BaseException
) -> None:
    """Each lane of a group its results, or, where the worker call itself failed (cancelled, the
    pool shut down), the error for each of its jobs: no lane is left waiting for a batch."""
    try:
        if isinstance(done, BaseException):
            raise done
        results = done.result()
    except BaseException as exc:  # noqa: BLE001 - handed to the jobs' callbacks, as a job's own error is
        results = [[exc] * len(batch) for _, batch in group]
    for (lane, batch), batch_results in zip(group, results, strict=True):
        lane._finish(batch, batch_results)
