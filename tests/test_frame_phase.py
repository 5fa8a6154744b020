"""Frame-phase alignment: a session's frames end where its last chunk is in just before a tick.

The pure policy (FramePhase), the input buffer's aligned take, and the conversation fed by a
virtual clock: chunks arrive at their own phase (with jitter) against 80 ms ticks, and each tick
takes one frame. What a user would notice is measured: how long the newest audio a frame carries
waited for its tick, and the gaps (underruns) the model hears in the middle of speech.
"""

from __future__ import annotations

import numpy as np
import pytest
from audio_utils import load_wav

from assistant.conversation import Conversation
from assistant.conversation.frame_phase import FramePhase
from assistant.conversation.input_buffer import FRAME_OK, FRAME_PADDED, InputBuffer

F = 1920
RATE = 24000
PERIOD = 0.08


def steady_arrivals(phase_s: float, chunk: int, count: int, jitter_s: float = 0.0, seed: int = 0):
    """(end position, arrival time) of `count` chunks of a real-time client whose stream starts at
    `phase_s` (chunk k is in when its last sample would have been recorded), plus jitter."""
    rng = np.random.default_rng(seed)
    return [
        ((k + 1) * chunk, phase_s + (k + 1) * chunk / RATE + float(rng.uniform(0, jitter_s)))
        for k in range(count)
    ]


def placed_frames(arrivals, ticks) -> list[tuple[int, int]]:
    """(frame end, the shift that placed it) of each tick from the first with input: a FramePhase
    told of the `arrivals` as they come, each frame a whole one after the last before its shift."""
    phase = FramePhase()
    frames, natural, i = [], 0, 0
    for tick in ticks:
        while i < len(arrivals) and arrivals[i][1] <= tick:
            phase.arrived(*arrivals[i])
            i += 1
        if i == 0:
            continue
        shift = phase.shift(natural + F, tick)
        natural += F + shift
        frames.append((natural, shift))
    return frames


# -- FramePhase (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_ms", [10, 20, 40])
def test_each_frame_ends_at_the_last_chunk_in_just_before_its_tick(chunk_ms):
    chunk = RATE * chunk_ms // 1000
    for phase_ms in range(0, 80, 3):
        phase = FramePhase(margin_s=0.003)
        arrivals = steady_arrivals(phase_ms / 1000, chunk, round(1.3 * RATE / chunk))
        for end, at in arrivals:
            phase.arrived(end, at)
        arrived_at = dict(arrivals)
        tick = 1.2  # with chunks arrived past it
        end = phase.frame_end(tick)
        wait = tick - arrived_at[end]
        assert 0.003 - 1e-9 <= wait < 0.003 + chunk / RATE + 1e-9, (phase_ms, wait)


@pytest.mark.parametrize("chunk_ms", [20, 80])
def test_a_lone_sessions_tick_moves_to_its_phase_by_less_than_a_chunk(chunk_ms):
    """The move a clock serving one session alone is asked for: sooner (only while the session is
    held, before its first step) to 2 ms past the margin after the last chunk end in, when the tick
    would wait 6 ms or more for nothing; later by up to 10 ms when the next chunk end would miss
    it. Judged from the phase alone: the same for every tick of the grid."""
    chunk = RATE * chunk_ms // 1000
    phase = FramePhase()
    for end, at in steady_arrivals(0.0213, chunk, 30):  # chunk ends at 21.3 ms past each chunk
        phase.arrived(end, at)
    step = chunk_ms / 1000
    for lag_ms in np.arange(0.25, chunk_ms, 0.5):  # the tick's lag behind a chunk end
        tick = 0.0213 + 0.96 + lag_ms / 1000  # 0.96 s: a whole number of chunks of either size
        slack = (lag_ms / 1000 - 0.003) % step  # since the last chunk end in 3 ms before the tick
        sooner = phase.tick_move(tick, sooner=True)
        later = phase.tick_move(tick, sooner=False)
        assert sooner == (pytest.approx(0.002 - slack) if slack >= 0.006 - 1e-9 else 0.0), lag_ms
        if step - slack <= 0.010:  # the next chunk end would miss the margin by this much
            assert later == pytest.approx(step - slack + 0.002), lag_ms
        else:
            assert later == 0.0, lag_ms
        for move in (sooner, later):
            assert abs(move) < step + 0.002
        # Any tick a period later asks the same: the phase decides, not how much is queued.
        assert phase.tick_move(tick + 0.08 * 7, sooner=True) == pytest.approx(sooner, abs=1e-9)
    assert FramePhase().tick_move(1.0, sooner=True) is None  # nothing to go by yet


