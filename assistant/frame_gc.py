"""Python's cycle collector, run between frames instead of wherever an allocation happens to trip it.

CPython collects when allocations cross a threshold, inside whatever code is running at that
moment. On a server that has just seen a burst of connections (each one's objects end up in
reference cycles: exceptions holding frames, the web server's request/protocol pairs), a pass over
the oldest generation takes tens of milliseconds and lands in the middle of a tick or of an audio
write: a gap every live session hears. `FrameGarbageCollector` turns automatic collection off and
runs the interpreter's own generational policy (its thresholds, read at start) right after a tick's
output has gone to the writers, where the frame's remaining time absorbs it.
"""

from __future__ import annotations

import gc
import time


class FrameGarbageCollector:
    def __init__(self) -> None:
        self.thresholds = gc.get_threshold()
        self.collections = [0, 0, 0]  # per generation, since start()
        self.max_ms = 0.0  # the longest collection
        self._was_enabled = False

    def start(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()

    def stop(self) -> None:
        if self._was_enabled:
            gc.enable()

    def collect_if_due(self) -> int | None:
        """Collect the generation the interpreter would have collected by now, if any; returns it."""
        c0, c1, c2 = gc.get_count()
        t0, t1, t2 = self.thresholds
        if t0 == 0 or c0 <= t0:  # threshold 0: collection switched off by the user
            return None
        generation = 2 if (c1 >= t1 and c2 >= t2) else 1 if c1 >= t1 else 0
        t = time.perf_counter()
        gc.collect(generation)
        self.max_ms = max(self.max_ms, (time.perf_counter() - t) * 1000.0)
        self.collections[generation] += 1
        return generation
