"""How busy the machine is, for tests that measure real time.

A test that times audio shares this machine with the other test worker and with whatever else runs
on it. When every core is taken, a process that is ready to run waits for one: the server's frame
clock, Chromium's audio, the test's own reader all fall behind, whatever the code under test does.

`Contention` measures that waiting over a stretch of time: the share of it during which at least
one runnable task was kept off a CPU. Linux reports it directly (`/proc/pressure/cpu`, "some");
where that file is missing, the running-task count in `/proc/stat` is sampled instead.

`checked_unless_late` runs a real-time check again only when it failed and a measured delay
explains it (audio that came in late; a box whose cores were all taken, which the test's own
processes add to, so a test that itself grew too heavy fails after its last attempt), after
`wait_for_a_quiet_box`; the check itself is never relaxed, and a session that came in time must
pass at once.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

PRESSURE = Path("/proc/pressure/cpu")
QUIET_SHARE = 0.1  # the box is quiet when runnable tasks waited for a CPU less than this share of a second
BUSY_SHARE = 0.25  # a measurement during which tasks waited for a CPU this much of the time ran on a busy box
QUIET_WAIT_S = 20.0  # the longest a rerun waits for a quiet box before it runs anyway (tests have timeouts)
LATE_ATTEMPTS = 3


def _waiting_s() -> float | None:
    """Seconds during which some runnable task waited for a CPU, since boot; None if not reported."""
    try:
        some = PRESSURE.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(f.split("=") for f in some.split()[1:])
    return int(fields["total"]) / 1e6


def _running_tasks() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("procs_running "):
            return int(line.split()[1])
    return 0


class Contention:
    """`with Contention() as c: ...`, then `c.share`: the share of the block's wall time during
    which some runnable task waited for a CPU (0: never, 1: all along)."""

    def __init__(self, sample_s: float = 0.01):
        self.sample_s = sample_s
        self.share: float | None = None
        self._stop = threading.Event()
        self._samples: list[bool] = []
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> Contention:
        self._t0, self._w0 = time.monotonic(), _waiting_s()
        if self._w0 is None:  # no pressure file: count the tasks running, the sampler's own included
            cores = os.cpu_count() or 1

            def sample() -> None:
                while not self._stop.wait(self.sample_s):
                    self._samples.append(_running_tasks() > cores)

            self._sampler = threading.Thread(target=sample, daemon=True)
            self._sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self.share = sum(self._samples) / len(self._samples) if self._samples else 0.0
        else:
            self.share = min(1.0, (_waiting_s() - self._w0) / elapsed)


def busy_reason(share: float | None) -> str | None:
    """What `checked_unless_late` prints for a measurement made while the box was busy, else None."""
    if share is not None and share >= BUSY_SHARE:
        return f"every core was taken {share:.0%} of the time (runnable tasks waited for a CPU)"
    return None


def wait_for_a_quiet_box(max_s: float = QUIET_WAIT_S, window_s: float = 1.0) -> float:
    """Until a `window_s` stretch passes with runnable tasks waiting for a CPU less than
    `QUIET_SHARE` of it (or `max_s` has gone by): the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        with Contention() as box:
            time.sleep(window_s)
        if box.share < QUIET_SHARE:
            break
    return time.monotonic() - t0


def checked_unless_late(
    attempt, check, late, attempts: int = LATE_ATTEMPTS, settle=wait_for_a_quiet_box
) -> None:
    """`check(attempt())`; when it fails and `late(session)` names a measured delay that explains it
    (audio that came in late, a starved process's clock, a box whose cores were all taken), the
    session is run again once `settle()` has waited for the box to quiet down, at most `attempts`
    times. A session that came in time must pass at once; `check` is never relaxed, and the last
    failure stands."""
    for n in range(1, attempts + 1):
        session = attempt()
        try:
            check(session)
            return
        except AssertionError:
            reason = late(session)
            if reason is None or n == attempts:
                raise
            waited = settle()
            print(
                f"attempt {n}: {reason}; once more"
                + (f" (after {waited:.0f} s for a quiet box)" if waited else "")
            )