def test_a_frame_that_would_end_too_late_moves_earlier_and_a_backlog_later():
    phase = FramePhase(margin_s=0.003, hysteresis_s=0.006)
    for end, at in steady_arrivals(-0.005, 480, 100):  # chunk k in at (k + 1) * 20 ms - 5 ms
        phase.arrived(end, at)
    tick = 2.0
    assert phase.frame_end(tick) == round(2.0 * RATE)  # in 5 ms before the tick: the margin is 3
    assert phase.shift(round(2.02 * RATE), tick) == -480  # in after the tick: pad a chunk in front
    assert phase.shift(round(2.0 * RATE), tick) == 0  # where it should be
    assert phase.shift(round(1.98 * RATE), tick) == 0  # waits 25 ms: within margin + hysteresis + chunk
    assert phase.shift(round(1.96 * RATE), tick) == 960  # waits 45 ms: drop the backlog up to 2.0 s


def test_a_whole_frame_of_backlog_goes_even_where_the_tick_is_close_behind_the_chunks():
    # 80 ms chunks in 5 ms before each tick (where a clock following a lone client puts it): one
    # chunk that came late had its frame padded, and a whole frame waits behind it. Within margin +
    # hysteresis of the tick, a single chunk more would be jitter and stay; a whole frame is a
    # backlog, and goes (while the user is silent: the input buffer's rule).
    phase = FramePhase(margin_s=0.003, hysteresis_s=0.006)
    for end, at in steady_arrivals(-0.005, F, 30):
        phase.arrived(end, at)
    tick = 2.0
    assert phase.frame_end(tick) == round(2.0 * RATE)
    assert phase.shift(round(2.0 * RATE), tick) == 0
    assert phase.shift(round(1.92 * RATE), tick) == F  # a frame behind: it waited 85 ms, and goes


