"""The listening tests' own yardsticks, on cases worked out by hand."""

from __future__ import annotations

import pytest
from listening_utils import checked_unless_late, playout_headroom_ms


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

    runs = iter(["late-and-wrong", "right"])
    checked_unless_late(
        lambda: next(runs), failing_when({"late-and-wrong"}), lambda s: "late" if "late" in s else None
    )
    runs = iter(["wrong-in-time", "right"])
    with pytest.raises(AssertionError):  # in time: no second chance
        checked_unless_late(lambda: next(runs), failing_when({"wrong-in-time"}), lambda s: None)
    runs = iter(["late-1", "late-2"])
    with pytest.raises(AssertionError):  # late every time: the last failure stands
        checked_unless_late(
            lambda: next(runs), failing_when({"late-1", "late-2"}), lambda s: "late", attempts=2
        )
