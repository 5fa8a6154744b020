from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from audio_utils import load_wav, speech_dir
from hypothesis import given, settings
from hypothesis import strategies as st

from audio.vad import SoundTrail, StreamingVad, TurnHysteresis, VadConfig, VadEvent

RATE = 24000
BACKENDS = ["webrtc", "silero"]
ONSET_TOLERANCE_MS = 100
END_TOLERANCE_MS = 250
BACKCHANNEL_FILTER_MS = 1000  # the min_speech_ms documented in VadConfig to ignore "mm hmm"


# ---------- pure hysteresis (no model) ----------
# At 1000 Hz one sample is one millisecond, so positions below read as ms.


def _feed(h: TurnHysteresis, pattern: str, frame_ms: int = 10, start: int = 0) -> list[VadEvent]:
    """pattern: one char per frame, '#' voiced, '.' unvoiced."""
    events = []
    for i, c in enumerate(pattern):
        events += h.update(1.0 if c == "#" else 0.0, start + i * frame_ms, frame_ms)
    return events


def _hyst(**kw) -> TurnHysteresis:
    args = dict(
        min_speech_ms=150, min_silence_ms=500, prefix_padding_ms=300, threshold=0.5, max_onset_gap_ms=100
    )
    args.update(kw)
    return TurnHysteresis(1000, **args)


def _summary(events):
    return [(e.type, e.sample) for e in events]


def test_short_blips_do_not_start_a_turn():
    h = _hyst()
    assert _feed(h, "." * 20 + "#" * 14 + "." * 50 + "#" * 5 + "." * 100) == []
    assert not h.speaking


def test_turn_starts_at_the_onset_once_min_speech_is_reached():
    h = _hyst()
    events = []
    for i, c in enumerate("." * 20 + "#" * 40):
        got = h.update(1.0 if c == "#" else 0.0, i * 10, 10)
        if got:
            events.append((i, got))
    # Confirmed on the 15th voiced frame (150 ms of voice), but the event points back to the onset.
    assert len(events) == 1 and events[0][0] == 20 + 14
    ev = events[0][1][0]
    assert (ev.type, ev.sample, ev.at_ms, ev.audio_start_sample) == ("speech_started", 200, 200.0, 0)
    assert h.speaking


def test_prefix_padding_is_subtracted_and_clamped_at_zero():
    h = _hyst()
    (started,) = _feed(h, "." * 50 + "#" * 20)
    assert started.sample == 500 and started.audio_start_sample == 200
    h = _hyst()
    (started,) = _feed(h, "." * 10 + "#" * 20)
    assert started.audio_start_sample == 0


def test_silence_shorter_than_min_silence_does_not_split_a_turn():
    h = _hyst()
    events = _feed(h, "#" * 30 + "." * 49 + "#" * 30 + "." * 49 + "#" * 10 + "." * 60)
    assert _summary(events) == [("speech_started", 0), ("speech_stopped", 1680)]


def test_silence_of_min_silence_ends_the_turn_at_the_last_voiced_sample():
    h = _hyst()
    events = []
    for i, c in enumerate("." * 5 + "#" * 30 + "." * 60):
        got = h.update(1.0 if c == "#" else 0.0, i * 10, 10)
        if got:
            events.append((i, got[0]))
    (i_start, started), (i_stop, stopped) = events
    assert (stopped.type, stopped.sample, stopped.at_ms) == ("speech_stopped", 350, 350.0)
    assert i_stop == 35 + 49  # emitted on the frame that completes 500 ms of silence
    assert stopped.audio_start_sample == started.audio_start_sample == 0  # onset 50 - 300, clamped
    assert not h.speaking


def test_two_turns_separated_by_long_silence():
    h = _hyst()
    events = _feed(h, "#" * 20 + "." * 70 + "#" * 20 + "." * 70)
    assert _summary(events) == [
        ("speech_started", 0),
        ("speech_stopped", 200),
        ("speech_started", 900),
        ("speech_stopped", 1100),
    ]
    assert events[3].audio_start_sample == 600


def test_short_gaps_at_the_onset_are_bridged_but_not_counted():
    # 100 ms voice, 60 ms gap (a stop consonant), then voice: the onset is the first voiced frame.
    h = _hyst()
    events = _feed(h, "." * 10 + "#" * 10 + "." * 6 + "#" * 10 + "." * 60)
    assert _summary(events)[0] == ("speech_started", 100)
    # Gaps are not counted as speech: 7 + 7 voiced frames are still short of 150 ms.
    h = _hyst()
    assert _feed(h, "#" * 7 + "." * 9 + "#" * 7 + "." * 60) == []


