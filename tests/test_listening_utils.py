"""The listening tests' own yardsticks, on cases worked out by hand."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import busy_box
import pytest
from busy_box import checked_unless_late
from listening_utils import playout_headroom_ms


def test_audio_in_time_leaves_the_buffer_its_start_target_less_one_piece():
    # 80 ms pieces every 80 ms: a 100 ms buffer starts on the second (160 ms queued), and holds
    # 80 ms just before each later piece comes in.
    pieces = [(i * 80.0, 80.0) for i in range(20)]
    assert playout_headroom_ms(pieces, 100) == 80.0


def test_a_piece_held_up_longer_than_the_buffer_holds_would_leave_any_player_dry():
    pieces = [(i * 80.0, 80.0) for i in range(10)] + [(i * 80.0 + 120, 80.0) for i in range(10, 20)]
    assert playout_headroom_ms(pieces, 100) == -40.0
    # Held up less than the buffer holds: no player need pause.
    pieces = [(i * 80.0, 80.0) for i in range(10)] + [(i * 80.0 + 60, 80.0) for i in range(10, 20)]
    assert playout_headroom_ms(pieces, 100) == 20.0


def test_a_buffer_that_never_filled_never_started():
    assert playout_headroom_ms([(0.0, 80.0)], 100) == float("inf")


def test_only_a_session_that_failed_and_came_in_late_is_run_again():
    def failing_when(bad):
        def check(session):
            assert session not in bad

        return check

    settled: list[int] = []

    def settle() -> float:
        settled.append(1)
        return 0.0

    runs = iter(["late-and-wrong", "right"])
    checked_unless_late(
        lambda: next(runs),
        failing_when({"late-and-wrong"}),
        lambda s: "late" if "late" in s else None,
        settle=settle,
    )
    assert settled == [1]  # the rerun waited for a quiet box first
    runs = iter(["wrong-in-time", "right"])
    with pytest.raises(AssertionError):  # in time: no second chance
        checked_unless_late(
            lambda: next(runs), failing_when({"wrong-in-time"}), lambda s: None, settle=settle
        )
    assert settled == [1]
    runs = iter(["late-1", "late-2"])
    with pytest.raises(AssertionError):  # late every time: the last failure stands
        checked_unless_late(
            lambda: next(runs),
            failing_when({"late-1", "late-2"}),
            lambda s: "late",
            attempts=2,
            settle=settle,
        )


def busy_processes(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


@pytest.mark.parametrize("source", ["pressure", "running tasks"])
def test_a_box_with_more_busy_processes_than_cores_reads_as_contended(source, monkeypatch):
    if source == "running tasks":
        monkeypatch.setattr(busy_box, "PRESSURE", Path("/nonexistent/pressure"))
    elif busy_box._waiting_s() is None:
        pytest.skip("this kernel does not report CPU pressure")
    hogs = busy_processes((os.cpu_count() or 1) + 1)
    try:
        time.sleep(0.2)  # they are running
        with busy_box.Contention() as box:
            time.sleep(1.0)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert box.share > 0.5, box.share


def test_a_quiet_box_is_waited_for_no_longer_than_asked(monkeypatch):
    monkeypatch.setattr(busy_box, "QUIET_SHARE", -1.0)  # never quiet
    t0 = time.monotonic()
    waited = busy_box.wait_for_a_quiet_box(max_s=0.5, window_s=0.2)
    assert 0.5 <= waited <= time.monotonic() - t0 < 1.5
