"""`assistant bench latency` runs end to end and prints its figures (it never fails on speed): an
A/A'/B triple on the tiny random Moshi over /ws, greedy, where B answers differently only after the
noise was sent; a row per session when several run at once; and a bad set-up is refused. (That A
equals A' whatever the jitter is checked without a clock in tests/test_frame_phase.py; on a busy
machine a late step can change one run.)"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
from server_utils import REPO

F = 1920


def bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "assistant", "bench", "latency", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_each_frame_the_engine_heard_is_found_in_what_the_client_sent():
    from bench.latency import heard_frame_ends

    rng = np.random.default_rng(0)
    sent = rng.integers(-3000, 3000, F * 20).astype(np.int16)
    sent[F * 5 : F * 6] = 0  # the client's own digital silence
    pad, inserted = 700, 300  # silence the server put in front of the first frame, and mid-stream
    cut = F * 12 - pad
    heard = np.concatenate(
        [
            np.zeros(pad, np.int16),
            sent[:cut],
            np.zeros(inserted, np.int16),
            sent[cut : F * 19 - pad - inserted],
        ]
    )
    ends = heard_frame_ends(heard, sent)
    expected = [(k + 1) * F - pad - (inserted if (k + 1) * F > F * 12 else 0) for k in range(len(ends))]
    assert len(ends) == 19
    assert [e for e, x in zip(ends, expected, strict=True) if e != x] == [None]  # the silent frame: unknown
    assert ends[5] is None


def test_each_steps_audio_is_found_among_the_realtime_deltas_the_client_received():
    import base64

    from bench.latency import SessionRun, step_arrivals

    rng = np.random.default_rng(1)
    said = rng.integers(-3000, 3000, F * 6).astype(np.int16)  # the recording's assistant channel
    said[F * 5 : F * 6] = 0  # a silent frame cannot be told from another

    def delta(first: int, last: int) -> bytes:
        return base64.b64encode(said[first * F : (last + 1) * F].tobytes())

    # Frame 1 alone, frames 2-3 held and sent together, frame 4, the silent frame 5.
    run = SessionRun(
        outputs=[delta(1, 1), delta(2, 3), delta(4, 4), delta(5, 5)], received_at=[1.0, 2.0, 3.0, 4.0]
    )
    assert step_arrivals(run, said, "realtime", opus=False) == {1: 1.0, 3: 2.0, 4: 3.0}
    ws = SessionRun(outputs=[b""] * 8, received_at=[float(t) for t in range(8)])
    assert step_arrivals(ws, said, "ws", opus=True) == {0: 0.0, 1: 4.0}  # four packets a step
    assert step_arrivals(ws, said, "chat", opus=False) == {k: float(k) for k in range(8)}  # a page a step


def test_a_bad_setup_is_refused():
    out = bench("--endpoint", "live", "--audio-format", "opus", timeout=60)
    assert out.returncode == 2 and "--audio-format opus" in out.stderr
    out = bench("--seconds", "1", timeout=60)
    assert out.returncode == 2 and "--seconds" in out.stderr


def test_the_answer_changes_after_the_change_was_sent():
    out = bench("--endpoint", "ws", "--triples", "1", "--threads", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    (row,) = [line.split() for line in out.stdout.splitlines() if line.startswith("ours /ws")]
    delay, step = float(row[3]), float(row[5])
    assert 0 < step < delay < 1000  # the answer changed after the change was sent, and after a step
    assert re.fullmatch(r"[01]/1", row[-2])  # A == A' counted
    p50, p95 = map(float, row[-4].split("/"))  # the server's own frame wait, from its stats events
    assert 0 <= p50 <= p95 <= 80
    # Every step's wait beyond compute as the client saw it (the recording tells which frame each
    # step heard): a step matched to the wrong frame would be a whole 80 ms off.
    p50, p95 = map(float, row[-3].split("/"))
    assert -step < p50 <= p95 and p50 < 60
    assert re.search(r"our server: \d+ skipped ticks", out.stdout)


def test_sessions_at_once_each_get_their_own_row():
    # The silence engine: rows and tick-grid places need no model (it never reacts to the noise).
    out = bench("--endpoint", "ws", "--triples", "1", "--sessions", "2", "--backend", "silence", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("ours /ws")]
    assert [re.match(r"ours /ws( #\d|, all)", r).group(1) for r in rows] == [" #1", " #2", ", all"], rows
    phases = [float(re.search(r"\+(\d+) ms", r).group(1)) for r in rows[:2]]
    assert all(0 <= p <= 80 for p in phases)  # each at its own place on the 80 ms tick grid
    assert all("no triple reacted (1/1 A==A')" in r for r in rows[:2]), rows
    assert "2 sessions at once" in out.stdout
    out = bench("--endpoint", "chat", "--sessions", "2", timeout=60)
    assert out.returncode == 2 and "--sessions" in out.stderr