def test_a_gap_longer_than_the_onset_tolerance_restarts_the_candidate():
    h = _hyst()
    events = _feed(h, "#" * 10 + "." * 11 + "#" * 20 + "." * 60)
    assert _summary(events)[0] == ("speech_started", 210)


def test_blips_never_accumulate_into_a_turn():
    h = _hyst()
    assert _feed(h, ("#" * 5 + "." * 20) * 40) == []


def test_min_speech_zero_starts_on_the_first_voiced_frame():
    h = _hyst(min_speech_ms=0)
    assert _summary(_feed(h, "..#")) == [("speech_started", 20)]


def test_probability_threshold_is_inclusive():
    h = _hyst(min_speech_ms=10, threshold=0.7)
    assert h.update(0.69, 0, 10) == []
    assert _summary(h.update(0.7, 10, 10)) == [("speech_started", 10)]


def test_frames_out_of_order_are_rejected():
    h = _hyst()
    h.update(1.0, 0, 10)
    with pytest.raises(ValueError, match="overlaps"):
        h.update(1.0, 5, 10)
    with pytest.raises(ValueError, match="frame_len"):
        h.update(1.0, 10, 0)


def test_reset_forgets_a_turn_in_progress():
    h = _hyst()
    _feed(h, "#" * 20)
    assert h.speaking
    h.reset()
    assert not h.speaking
    assert _summary(_feed(h, "#" * 20)) == [("speech_started", 0)]


@settings(max_examples=200, deadline=None)
@given(
    pattern=st.lists(st.sampled_from("#."), min_size=1, max_size=300).map("".join),
    min_speech=st.sampled_from([0, 30, 150, 400]),
    min_silence=st.sampled_from([20, 100, 500]),
)
def test_turn_invariants_and_frame_size_independence(pattern, min_speech, min_silence):
    kw = dict(min_speech_ms=min_speech, min_silence_ms=min_silence)
    events = _feed(_hyst(**kw), pattern, frame_ms=20)
    # Each frame split in two equal halves describes the same audio, so it must give the same turns.
    finer = _feed(_hyst(**kw), "".join(c * 2 for c in pattern), frame_ms=10)
    assert _summary(finer) == _summary(events)
    voiced = np.repeat(np.array([c == "#" for c in pattern]), 20)
    for i, ev in enumerate(events):
        assert ev.type == ("speech_started" if i % 2 == 0 else "speech_stopped")
        if ev.type == "speech_started":
            assert voiced[ev.sample] and (ev.sample == 0 or not voiced[ev.sample - 1])
            assert voiced[ev.sample :].sum() >= min_speech
        else:
            assert ev.sample > events[i - 1].sample and voiced[ev.sample - 1]
            assert not voiced[ev.sample : ev.sample + min_silence].any()
            assert len(voiced) - ev.sample >= min_silence
            assert ev.audio_start_sample == events[i - 1].audio_start_sample
    # A turn still open at the end means speech was heard within the last min_silence.
    if len(events) % 2:
        assert voiced[-min_silence:].any()


# ---------- real speech, both backends ----------


def _true_segments(x: np.ndarray, rate: int, merge_ms: int = 500) -> list[tuple[int, int]]:
    """Speech (onset, end) samples by energy: 10 ms windows above -40 dBFS, gaps < merge_ms joined."""
    win = rate // 100
    n = len(x) // win
    rms = np.sqrt((x[: n * win].reshape(n, win).astype(np.float64) ** 2).mean(axis=1))
    active = np.flatnonzero(rms > 0.01)
    segments: list[list[int]] = []
    for i in active:
        if segments and (i - segments[-1][1]) * 10 < merge_ms:
            segments[-1][1] = i + 1
        else:
            segments.append([i, i + 1])
    return [(a * win, b * win) for a, b in segments]


def _run(vad: StreamingVad, x: np.ndarray, chunk_sizes) -> list[VadEvent]:
    events, pos, i = [], 0, 0
    while pos < len(x):
        n = chunk_sizes[i % len(chunk_sizes)]
        events += vad.push(x[pos : pos + n])
        pos += n
        i += 1
    assert vad.position == len(x)
    return events


