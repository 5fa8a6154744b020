"""`assistant bench latency` runs end to end and prints its figures (it never fails on speed): two
A/A'/B triples on the tiny random Moshi over /ws, greedy, where B answers differently only after the
noise was sent, and a bad set-up is refused. (That A equals A' whatever the jitter is checked
without a clock in tests/test_frame_phase.py; on a busy machine a late step can change one run.)"""

from __future__ import annotations

import re
import subprocess
import sys

from server_utils import REPO


def bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "assistant", "bench", "latency", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_answer_changes_after_the_change_was_sent():
    out = bench("--endpoint", "ws", "--triples", "2", "--threads", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    (row,) = [line.split() for line in out.stdout.splitlines() if line.startswith("ours /ws")]
    delay, step = float(row[3]), float(row[5])
    assert 0 < step < delay < 1000  # the answer changed after the change was sent, and after a step
    assert re.fullmatch(r"[012]/2", row[-2])  # A == A' counted
    p50, p95 = map(float, row[-3].split("/"))  # the server's own frame wait, from its stats events
    assert 0 <= p50 <= p95 <= 80
    assert re.search(r"our server: \d+ skipped ticks", out.stdout)


def test_a_bad_setup_is_refused():
    out = bench("--endpoint", "live", "--audio-format", "opus", timeout=60)
    assert out.returncode == 2 and "--audio-format opus" in out.stderr
    out = bench("--seconds", "1", timeout=60)
    assert out.returncode == 2 and "--seconds" in out.stderr


def test_sessions_at_once_each_get_their_own_row():
    out = bench("--endpoint", "ws", "--triples", "1", "--sessions", "2", "--threads", "1", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("ours /ws")]
    assert [re.match(r"ours /ws( #\d|, all)", r).group(1) for r in rows] == [" #1", " #2", ", all"], rows
    phases = [float(re.search(r"\+(\d+) ms", r).group(1)) for r in rows[:2]]
    assert all(0 <= p <= 80 for p in phases)  # each at its own place on the 80 ms tick grid
    assert "2 sessions at once" in out.stdout
    out = bench("--endpoint", "chat", "--sessions", "2", timeout=60)
    assert out.returncode == 2 and "--sessions" in out.stderr
