"""The listening tests' own yardsticks, on cases worked out by hand."""

from __future__ import annotations

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


def test_cpu_pressure_reads_as_the_share_of_the_time_tasks_waited(tmp_path, monkeypatch):
    pressure = tmp_path / "cpu"
    monkeypatch.setattr(busy_box, "PRESSURE", pressure)
    pressure.write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\nfull total=0\n")
    with busy_box.Contention() as box:
        time.sleep(0.2)
        pressure.write_text("some avg10=50.00 avg60=0.00 avg300=0.00 total=1150000\nfull total=0\n")
    assert 0.5 < box.share <= 0.75  # 150 ms of waiting in a little over 200 ms
    assert busy_box.busy_reason(box.share) and busy_box.busy_reason(0.1) is None


@pytest.mark.parametrize("running", [1, 3])
def test_without_pressure_more_running_tasks_than_cores_reads_as_contended(running, monkeypatch):
    monkeypatch.setattr(busy_box, "PRESSURE", Path("/nonexistent/pressure"))
    monkeypatch.setattr(busy_box.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(busy_box, "_running_tasks", lambda: running)
    with busy_box.Contention(sample_s=0.01) as box:
        time.sleep(0.2)
    assert box.share == (1.0 if running > 2 else 0.0)


def test_this_kernels_own_counters_read():
    waiting = busy_box._waiting_s()
    assert waiting is None or waiting >= 0
    assert busy_box._running_tasks() >= 1  # this process, at least


def test_a_quiet_box_is_waited_for_no_longer_than_asked(monkeypatch):
    monkeypatch.setattr(busy_box, "QUIET_SHARE", -1.0)  # never quiet
    t0 = time.monotonic()
    waited = busy_box.wait_for_a_quiet_box(max_s=0.5, window_s=0.2)
    assert 0.5 <= waited <= time.monotonic() - t0 < 1.5