def test_packets_that_come_together_are_one_chunk_due_when_its_end_came():
    # An Opus client sending its four 20 ms packets at once, every 80 ms, 30 ms after each tick.
    # Taken one by one, the first packet of each burst, in 60 ms after its own end, said every chunk
    # end is due 60 ms later than it is: each frame waited 60 ms past its burst for a tick.
    phase = FramePhase(margin_s=0.003, hysteresis_s=0.006)
    burst_at = [0.03 + k * PERIOD for k in range(30)]
    for k, at in enumerate(burst_at):
        for piece in range(4):  # every other burst read 3 ms apart, as on a busy server
            phase.arrived(k * F + (piece + 1) * 480, at - (3 - piece) * 0.003 * (k % 2))
    assert phase.chunk_samples == F
    tick = 30 * PERIOD
    end = phase.frame_end(tick)
    assert end == 30 * F  # the last burst, in 50 ms before the tick
    assert tick - burst_at[end // F - 1] == pytest.approx(0.05)
    # A clock serving this session alone comes to 5 ms after the bursts (2 ms past the 3 ms margin).
    assert phase.tick_move(tick, sooner=True) == pytest.approx(-0.045, abs=1e-3)
    # Packets that come one by one, 20 ms apart, stay chunks of their own; and where one in five
    # comes 15 ms late, right before the next, its lateness still counts: each is judged by itself.
    steady = FramePhase()
    for k, (end, at) in enumerate(steady_arrivals(0.0, 480, 60)):
        steady.arrived(end, at + (0.015 if k % 5 == 2 else 0.0))
    assert steady.chunk_samples == 480
    assert steady.late_offset() == pytest.approx(0.015)  # the 90th percentile: a fifth came late


@pytest.mark.parametrize(("first", "usual"), [(464, 480), (1904, 1920), (3824, 3840)])
def test_a_first_chunk_a_decoders_filter_shortened_still_places_the_first_frame(first, usual):
    # The first 20 ms Opus packet decodes to 464 samples at 24 kHz (the resampler keeps 16 back),
    # and a session's first frame is placed on its first chunk alone: a size that divided no frame
    # left the tick where it was, up to 80 ms after the client's audio, for the whole session.
    phase = FramePhase()
    phase.arrived(first, 0.5)
    assert phase.chunk_samples == usual
    assert phase.tick_move(0.5 + 0.015, sooner=True) == pytest.approx(-0.010)  # to 5 ms after it
    for odd in (360, 456, 504, 1000):  # 15 ms, or a whole millisecond off: sizes of their own
        other = FramePhase()
        other.arrived(odd, 0.5)
        assert other.chunk_samples == odd


@pytest.mark.parametrize("first_tick_ms", [30.5, 31.5, 33.0, 35.0])
def test_ticks_that_come_while_a_burst_is_half_read_still_end_frames_where_bursts_end(first_tick_ms):
    # Four 20 ms packets sent at once, read over 6 ms (a busy server), with up to 1 ms of jitter:
    # the first ticks come while a burst is only partly in (the grid the newest chunk's end gives
    # is then mid-burst), then the clock moves to 45 ms past the grid. Every frame still ends
    # where a burst ends, and once placed the boundary stays there.
    rng = np.random.default_rng(int(first_tick_ms * 10))
    arrivals = []
    for k in range(120):
        at = 0.030 + k * PERIOD + float(rng.uniform(0, 0.001))
        arrivals += [(k * F + (piece + 1) * 480, at + piece * 0.002) for piece in range(4)]
    ticks = [t * PERIOD + (first_tick_ms / 1000 if t <= 3 else 0.045) for t in range(1, 120)]
    frames = placed_frames(arrivals, ticks)
    assert all(end % F == 0 for end, _ in frames), frames  # on a burst's end
    shifts = [shift for _, shift in frames]
    assert shifts[4:].count(0) == len(shifts) - 4, shifts  # placed, then where it is


def test_jitter_does_not_make_the_boundary_hop():
    arrivals = steady_arrivals(0.0137, 480, 400, jitter_s=0.002, seed=3)
    shifts = [shift for _, shift in placed_frames(arrivals, [k * PERIOD for k in range(1, 95)])]
    assert shifts[0] != 0  # the first frame is placed
    assert shifts[1:].count(0) == len(shifts) - 1  # then stays where it is


# -- InputBuffer: the aligned take -------------------------------------------------------------


def test_aligned_take_pads_in_front_or_drops_queued_silence_only_while_silent():
    buf = InputBuffer(frame_samples=4)
    buf.push(np.arange(1, 7, dtype=np.float32))
    frame, status = buf.take(user_silent=True, shift=-1)  # end one sample earlier: 1 zero + 3 samples
    assert status == FRAME_PADDED and frame.tolist() == [0, 1, 2, 3]
    buf.push(np.arange(7, 15, dtype=np.float32))  # queued: 4..14
    frame, status = buf.take(user_silent=False, shift=2)  # speaking: the boundary stays
    assert status == FRAME_OK and frame.tolist() == [4, 5, 6, 7]
    frame, status = buf.take(user_silent=False, shift=-2)
    assert status == FRAME_OK and frame.tolist() == [8, 9, 10, 11]
    buf.push(np.full(4, 0.5, dtype=np.float32))  # queued: 12, 13, 14 (loud), then 0.5 x 4
    frame, status = buf.take(user_silent=True, shift=3)  # silent, but not quiet: kept
    assert frame.tolist() == [12, 13, 14, 0.5]
    buf.push(np.zeros(3, dtype=np.float32))
    frame, status = buf.take(user_silent=True, shift=2)  # quiet enough? 0.5 is not: kept
    assert frame.tolist() == [0.5, 0.5, 0.5, 0]
    buf.push(np.arange(1, 5, dtype=np.float32))  # queued: 0, 0, 1..4
    frame, status = buf.take(user_silent=True, shift=2)  # quiet: dropped, the frame ends later
    assert status == FRAME_OK and frame.tolist() == [1, 2, 3, 4]


# -- the conversation against a virtual tick grid ------------------------------------------------


def run_session(
    phase_s: float,
    chunk_ms: int,
    jitter_s: float,
    aligned: bool,
    seed: int = 0,
    seconds: float = 6.0,
    decode_s: float = 0.0,
):
    """Stream q1 (speech) in chunks arriving at `phase_s` against ticks at k * 80 ms, the session
    started as the frame loop starts it; return (the wait of each frame's newest sample for its tick,
    in s, while the user spoke; underruns; the frames the model heard; the conversation).
    decode_s: each chunk reaches the conversation this long after it arrived (an Opus session's
    packets are decoded on a worker first), with its arrival time."""
    pcm, rate = load_wav("q1.wav")
    assert rate == RATE
    chunk = RATE * chunk_ms // 1000
    count = min(len(pcm), round(seconds * RATE)) // chunk
    now = [0.0]
    conversation = Conversation("s", RATE, clock=lambda: now[0])
    arrivals = steady_arrivals(phase_s, chunk, count, jitter_s, seed)
    events = [(at + decode_s, 0, k) for k, (_, at) in enumerate(arrivals)]
    events += [(k * PERIOD, 1, k) for k in range(1, int(arrivals[-1][1] / PERIOD))]
    waits, frames = [], []
    for at, kind, k in sorted(events):
        now[0] = at
        if kind == 0:
            conversation.push_samples(pcm[k * chunk : (k + 1) * chunk], arrived_at=arrivals[k][1])
            continue
        if aligned:
            conversation.tick_due(at)
        if not frames and conversation.frames_queued() < 1:
            continue  # the frame loop starts a session once a whole frame of its input is in
        speaking = conversation.turns.user_speaking
        frame = conversation.take_frame()
        frames.append(
            np.zeros(F, np.float32).tobytes() if frame is None else frame.tobytes()
        )  # as the model hears it
        heard = conversation.samples_in - conversation._input.level  # input position the frame ends at
        if speaking and heard:
            waits.append(at - arrivals[(heard - 1) // chunk][1])
    return np.array(waits), conversation.underruns, frames, conversation


@pytest.mark.parametrize("chunk_ms", [10, 20])
def test_speech_in_small_chunks_waits_about_a_chunk_and_is_never_cut(chunk_ms):
    """At every phase, chunks with 2 ms of jitter: the frame's newest audio waited less than a
    chunk plus the margin, and the model heard no gap in the middle of speech."""
    for phase_ms in range(0, 80, 7):
        waits, underruns, _, _ = run_session(phase_ms / 1000, chunk_ms, 0.002, aligned=True)
        assert underruns == 0, phase_ms
        assert waits.max() < chunk_ms / 1000 + 0.003 + 0.002 + 1e-9, (phase_ms, waits.max())


def test_the_session_reports_the_wait_its_frames_had_for_their_ticks():
    """What the server tells an operator (session stats, the frame_wait_ms histogram) is the wait
    measured above: under a chunk plus the margin with frame phase, most of a frame without it."""
    for phase_ms in (5, 41, 77):
        waits, _, _, conversation = run_session(phase_ms / 1000, 20, 0.0, aligned=True)
        reported = conversation.stats()["frame_wait_ms"]
        assert reported["max"] < 20 + 3 + 0.1, (phase_ms, reported)
        assert reported["p50"] == pytest.approx(np.median(waits) * 1000, abs=1.0), (phase_ms, reported)
    *_, conversation = run_session(0.001, 80, 0.0, aligned=False)  # 80 ms chunks 1 ms after each tick
    assert conversation.stats()["frame_wait_ms"]["p50"] > 75  # wait a whole period


def test_the_model_hears_the_same_frames_whatever_the_jitter():
    """Two runs of one recording from one phase, with different 2 ms jitter (greedy decoding then
    gives the same answer): the same frames, even where chunks land on the ticks. Frames that end
    at whatever is in at the tick race those chunks, and the runs hear different frames."""
    for phase_ms in (79.0, 59.0, 39.5, 19.5, 13.0):  # chunks due 1 ms before a tick, +0-2 ms
        runs = [run_session(phase_ms / 1000, 20, 0.002, aligned=True, seed=seed)[2] for seed in (1, 2)]
        assert runs[0] == runs[1], phase_ms
    races = [run_session(0.079, 20, 0.002, aligned=False, seed=seed)[2] for seed in (1, 2)]
    assert races[0] != races[1]


def test_audio_decoded_after_it_arrived_is_placed_and_timed_by_its_arrival():
    """The frames' wait an operator sees counts from when the client's audio reached the server,
    the time it then spent being decoded included; the model hears the same frames."""
    _, _, frames, conversation = run_session(0.041, 20, 0.0, aligned=True)
    _, _, decoded_frames, decoded = run_session(0.041, 20, 0.0, aligned=True, decode_s=0.004)
    assert decoded_frames == frames
    waits, decoded_waits = conversation.stats()["frame_wait_ms"], decoded.stats()["frame_wait_ms"]
    assert decoded_waits == waits, (decoded_waits, waits)