def _assert_matches_truth(events: list[VadEvent], truth: list[tuple[int, int]], rate: int = RATE):
    got = [(events[i].sample, events[i + 1].sample) for i in range(0, len(events) - 1, 2)]
    assert [e.type for e in events] == ["speech_started", "speech_stopped"] * len(truth), (events, truth)
    for (on, end), (t_on, t_end) in zip(got, truth, strict=True):
        assert abs(on - t_on) * 1000 / rate <= ONSET_TOLERANCE_MS, (on, t_on)
        assert abs(end - t_end) * 1000 / rate <= END_TOLERANCE_MS, (end, t_end)


def _with_trailing_silence(x: np.ndarray, seconds: float = 1.0) -> np.ndarray:
    return np.concatenate([x, np.zeros(int(seconds * RATE), dtype=np.float32)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_conversation_turns_match_the_truth(backend):
    x, rate = load_wav("conversation.wav")
    assert rate == RATE
    truth = _true_segments(x, rate)
    # The file is q1, 3 s silence, interrupt, 1 s silence: two turns, the second at 7.2 s.
    assert len(truth) == 2 and abs(truth[1][0] / rate - 7.2) < 0.05
    vad = StreamingVad(VadConfig(backend=backend), sample_rate_hz=rate)
    events = _run(vad, x, [1920])
    _assert_matches_truth(events, truth)
    assert not vad.speaking


@pytest.mark.parametrize("backend", BACKENDS)
def test_turns_in_a_noisy_mix_with_unaligned_onsets_match_the_truth(backend):
    # Onsets that fall mid-frame, at 1.3 s + 7 samples and later, over a -50 dBFS noise floor.
    parts = [load_wav(n)[0] for n in ("q2.wav", "interrupt.wav", "q1.wav")]
    gaps = [int(1.3 * RATE) + 7, int(1.7 * RATE) + 3, int(2.1 * RATE) + 11, RATE]
    pieces, truth, pos = [], [], 0
    for gap, part in zip(gaps, parts + [None], strict=True):
        pieces.append(np.zeros(gap, dtype=np.float32))
        pos += gap
        if part is not None:
            (on, end), *_ = _true_segments(part, RATE, merge_ms=10_000)
            truth.append((pos + on, pos + end))
            pieces.append(part)
            pos += len(part)
    x = np.concatenate(pieces)
    x = x + np.random.default_rng(0).normal(0, 10 ** (-50 / 20), len(x)).astype(np.float32)
    events = _run(StreamingVad(VadConfig(backend=backend)), x, [480, 1920, 333])
    _assert_matches_truth(events, truth)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunk_size_does_not_change_the_events(backend):
    x, _ = load_wav("conversation.wav")
    reference = _run(StreamingVad(VadConfig(backend=backend)), x, [1920])
    rng = np.random.default_rng(7)
    for sizes in ([1], [0, 7, 4000, 1], list(rng.integers(0, 3000, 50))):
        if sizes == [1]:
            got = _run(StreamingVad(VadConfig(backend=backend)), x[: 3 * RATE], sizes)
            assert got == [e for e in reference if e.sample < 2 * RATE]  # sample-by-sample is slow: 3 s
        else:
            assert _run(StreamingVad(VadConfig(backend=backend)), x, sizes) == reference


@pytest.mark.parametrize("backend", BACKENDS)
def test_backchannel_starts_a_turn_by_default_but_not_with_raised_min_speech(backend):
    x = _with_trailing_silence(load_wav("backchannel.wav")[0])
    default = StreamingVad(VadConfig(backend=backend)).push(x)
    assert [e.type for e in default] == ["speech_started", "speech_stopped"]
    strict = StreamingVad(VadConfig(backend=backend, min_speech_ms=BACKCHANNEL_FILTER_MS))
    assert strict.push(x) == []
    assert not strict.speaking
    # The raised setting still hears a real question.
    q2 = _with_trailing_silence(load_wav("q2.wav")[0])
    events = StreamingVad(VadConfig(backend=backend, min_speech_ms=BACKCHANNEL_FILTER_MS)).push(q2)
    assert [e.type for e in events] == ["speech_started", "speech_stopped"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_input_rates_give_the_same_turns(backend):
    from audio.resample import resample

    x, _ = load_wav("conversation.wav")
    ref = StreamingVad(VadConfig(backend=backend)).push(x)
    for rate in (16000, 48000):
        events = StreamingVad(VadConfig(backend=backend), sample_rate_hz=rate).push(resample(x, RATE, rate))
        assert [e.type for e in events] == [e.type for e in ref]
        for got, want in zip(events, ref, strict=True):
            assert abs(got.at_ms - want.at_ms) <= 40  # one classifier frame
            assert got.sample == round(got.at_ms * rate / 1000)


@pytest.mark.parametrize("backend", BACKENDS)
def test_speaking_probability_and_reset(backend):
    x, _ = load_wav("q1.wav")
    vad = StreamingVad(VadConfig(backend=backend))
    assert vad.push(x[: RATE // 2])[0].type == "speech_started"
    assert vad.speaking and vad.probability > 0.5 and vad.position == RATE // 2
    assert vad.cpu_ms_per_frame > 0
    vad.reset()
    assert not vad.speaking and vad.position == 0
    vad.push(np.zeros(RATE, dtype=np.float32))
    assert vad.probability < 0.5 and not vad.speaking
    # After reset the timeline restarts at 0: q1 now begins 1 s in.
    (started,) = vad.push(x[: RATE // 2])
    assert abs(started.sample - RATE) < 0.1 * RATE


def _state(v: StreamingVad) -> tuple:
    return (v.position, v.speaking, v.probability, v.voiced_end, v.quiet_since)


@pytest.mark.parametrize("backend", BACKENDS)
def test_analysed_on_a_worker_thread_the_turns_and_pauses_are_the_same(backend):
    # A server analyses a chunk on its codec worker and applies the result on the event loop.
    x, _ = load_wav("interrupt.wav")
    here, there = StreamingVad(VadConfig(backend=backend)), StreamingVad(VadConfig(backend=backend))
    chunks = [x[pos : pos + 480] for pos in range(0, len(x), 480)]
    with ThreadPoolExecutor(2) as workers:
        analyses = [workers.submit(there.front.analyse, chunk).result() for chunk in chunks]
    for chunk, analysis in zip(chunks, analyses, strict=True):
        assert there.apply(analysis) == here.push(chunk)
        assert _state(there) == _state(here)
    assert there.cpu_ms_per_frame > 0
    other = StreamingVad(VadConfig(backend=backend))
    with pytest.raises(ValueError, match="its own front end"):
        other.apply(there.front.analyse(x[:480]))


def _pauses(x: np.ndarray, backend: str, chunk: int = 480) -> list[tuple[int, int, int]]:
    """(position, quiet_since, voiced_end) after each chunk inside a turn."""
    vad, out = StreamingVad(VadConfig(backend=backend)), []
    for pos in range(0, len(x), chunk):
        vad.push(x[pos : pos + chunk])
        if vad.speaking:
            out.append((vad.position, vad.quiet_since, vad.voiced_end))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["q1.wav", "q2.wav", "interrupt.wav"])
def test_a_pause_is_timed_from_where_the_sound_ended(backend, name):
    clip, _ = load_wav(name)
    x = np.concatenate([np.zeros(RATE // 2, np.float32), clip, np.zeros(RATE, np.float32)])
    sound_end = RATE // 2 + np.flatnonzero(np.abs(clip) > 300 / 32768)[-1] + 1  # -40 dBFS, as heard
    pauses = _pauses(x, backend)
    # 200 ms after the sound stopped, the user is known to be 200 ms into a pause (a block of
    # 10 ms and a chunk of 20 ms late at most), while the classifier still hears voice up to 100
    # ms on (webrtc): timed from its voiced end, the same pause would be known that much later.
    at = next(p for p in pauses if p[0] >= sound_end + RATE // 5)
    assert at[0] - at[1] >= RATE // 5 - RATE * 30 // 1000, (at, sound_end)
    assert sound_end <= at[1] <= sound_end + RATE * 30 // 1000  # to 10 ms blocks (and the lead bound)
    assert all(v - RATE // 10 <= q <= v for _, q, v in pauses)  # at most 100 ms before the classifier
    # Inside the speech, the short gaps between words are still speech to it.
    assert all(p - q < RATE // 2 for p, q, _ in pauses if p < sound_end)


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_speech_after_a_loud_click_is_not_taken_for_a_pause(backend):
    clip, _ = load_wav("q1.wav")
    x = np.concatenate([np.zeros(RATE // 2, np.float32), clip * 0.1, np.zeros(RATE, np.float32)])
    x[RATE // 2 + RATE // 4 : RATE // 2 + RATE // 4 + 240] = 0.9  # a click 40 dB above the speech
    sound_end = RATE // 2 + np.flatnonzero(np.abs(clip * 0.1) > 300 / 32768)[-1] + 1
    pauses = _pauses(x, backend)
    # The trail stops below the click's bar, but a pause is never heard more than 100 ms before the
    # classifier's end, so none of 150 ms is found while the classifier hears voice.
    assert all(v - RATE // 10 <= q <= v for _, q, v in pauses)
    assert not [p for p, q, v in pauses if p - q >= RATE * 150 // 1000 and p - v < RATE * 50 // 1000]
    assert any(p - q >= RATE * 150 // 1000 for p, q, _ in pauses if p > sound_end)


@pytest.mark.parametrize("backend", BACKENDS)
def test_over_a_noise_floor_near_the_speech_the_pause_is_the_classifiers(backend):
    clip, _ = load_wav("q2.wav")
    x = np.concatenate([np.zeros(RATE // 2, np.float32), clip, np.zeros(RATE, np.float32)])
    x = x + np.random.default_rng(1).normal(0, 10 ** (-40 / 20), len(x)).astype(np.float32)
    pauses = _pauses(x, backend)
    assert pauses and all(q == v for _, q, v in pauses[len(pauses) // 2 :])


def test_the_sound_trail_follows_whole_blocks_whatever_the_chunks_and_forgets_a_cough():
    rng = np.random.default_rng(2)
    speech = rng.normal(0, 0.02, RATE).astype(np.float32)  # -34 dBFS
    x = np.concatenate([np.full(240, 0.9, np.float32), np.zeros(RATE * 4, np.float32), speech])
    x = np.concatenate([x, np.zeros(RATE // 2, np.float32)])
    ends = []
    for sizes in ([len(x)], [1, 239, 7, 4800], [333]):
        trail, pos, i = SoundTrail(RATE), 0, 0
        while pos < len(x):
            trail.push(x[pos : pos + sizes[i % len(sizes)]])
            pos += sizes[i % len(sizes)]
            i += 1
        ends.append(trail.end)
    assert len(set(ends)) == 1
    # The cough (-1 dBFS) came 4 s before speech 33 dB quieter: by then the bar has come down.
    assert len(x) - RATE // 2 - 240 * 5 <= ends[0] <= len(x) - RATE // 2


def test_silero_sessions_do_not_share_state():
    x, _ = load_wav("q1.wav")
    a, b = StreamingVad(VadConfig(backend="silero")), StreamingVad(VadConfig(backend="silero"))
    a.push(x)  # a is mid-speech; b has heard only silence
    b.push(np.zeros(len(x), dtype=np.float32))
    assert a.probability != b.probability and not b.speaking


def test_bad_config_and_input_are_clear_errors():
    with pytest.raises(ValueError, match="backend"):
        VadConfig(backend="energy")
    with pytest.raises(ValueError, match="aggressiveness"):
        VadConfig(aggressiveness=4)
    with pytest.raises(ValueError, match="threshold"):
        VadConfig(threshold=1.5)
    with pytest.raises(ValueError, match="min_silence_ms"):
        VadConfig(min_silence_ms=-1)
    with pytest.raises(ValueError, match="number"):
        VadConfig(min_speech_ms="long")
    with pytest.raises(ValueError, match="aggressiveness"):
        VadConfig(aggressiveness=1.5)
    assert VadConfig(aggressiveness=3.0).aggressiveness == 3  # JSON numbers may arrive as floats
    with pytest.raises(ValueError, match="sample_rate_hz"):
        StreamingVad(sample_rate_hz=22050)
    with pytest.raises(ValueError, match="1-D"):
        StreamingVad().push(np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="float samples"):
        StreamingVad().push(np.zeros(10, dtype=np.int16))


def test_bench_prints_cost_and_accuracy_for_both_backends(capsys):
    import argparse

    from bench import vad as bench_vad

    wav = speech_dir() / "conversation.wav"
    parser = argparse.ArgumentParser()
    bench_vad.add_arguments(parser)
    assert bench_vad.run(parser.parse_args(["--wav", str(wav), "--repeat", "1", "--no-jit"])) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    for backend in BACKENDS:
        cost = float(rows[backend].split()[1])
        assert 0 < cost < 80  # CPU ms per 80 ms frame: a number, and real-time on any machine
        assert "expected" not in rows[backend]  # found the same number of turns as the reference
