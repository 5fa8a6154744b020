"""Full-Duplex-Bench v1's scores, as pure functions of words, speech segments and event times.

Every threshold and rule here is FDB v1's, edges included, so numbers are comparable with its
published table: a takeover needs words spanning at least 1 s or more than 3 words; backchannel
segments are cut by Silero VAD and read with FDB's own word-overlap rule; the JSD is a
Jensen-Shannon *distance* over 0.2 s bins. The timing of overlaps (who stops when both talk) is
FDB v1.5's. Inputs are plain numbers (seconds) so each rule is checked by hand in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TAKEOVER_MIN_S = 1.0  # words spanning this long are a takeover
TAKEOVER_MAX_WORDS = 3  # more words than this are a takeover
BACKCHANNEL_MAX_S = 3.0  # a speech segment longer than this is a turn, not a backchannel
BACKCHANNEL_SHORT_S = 1.0  # under this, up to BACKCHANNEL_SHORT_WORDS words is still a backchannel
BACKCHANNEL_SHORT_WORDS = 2
JSD_BIN_S = 0.2
JSD_EPSILON = 1e-10
USER_MERGE_GAP_S = 0.6  # FDB v1.5: user speech segments closer than this are one
MODEL_MERGE_GAP_S = 0.5  # FDB v1.5: the same for the model's


@dataclass(frozen=True)
class Word:
    """One word of output.json: `{"text": w, "timestamp": [start, end]}`; either time may be null."""

    text: str
    start: float | None
    end: float | None


Segment = tuple[float, float]  # (start_s, end_s)


def takeover(words: Sequence[Word], *, last_end_may_be_missing: bool = False) -> int:
    """1 when the assistant took the floor: its words span >= 1 s or number more than 3, else 0.

    The rule looks at all of the output's words, not a window. last_end_may_be_missing: the pause
    task's rule, where a last word without an end time counts from its start; elsewhere FDB has no
    rule for it, so a missing time is an error rather than a guess.
    """
    if not words:
        return 0
    first, last = words[0], words[-1]
    end = last.end
    if end is None and last_end_may_be_missing:
        end = last.start
    if first.start is None or end is None:
        raise ValueError(
            "the first word has no start time" if first.start is None else "the last word has no end time"
        )
    duration = end - first.start
    return int(duration >= TAKEOVER_MIN_S or len(words) > TAKEOVER_MAX_WORDS)


def response_latency(words: Sequence[Word], event_s: float) -> float:
    """Seconds from the event (end of the user's turn or interruption) to the first word, >= 0."""
    if not words or words[0].start is None:
        raise ValueError("there is no first word with a start time to time the response from")
    return max(0.0, words[0].start - event_s)


def words_in_segment(words: Sequence[Word], start_s: float, end_s: float) -> int:
    """How many words FDB's backchannel rule reads in a speech segment.

    A word counts when it lies inside the segment or straddles either of its ends. A word without
    a start is ignored; one without an end is ignored unless it starts at or after the segment's
    end, where it counts as a point (so only a point exactly on the end is read).
    """
    count = 0
    for word in words:
        w_start, w_end = word.start, word.end
        if w_start is None or (w_end is None and w_start < end_s):
            continue
        if w_end is None:
            w_end = w_start
        inside = w_start >= start_s and w_end <= end_s
        over_end = w_start <= end_s and w_end > end_s
        over_start = w_start <= start_s and w_end > start_s
        count += inside or over_end or over_start
    return count


@dataclass(frozen=True)
class Backchannels:
    """One sample of the backchannel task: its takeover and the segments counted as backchannels."""

    tor: int
    segments: list[Segment]
    frequency: float  # backchannels per second of output


def backchannels(segments: Sequence[Segment], words: Sequence[Word], duration_s: float) -> Backchannels:
    """FDB v1's backchannel reading of one output, segment by segment in order.

    A segment over 3 s is the assistant taking the turn: TOR 1, and reading stops. Any shorter
    segment counts as a backchannel, and sets TOR by its words: more than 3 -> 1; under 1 s with
    at most 2 -> 0; otherwise 1. The sample's TOR is the one set by the last segment read.
    """
    if duration_s <= 0:
        raise ValueError(f"the output lasts {duration_s} s; it needs a positive duration")
    tor = 0
    counted: list[Segment] = []
    for start_s, end_s in segments:
        duration = end_s - start_s
        if duration > BACKCHANNEL_MAX_S:
            tor = 1
            break
        n_words = words_in_segment(words, start_s, end_s)
        if n_words > TAKEOVER_MAX_WORDS:
            tor = 1
        elif duration < BACKCHANNEL_SHORT_S:
            tor = int(n_words > BACKCHANNEL_SHORT_WORDS)
        else:
            tor = 1
        counted.append((start_s, end_s))
    return Backchannels(tor=tor, segments=counted, frequency=len(counted) / duration_s)


def jensen_shannon_distance(p: np.ndarray, q: np.ndarray) -> float:
    """sqrt of the Jensen-Shannon divergence (natural log) of two histograms, each normalised first."""
    p = np.asarray(p, dtype=np.float64) / np.sum(p)
    q = np.asarray(q, dtype=np.float64) / np.sum(q)
    m = (p + q) / 2.0

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        a_pos = a > 0
        return float(np.sum(a[a_pos] * np.log(a[a_pos] / b[a_pos])))

    return math.sqrt(max(0.0, (kl(p, m) + kl(q, m)) / 2.0))


def backchannel_histogram(segments: Sequence[Segment], duration_s: float) -> np.ndarray:
    """Where backchannels fall: 0.2 s bins over the output, each segment adding 1 to every bin it
    touches (first and last included), plus epsilon so no bin is empty, normalised to sum 1."""
    bins = np.zeros(int(duration_s / JSD_BIN_S) + 1, dtype=np.float64)
    for start_s, end_s in segments:
        first, last = int(start_s / JSD_BIN_S), int(end_s / JSD_BIN_S)
        bins[first : min(last, bins.size - 1) + 1] += 1
    bins += JSD_EPSILON
    return bins / bins.sum()


def backchannel_jsd(segments: Sequence[Segment], duration_s: float, ground_truth: Sequence[float]) -> float:
    """How far the backchannels' timing is from the human listeners': 0 (same) .. 1 (none at all).

    ground_truth: the sample's distribution from FDB's `icc_gt_distribution.json`, stretched
    linearly onto this output's bins.
    """
    if not segments:
        return 1.0
    if len(ground_truth) == 0:
        raise ValueError("the ground-truth distribution is empty")
    predicted = backchannel_histogram(segments, duration_s)
    truth = np.interp(
        np.linspace(0.0, 1.0, predicted.size),
        np.linspace(0.0, 1.0, len(ground_truth)),
        np.asarray(ground_truth, dtype=np.float64),
    )
    return jensen_shannon_distance(predicted, truth)


# -- FDB v1.5 timing of overlaps ---------------------------------------------------------------


def merge_segments(segments: Sequence[Segment], max_gap_s: float) -> list[Segment]:
    """Join segments (in time order) whose gap is at most max_gap_s, as FDB v1.5 does before timing."""
    merged: list[Segment] = []
    for start_s, end_s in segments:
        if merged and start_s - merged[-1][1] <= max_gap_s:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end_s))
        else:
            merged.append((start_s, end_s))
    return merged


@dataclass(frozen=True)
class Overlap:
    """The user starting to talk while the assistant talks.

    stop_latency_s: from the user's onset to the assistant falling silent (the overlap's length,
        as FDB v1.5 times it); None when the assistant held the floor, still talking after the
        user had finished.
    """

    user_onset_s: float
    overlap_end_s: float
    held_floor: bool

    @property
    def stop_latency_s(self) -> float | None:
        return None if self.held_floor else self.overlap_end_s - self.user_onset_s


def overlaps(user: Sequence[Segment], assistant: Sequence[Segment]) -> list[Overlap]:
    """Every user onset inside the assistant's speech, with how that overlap ended.

    Both sides are merged first with v1.5's gaps (0.6 s user, 0.5 s assistant), so a pause between
    words is not a stop. The overlap is the intersection of the two segments.
    """
    found = []
    for u_start, u_end in merge_segments(user, USER_MERGE_GAP_S):
        for a_start, a_end in merge_segments(assistant, MODEL_MERGE_GAP_S):
            if a_start <= u_start < a_end:
                found.append(Overlap(u_start, min(u_end, a_end), held_floor=a_end > u_end))
    return found


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None
