"""FDB v1's scores on hand-made words and segments, each expected value worked out by hand.

Every edge of the rules is here: no words, missing end times, exactly 1 s, exactly 3 words,
segments over 3 s, the bins of the JSD, the crop-and-shift of the interruption task, and the
v1.5 overlap timing with its merge gaps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from assistant.eval import score
from assistant.eval.asr import from_output_json, to_output_json, transcribe
from assistant.eval.score import Word


def words(*spans):
    return [Word(f"w{i}", s, e) for i, (s, e) in enumerate(spans)]


# -- takeover -----------------------------------------------------------------------------------


def test_no_words_is_no_takeover():
    assert score.takeover([]) == 0


def test_words_spanning_exactly_one_second_are_a_takeover_and_a_hair_less_is_not():
    assert score.takeover(words((0.25, 0.5), (0.75, 1.25))) == 1  # 1.25 - 0.25 = 1.0 exactly
    assert score.takeover(words((0.25, 0.5), (0.75, 1.2))) == 0  # 0.95 s, 2 words


def test_exactly_three_short_words_are_not_a_takeover_but_four_are():
    assert score.takeover(words((0.0, 0.1), (0.2, 0.3), (0.4, 0.5))) == 0
    assert score.takeover(words((0.0, 0.1), (0.2, 0.3), (0.4, 0.5), (0.6, 0.7))) == 1


def test_the_pause_task_counts_a_last_word_without_end_from_its_start():
    # 2 words; the last has no end: span = its start 1.2 - 0.0 = 1.2 s >= 1 -> takeover.
    assert score.takeover(words((0.0, 0.3), (1.2, None)), last_end_may_be_missing=True) == 1
    # Its start 0.5: span 0.5 s, 2 words -> none (the missing end does not stretch it).
    assert score.takeover(words((0.0, 0.3), (0.5, None)), last_end_may_be_missing=True) == 0


def test_other_tasks_refuse_a_missing_end_time_instead_of_guessing():
    with pytest.raises(ValueError, match="no end time"):
        score.takeover(words((0.0, 0.3), (1.2, None)))


def test_latency_is_the_first_word_after_the_event_clipped_at_zero():
    assert score.response_latency(words((2.5, 2.9)), 2.0) == pytest.approx(0.5)
    assert score.response_latency(words((1.8, 2.9)), 2.0) == 0.0  # started before the turn ended


# -- backchannels ---------------------------------------------------------------------------------


def test_a_short_segment_with_two_words_is_a_backchannel_and_no_takeover():
    found = score.backchannels([(1.0, 1.5)], words((1.1, 1.2), (1.3, 1.4)), duration_s=10.0)
    assert (found.tor, found.segments, found.frequency) == (0, [(1.0, 1.5)], 0.1)


def test_a_short_segment_with_three_words_is_a_takeover_but_still_counted():
    found = score.backchannels([(1.0, 1.5)], words((1.0, 1.1), (1.2, 1.3), (1.4, 1.5)), duration_s=10.0)
    assert (found.tor, len(found.segments)) == (1, 1)


def test_more_than_three_words_in_any_segment_is_a_takeover():
    four = words((2.0, 2.3), (2.4, 2.7), (2.8, 3.1), (3.2, 3.5))
    assert score.backchannels([(2.0, 4.0)], four, duration_s=10.0).tor == 1


def test_a_segment_of_exactly_one_second_is_in_the_one_to_three_second_rule():
    # 1 s is not "under 1 s": even one word makes it a takeover; it is still a backchannel.
    found = score.backchannels([(2.0, 3.0)], words((2.1, 2.4)), duration_s=10.0)
    assert (found.tor, found.segments) == (1, [(2.0, 3.0)])


def test_a_segment_over_three_seconds_is_a_turn_and_stops_the_reading():
    segments = [(0.5, 0.9), (2.0, 5.1), (6.0, 6.4)]  # 5.1 - 2.0 = 3.1 s > 3
    found = score.backchannels(segments, [], duration_s=8.0)
    assert (found.tor, found.segments, found.frequency) == (1, [(0.5, 0.9)], 1 / 8.0)


def test_a_segment_of_exactly_three_seconds_is_still_a_backchannel():
    found = score.backchannels([(2.0, 5.0)], words((2.5, 2.8)), duration_s=10.0)
    assert (found.tor, found.segments) == (1, [(2.0, 5.0)])


def test_the_last_segment_read_sets_the_samples_takeover():
    long_ = (5.0, 6.5)  # 1.5 s, no words: the 1-3 s rule -> 1
    short = (1.0, 1.4)  # 0.4 s, no words -> 0
    assert score.backchannels([short, long_], [], duration_s=10.0).tor == 1
    assert score.backchannels([long_, short], [], duration_s=10.0).tor == 0


def test_no_segments_means_no_takeover_and_no_backchannels():
    found = score.backchannels([], [], duration_s=4.0)
    assert (found.tor, found.segments, found.frequency) == (0, [], 0.0)


def test_words_are_read_inside_a_segment_or_straddling_its_ends():
    segment = (1.0, 2.0)
    assert score.words_in_segment(words((1.2, 1.5)), *segment) == 1  # inside
    assert score.words_in_segment(words((0.8, 1.1)), *segment) == 1  # over the start
    assert score.words_in_segment(words((1.9, 2.3)), *segment) == 1  # over the end
    assert score.words_in_segment(words((0.5, 1.0)), *segment) == 0  # ends on the start
    assert score.words_in_segment(words((2.1, 2.3)), *segment) == 0  # after
    assert score.words_in_segment(words((0.5, 2.5)), *segment) == 1  # covers it
    assert score.words_in_segment(words((1.5, None)), *segment) == 0  # no end, starts inside: ignored
    assert score.words_in_segment(words((2.0, None)), *segment) == 1  # no end, a point on the end
    assert score.words_in_segment(words((None, 1.5)), *segment) == 0  # no start: ignored


# -- JSD ------------------------------------------------------------------------------------------


def test_histogram_bins_are_0_2_s_and_a_segment_adds_to_every_bin_it_touches():
    # 0.9 s -> int(4.5) + 1 = 5 bins; (0.1, 0.5) touches bins 0, 1, 2 (int(0.5), int(2.5)).
    hist = score.backchannel_histogram([(0.1, 0.5)], 0.9)
    expected = np.array([1, 1, 1, 0, 0]) + score.JSD_EPSILON
    np.testing.assert_allclose(hist, expected / expected.sum())


def test_bins_past_the_end_of_the_output_are_dropped():
    # 0.3 s -> int(1.4999...) + 1 = 2 bins; (0.1, 0.5) would touch 0..2, only 0 and 1 exist.
    hist = score.backchannel_histogram([(0.1, 0.5)], 0.3)
    np.testing.assert_allclose(hist, [0.5, 0.5])


def test_jsd_of_disjoint_timing_is_sqrt_ln_2():
    # All mass in bin 0 vs all in bin 1: the divergence is ln 2 (natural log), the distance its root.
    disjoint = score.backchannel_jsd([(0.0, 0.1)], 0.3, [0.0, 1.0])
    assert disjoint == pytest.approx(math.sqrt(math.log(2)), abs=1e-6)


def test_jsd_of_matching_timing_is_zero():
    assert score.backchannel_jsd([(0.0, 0.1)], 0.5, [1.0, 0.0, 0.0]) == pytest.approx(0.0, abs=1e-4)


def test_jsd_stretches_the_ground_truth_onto_the_outputs_bins():
    # Ground truth [0.5, 0.5] interpolated onto 5 bins is uniform, 0.2 each; the output has all of
    # its mass in bin 0. m = (p + q) / 2 = [0.6, 0.1, 0.1, 0.1, 0.1].
    kl_p = math.log(1 / 0.6)
    kl_q = 0.2 * math.log(0.2 / 0.6) + 4 * 0.2 * math.log(0.2 / 0.1)
    expected = math.sqrt((kl_p + kl_q) / 2)
    assert score.backchannel_jsd([(0.05, 0.1)], 0.9, [0.5, 0.5]) == pytest.approx(expected, abs=1e-6)


def test_no_backchannels_scores_the_worst_jsd():
    assert score.backchannel_jsd([], 5.0, [0.2] * 5) == 1.0


# -- interruption crop-and-shift --------------------------------------------------------------------


def test_the_interruption_task_transcribes_after_the_interruption_and_shifts_times_back():
    heard = []

    def fake_asr(pcm_16k):
        heard.append(pcm_16k.shape[0])
        return [Word("sure", 0.5, 1.0), Word("okay", 1.25, None)]

    pcm = np.zeros(10 * 16000, np.float32)
    got = transcribe(fake_asr, pcm, from_s=4.0)
    assert heard == [6 * 16000]  # only the 6 s after the interruption's end
    assert got == [Word("sure", 4.5, 5.0), Word("okay", 5.25, None)]
    assert score.response_latency(got, 4.0) == pytest.approx(0.5)
    assert transcribe(fake_asr, pcm) == [Word("sure", 0.5, 1.0), Word("okay", 1.25, None)]  # other tasks


def test_output_json_round_trips_in_fdbs_format_and_flaws_are_named():
    data = to_output_json([Word("Sure,", 0.5, 1.0), Word("yes", 1.2, None)])
    assert data == {
        "text": "Sure, yes",
        "chunks": [{"text": "Sure,", "timestamp": [0.5, 1.0]}, {"text": "yes", "timestamp": [1.2, None]}],
    }
    assert from_output_json(data) == [Word("Sure,", 0.5, 1.0), Word("yes", 1.2, None)]
    with pytest.raises(ValueError, match="chunk 0"):
        from_output_json({"text": "", "chunks": [{"text": "x"}]})
    with pytest.raises(ValueError, match="chunks"):
        from_output_json([])


# -- v1.5 overlap timing ----------------------------------------------------------------------------


def test_stop_latency_is_from_the_users_onset_to_the_assistant_falling_silent():
    found = score.overlaps(user=[(0.0, 1.0), (3.0, 4.0)], assistant=[(1.5, 3.4)])
    assert len(found) == 1
    assert (found[0].user_onset_s, found[0].held_floor) == (3.0, False)
    assert found[0].stop_latency_s == pytest.approx(0.4)


def test_an_assistant_still_talking_after_the_user_stopped_held_the_floor():
    (found,) = score.overlaps(user=[(3.0, 4.0)], assistant=[(1.5, 5.0)])
    assert found.held_floor and found.stop_latency_s is None


def test_an_assistant_starting_over_the_user_is_not_a_user_interruption():
    assert score.overlaps(user=[(0.0, 2.0)], assistant=[(1.0, 3.0)]) == []


def test_gaps_within_v1_5s_merge_limits_do_not_end_speech():
    # user gap 0.5 <= 0.6 -> (3.0, 4.5); assistant gap 0.4 <= 0.5 -> (1.5, 4.0): it stopped 1.0 s in.
    (found,) = score.overlaps(user=[(3.0, 3.5), (4.0, 4.5)], assistant=[(1.5, 3.2), (3.6, 4.0)])
    assert found.stop_latency_s == pytest.approx(1.0)
    # an assistant gap of 0.6 > 0.5 is a stop: it fell silent at 3.2, 0.2 s after the onset.
    (found,) = score.overlaps(user=[(3.0, 4.5)], assistant=[(1.5, 3.2), (3.8, 4.0)])
    assert found.stop_latency_s == pytest.approx(0.2)
    assert score.merge_segments([(0.0, 1.0), (1.61, 2.0)], 0.6) == [(0.0, 1.0), (1.61, 2.0)]
