"""The conversation core without sockets: turn-taking state machine, input buffering, barge-in with
cut text, holds, latencies and limits. Every call's events are what it returns."""

from __future__ import annotations

import numpy as np
import pytest
from audio_utils import load_wav

from assistant.conversation import (
    AssistantSpeechStarted,
    AudioOut,
    BargeIn,
    CaptionUtterance,
    Conversation,
    ConversationLimits,
    ConversationOptions,
    InputSpeechStarted,
    InputSpeechStopped,
    PlaybackClear,
    SessionEnded,
    SessionReady,
    SessionUpdated,
    SetEngineOptions,
    SetEngineSilent,
    Stats,
    UserTranscript,
    UserTranscriptDelta,
)
from assistant.conversation.input_buffer import FRAME_OK, FRAME_PADDED, FRAME_UNDERRUN, InputBuffer
from assistant.conversation.turns import (
    ASSISTANT_SPEAKING,
    LISTENING,
    USER_BARGING_IN,
    AssistantHeld,
    BargeInDetected,
    StretchEnded,
    StretchStarted,
    TurnTaking,
)
from assistant.engine import FRAME_SAMPLES, SlotOptions

MS = 24  # samples per ms at 24 kHz
STARTED, ENDED, BARGE_IN = StretchStarted(), StretchEnded(), BargeInDetected()
HELD, RELEASED = AssistantHeld(True), AssistantHeld(False)


# -- TurnTaking (pure) ------------------------------------------------------------------------


def test_assistant_stretch_starts_and_ends_after_hangover():
    tt = TurnTaking(min_interrupt_samples=100 * MS, hangover_frames=2)
    assert tt.assistant_frame(True, 0) == [STARTED]
    assert tt.state == ASSISTANT_SPEAKING
    assert tt.assistant_frame(False, 0) == []
    assert tt.assistant_frame(False, 0) == []
    assert tt.assistant_frame(True, 0) == []  # a short pause stays inside the stretch
    assert [tt.assistant_frame(False, 0) for _ in range(3)] == [[], [], [ENDED]]
    assert tt.state == LISTENING


@pytest.mark.parametrize("policy, expected", [("model", [BARGE_IN]), ("vad", [BARGE_IN, HELD])])
def test_barge_in_needs_min_interrupt_of_overlapping_speech(policy, expected):
    tt = TurnTaking(barge_in=policy, min_interrupt_samples=120 * MS)
    tt.assistant_frame(True, 0)
    assert tt.user_speech_started(onset_sample=1000 * MS, now_sample=1100 * MS) == []  # 100 ms: not yet
    assert tt.user_input(1119 * MS) == []
    assert tt.user_input(1120 * MS) == expected
    assert tt.state == USER_BARGING_IN
    assert tt.user_input(1500 * MS) == []  # one barge-in per overlap
    assert tt.user_speech_stopped() == ([RELEASED] if policy == "vad" else [])
    assert not tt.held


def test_no_barge_in_while_the_assistant_is_quiet():
    tt = TurnTaking(barge_in="vad", min_interrupt_samples=0)
    assert tt.user_speech_started(0, 5000 * MS) == []
    assert tt.user_speech_stopped() == []
    assert tt.state == LISTENING


def test_assistant_starting_over_the_user_counts_overlap_from_its_start():
    tt = TurnTaking(barge_in="vad", min_interrupt_samples=200 * MS)
    tt.user_speech_started(0, 1000 * MS)  # the user has talked for a second already
    assert tt.assistant_frame(True, 1000 * MS) == [STARTED]  # overlap only just began
    assert tt.user_input(1150 * MS) == []
    assert tt.user_input(1200 * MS) == [BARGE_IN, HELD]


def test_after_barge_in_user_stop_returns_to_listening_once_assistant_is_silent():
    tt = TurnTaking(barge_in="vad", min_interrupt_samples=0, hangover_frames=0)
    tt.assistant_frame(True, 0)
    tt.user_speech_started(0, 10)
    assert tt.state == USER_BARGING_IN
    assert tt.assistant_frame(False, 20) == [ENDED]
    assert tt.state == USER_BARGING_IN  # still the user's floor
    tt.user_speech_stopped()
    assert tt.state == LISTENING


def test_a_host_may_hold_the_assistant_until_the_user_stops_under_either_policy():
    tt = TurnTaking(barge_in="model", min_interrupt_samples=0)
    assert tt.hold_until_user_stops() == []  # nobody is speaking: nothing to wait for
    tt.user_speech_started(0, 100 * MS)
    assert tt.hold_until_user_stops() == [HELD]
    assert tt.hold_until_user_stops() == []  # one hold at a time
    assert tt.user_speech_stopped() == [RELEASED]
    tt.user_speech_started(0, 2000 * MS)
    tt.hold_until_user_stops()
    assert tt.release() == [RELEASED] and tt.release() == []
    assert tt.user_speech_stopped() == []


# -- InputBuffer (pure) -----------------------------------------------------------------------


def test_input_buffer_keeps_every_sample_in_order_while_the_user_speaks():
    buf = InputBuffer(frame_samples=4, max_backlog_frames=3)
    stream = np.arange(1, 11, dtype=np.float32)
    for chunk in np.split(stream, [3, 4, 9]):
        buf.push(chunk)
    got = [buf.take(user_silent=False) for _ in range(4)]
    assert [s for _, s in got] == [FRAME_OK, FRAME_OK, FRAME_UNDERRUN, FRAME_UNDERRUN]
    np.testing.assert_array_equal(np.concatenate([f for f, _ in got[:2]]), stream[:8])
    # Late input is taken whole behind zeros, so it does not wait a frame behind inserted silence.
    np.testing.assert_array_equal(got[2][0], [0, 0, 9, 10])
    assert got[3][0] is None and buf.level == 0


def test_input_buffer_bounds_the_backlog_by_dropping_the_oldest():
    buf = InputBuffer(frame_samples=4, max_backlog_frames=2, max_chunk_samples=40)
    assert buf.push(np.arange(3, dtype=np.float32)) == 0
    assert buf.push(np.arange(3, 6, dtype=np.float32)) == 0
    assert buf.push(np.arange(6, 9, dtype=np.float32)) == 1  # 9 queued, 8 allowed
    frame, _ = buf.take(user_silent=False)
    np.testing.assert_array_equal(frame, [1, 2, 3, 4])
    # One big chunk is kept whole (plus a frame of what came before), up to max_chunk_samples.
    assert buf.push(np.arange(100, 120, dtype=np.float32)) == 0
    assert buf.level == 24
    assert buf.push(np.arange(200, dtype=np.float32)) == 24 + 200 - 44
    assert buf.level == 44


def test_input_buffer_pads_a_short_buffer_while_the_user_is_silent_without_an_underrun():
    buf = InputBuffer(frame_samples=4)
    buf.push(np.array([1, 2, 3], dtype=np.float32))
    frame, status = buf.take(user_silent=True)
    assert status == FRAME_PADDED
    np.testing.assert_array_equal(frame, [0, 1, 2, 3])
    assert buf.level == 0
    assert buf.take(user_silent=True) == (None, FRAME_UNDERRUN)


def test_input_buffer_trims_queued_silence_only_when_allowed():
    buf = InputBuffer(frame_samples=4)
    buf.push(np.arange(10, dtype=np.float32))
    frame, _ = buf.take(user_silent=True, may_trim=False)
    np.testing.assert_array_equal(frame, [0, 1, 2, 3])  # the engine has not heard the end of turn yet
    frame, _ = buf.take(user_silent=True, may_trim=True)
    np.testing.assert_array_equal(frame, [6, 7, 8, 9])  # older silence dropped: newest audio
    assert buf.level == 0


def test_input_buffer_drops_a_quiet_backlog_but_never_sound():
    def backlog():
        buf = InputBuffer(frame_samples=8)
        buf.push(np.zeros(12, dtype=np.float32))  # 4 quiet samples of backlog beyond a frame
        buf.push(np.arange(1, 5, dtype=np.float32) / 10)
        return buf

    buf = backlog()
    buf.take(user_silent=False)
    assert buf.level == 8  # inside a turn (even its closing silence) nothing is dropped
    buf = backlog()
    frame, _ = buf.take(user_silent=True)
    # While the user is silent the quiet backlog goes, the sound does not.
    np.testing.assert_allclose(frame, [0, 0, 0, 0, 0.1, 0.2, 0.3, 0.4])
    assert buf.level == 0
    buf.push(np.full(20, 0.5, dtype=np.float32))
    buf.take(user_silent=True)
    assert buf.level == 12  # a loud backlog is kept: only the hard bound drops sound


def test_barge_in_needs_the_user_voiced_not_just_inside_a_turn():
    tt = TurnTaking(barge_in="vad", min_interrupt_samples=100 * MS)
    tt.user_speech_started(0, 1000 * MS)
    tt.user_input(1500 * MS, voiced=False)  # the closing silence of the user's turn
    # The assistant answers in that silence: not an interruption, however long it lasts.
    assert tt.assistant_frame(True, 1500 * MS) == [STARTED]
    assert tt.user_input(1800 * MS, voiced=False) == []
    assert tt.state == ASSISTANT_SPEAKING
    # The user speaks again over it: a barge-in.
    assert tt.user_input(1820 * MS, voiced=True) == [BARGE_IN, HELD]


# -- Session with the real VAD on test speech --------------------------------------------------


class Harness:
    """Drives a Conversation like the frame clock would, on a simulated clock: 20 ms chunks, 80 ms
    ticks; collects what every call returns, and what it asks of the engine slot."""

    def __init__(self, rate=24000, **kwargs):
        self.now = 0.0
        self.events: list = []
        self.engine_silent: list[bool] = []  # SetEngineSilent requests, in order
        self.session = Conversation("s1", rate, clock=lambda: self.now, **kwargs)
        self.take(self.session.start())
        self.rate = rate
        self.reply: list[tuple[bool, str]] = []  # what the "engine" says in coming frames
        self.answer_turns = False

    def take(self, events: list) -> list:
        for event in events:
            if isinstance(event, SetEngineSilent):
                self.engine_silent.append(event.silent)
            else:
                self.events.append(event)
        return events

    def run(self, pcm: np.ndarray, chunk_ms: int = 20) -> None:
        chunk = self.rate * chunk_ms // 1000
        per_tick = 80 // chunk_ms
        pcm16 = (np.clip(pcm, -1, 1) * 32767).astype("<i2")
        for i, start in enumerate(range(0, len(pcm16), chunk)):
            self.now += chunk_ms / 1000
            self.take(self.session.push_audio(pcm16[start : start + chunk].tobytes()))
            if (i + 1) % per_tick == 0:
                self.tick()

    def tick(self) -> None:
        if self.answer_turns and self.of(InputSpeechStopped) and not self.reply:
            self.reply = [(True, " Hello")] * 5
            self.answer_turns = False
        self.session.take_frame()
        speaking, text = self.reply.pop(0) if self.reply else (False, "")
        pcm = np.full(FRAME_SAMPLES, 0.1 if speaking else 0.0, dtype=np.float32)
        self.take(self.session.deliver(pcm, text, speaking, step_ms=1.0))

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def silence(seconds: float, rate: int = 24000) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.float32)


def test_session_reports_user_turns_and_streams_audio_every_frame():
    q1, _ = load_wav("q1.wav")
    h = Harness()
    assert isinstance(h.events[0], SessionReady) and h.events[0].sample_rate == 24000
    h.run(np.concatenate([silence(0.5), q1, silence(1.0)]))
    started, stopped = h.of(InputSpeechStarted), h.of(InputSpeechStopped)
    assert len(started) == 1 and len(stopped) == 1
    onset = np.flatnonzero(np.abs(q1) > 0.02)[0] / 24 + 500
    assert abs(started[0].at_ms - onset) < 100
    assert stopped[0].at_ms > started[0].at_ms + 3000
    audio = h.of(AudioOut)
    assert len(audio) == int((0.5 + len(q1) / 24000 + 1.0) / 0.08)
    assert all(len(a.pcm16) == FRAME_SAMPLES * 2 for a in audio)
    assert h.session.underruns == 0 and h.session.drops == 0
    assert len(h.of(Stats)) == len(audio) // 12


def test_audio_analysed_off_the_loop_gives_the_same_turns_even_across_a_vad_change():
    # A server's codec worker runs the VAD's front end on each decoded chunk (analysis made before
    # the chunk reaches the conversation); the turns must be the ones the conversation finds alone,
    # and an analysis made before a session.update replaced the VAD is redone, not misapplied.
    q1, _ = load_wav("q1.wav")
    pcm = np.concatenate([silence(0.3), q1, silence(1.0), q1, silence(1.0)])
    plain, analysed = Harness(), Harness()
    assert plain.session.vad_front is not None
    chunk, change_at = 480, len(pcm) // 2
    for pos in range(0, len(pcm), chunk):
        x = pcm[pos : pos + chunk]
        analysis = analysed.session.vad_front.analyse(x)
        if pos == change_at // chunk * chunk:  # the update arrives while this chunk is being decoded
            for h in (plain, analysed):
                h.take(h.session.update(vad={"min_silence_ms": 300}))
        plain.take(plain.session.push_samples(x))
        analysed.take(analysed.session.push_samples(x, analysis))
        for h in (plain, analysed):
            h.now += chunk / 24000
            if (pos // chunk + 1) % 4 == 0:
                h.tick()

    def turns(h: Harness) -> list:
        return [
            (type(e).__name__, e.at_ms)
            for e in h.events
            if isinstance(e, (InputSpeechStarted, InputSpeechStopped))
        ]

    assert len(turns(plain)) == 4 and turns(analysed) == turns(plain)
    assert Harness(rate=16000).session.vad_front is None  # input resampled first: analysed here


def test_response_latency_is_measured_from_the_last_voiced_sample():
    q1, _ = load_wav("q1.wav")
    h = Harness()
    h.answer_turns = True  # like the scripted engine: speak from the tick after the end of turn
    h.run(np.concatenate([q1, silence(1.0)]))
    assert h.of(AssistantSpeechStarted)
    lat = h.session.latencies[0]
    # The simulated clock runs at real time, so the gap is the VAD's end-of-turn silence plus waiting
    # for the next tick; the server adds no time of its own here.
    assert 500 <= lat.response_gap_ms <= 500 + 30 + 80 + 20
    assert 0 <= lat.server_overhead_ms <= 80
    assert h.session.stats()["response_gap_ms"] == round(lat.response_gap_ms, 1)


@pytest.mark.parametrize("policy", ["model", "vad"])
def test_barge_in_clears_playback_and_reports_what_was_not_heard(policy):
    interrupt, _ = load_wav("interrupt.wav")
    h = Harness(options=ConversationOptions(barge_in=policy, min_interrupt_ms=120))
    words = [" Once", " upon", " a", " time", " there", " was", " a", " lighthouse"]
    h.reply = [(True, w) for w in words] + [(True, "")] * 40
    h.run(silence(0.8))  # 10 frames: all the words are sent
    h.session.set_played_ms(3 * 80 + 10)  # the listener has heard "Once upon a" and a bit of "time"
    onset_ms = h.session.samples_in / 24 + np.flatnonzero(np.abs(interrupt) > 0.02)[0] / 24
    h.run(interrupt[:24000])
    clears = h.of(PlaybackClear)
    assert len(clears) == 1 and clears[0].reason == "barge_in"
    barge = h.of(BargeIn)[0]
    assert barge.cut_text == "time there was a lighthouse"
    # Detected from the VAD onset plus min_interrupt_ms, well inside the 300 ms budget.
    assert barge.at_ms - onset_ms <= 300
    assert h.events.index(clears[0]) < h.events.index(barge)
    assert h.engine_silent == ([True] if policy == "vad" else [])
    h.run(np.concatenate([interrupt[24000:], silence(1.0)]))
    assert h.engine_silent == ([True, False] if policy == "vad" else [])
    assert h.session.barge_ins == 1


def test_session_at_48k_sends_80_ms_frames_at_the_client_rate():
    q1, _ = load_wav("q1.wav")
    import soxr

    h = Harness(rate=48000)
    h.run(soxr.resample(q1[:48000], 24000, 48000))
    audio = h.of(AudioOut)
    total = sum(len(a.pcm16) for a in audio) // 2
    assert abs(total - len(audio) * 3840) < 3840 // 2  # the resampler holds back a few ms at most
    assert h.of(InputSpeechStarted)


def test_backlog_is_bounded_when_the_clock_stalls():
    q1, _ = load_wav("q1.wav")
    h = Harness(limits=ConversationLimits(max_backlog_frames=3))
    pcm16 = (q1[24000:48000] * 32767).astype("<i2")
    for i in range(0, 24000, 480):  # 1 s of speech in 20 ms chunks and no tick: 3 frames are kept
        h.session.push_audio(pcm16[i : i + 480].tobytes())
    assert h.session.drops == -(-(24000 - 3 * FRAME_SAMPLES) // FRAME_SAMPLES)
    assert h.session.stats()["drops"] == h.session.drops
    assert h.session._input.level == 3 * FRAME_SAMPLES


def test_limits_end_idle_and_overlong_sessions():
    h = Harness(limits=ConversationLimits(idle_timeout_s=2.0, max_session_s=100.0))
    h.run(silence(1.0))
    h.now += 1.5
    h.take(h.session.check_limits(h.now))
    assert not h.of(SessionEnded)
    h.now += 1.0
    h.take(h.session.check_limits(h.now))
    ended = h.of(SessionEnded)
    assert len(ended) == 1 and ended[0].reason.startswith("idle_timeout")
    assert h.session.end("again") == [] and h.session.check_limits(h.now + 10) == []  # ended once
    assert (
        h.session.push_audio(b"\x00\x00" * 480) == []
        and h.session.deliver(np.zeros(1920), "", False, 1.0) == []
    )

    h = Harness(limits=ConversationLimits(idle_timeout_s=None, max_session_s=0.5))
    h.run(silence(0.6))
    h.take(h.session.check_limits(h.now))
    assert h.of(SessionEnded)[0].reason.startswith("max_duration")


def talked_over(policy: str) -> Harness:
    """The assistant speaks; the user talks over it and is still talking."""
    interrupt, _ = load_wav("interrupt.wav")
    h = Harness(options=ConversationOptions(barge_in=policy, min_interrupt_ms=120))
    h.reply = [(True, " word")] * 60
    h.run(silence(0.8))
    h.run(interrupt[:24000])
    assert len(h.of(BargeIn)) == 1 and h.session.turns.user_speaking
    return h


def test_update_to_the_model_policy_releases_a_barge_in_hold():
    h = talked_over("vad")
    assert h.engine_silent == [True]
    out = h.take(h.session.update(barge_in="model", vad={"min_silence_ms": 300}))
    assert h.engine_silent == [True, False] and isinstance(out[-1], SessionUpdated)
    assert h.session.options.barge_in == "model"
    assert h.session.options.as_dict(h.session.base_vad)["vad"]["min_silence_ms"] == 300
    with pytest.raises(ValueError):
        h.session.update(barge_in="maybe")


def test_a_new_vad_starts_from_silence_so_a_hold_until_the_user_stops_ends_with_it():
    h = talked_over("model")
    h.take(h.session.hold_until_user_stops())
    assert h.engine_silent == [True]
    h.take(h.session.update(vad={"min_silence_ms": 300}))
    assert h.engine_silent == [True, False] and not h.session.turns.user_speaking


def test_a_host_hold_and_a_hold_until_the_user_stops_add_up_to_one_engine_state():
    """What the Realtime API does with the one barge-in detector: it decides that a barge-in
    interrupts and asks for the hold; its own manual-turn hold comes and goes beside it."""
    h = talked_over("model")
    assert h.engine_silent == []  # the model policy only reports the barge-in
    assert h.take(h.session.hold(True)) == [SetEngineSilent(True)]
    assert h.session.hold(True) == []
    assert h.session.hold_until_user_stops() == []  # silent already
    assert h.session.hold(False) == []  # the user is still talking: the hold stands
    h.reply = [(True, " late")] * 2  # frames the engine made before it was told are muted at once
    h.tick()
    (audio,) = h.of(AudioOut)[-1:]
    assert not audio.speaking and audio.pcm16 == bytes(len(audio.pcm16))
    h.run(silence(1.0))  # the user's turn ends
    assert h.engine_silent == [True, False]
    assert h.session.hold_until_user_stops() == []  # nobody is talking now


def test_sampling_and_prompt_changes_go_to_the_engine_slot_and_a_bad_prompt_changes_nothing():
    def check_prompt(instructions, voice):
        if voice not in (None, "NATF0"):
            raise ValueError(f"unknown voice {voice!r}")

    h = Harness(check_prompt=check_prompt)
    out = h.session.update(temperature=0.6, voice="NATF0")
    assert out[0] == SetEngineOptions(SlotOptions(temperature=0.6, voice="NATF0"))
    assert not [e for e in h.session.update(barge_in="vad") if isinstance(e, SetEngineOptions)]
    with pytest.raises(ValueError, match="unknown voice"):
        h.session.update(voice="NOBODY", temperature=0.1)
    assert h.session.options.voice == "NATF0" and h.session.options.temperature == 0.6


def test_captions_are_requested_from_the_host_and_come_back_as_transcripts():
    q1, _ = load_wav("q1.wav")
    h = Harness(options=ConversationOptions(captions=True), can_caption=True)
    h.run(np.concatenate([silence(0.5), q1, silence(1.0)]))
    # Interims, a reading at each pause, the last of them the whole utterance.
    request = [r for r in h.of(CaptionUtterance) if not r.interim][-1]
    stopped = h.of(InputSpeechStopped)[0]
    assert request.start_ms < h.of(InputSpeechStarted)[0].at_ms
    # It was asked for once the sound had stopped, before the VAD's classifier let go of the turn
    # (100 ms later on q1.wav), and it read the whole turn.
    assert stopped.at_ms - 150 <= request.end_ms < stopped.at_ms
    assert request.pcm.shape[0] >= (stopped.at_ms - request.start_ms) * 24
    # Asked for 150 ms into the silence as a listener hears it (+ a 20 ms chunk, a 10 ms block).
    sound_end_ms = 500 + (np.flatnonzero(np.abs(q1) > 300 / 32768)[-1] + 1) / 24
    asked_at_ms = request.start_ms + request.pcm.shape[0] / 24
    assert asked_at_ms <= sound_end_ms + 180, (asked_at_ms, sound_end_ms)
    assert h.session.add_caption(request, " What is it? ") == [
        UserTranscriptDelta("What is it?", request.start_ms, stopped.at_ms),
        UserTranscript("What is it?", request.start_ms, stopped.at_ms),
    ]
    assert h.session.add_caption(request, "again") == []  # its transcript went out already
    h.session.end("client_ended")
    assert h.session.add_caption(request, "late") == []


def test_a_pause_reading_that_did_not_work_is_read_again_in_full():
    q1, _ = load_wav("q1.wav")
    h = Harness(options=ConversationOptions(captions=True), can_caption=True)
    h.run(np.concatenate([silence(0.5), q1, silence(1.0)]))
    pause = [r for r in h.of(CaptionUtterance) if not r.interim][-1]
    assert pause.quick and h.of(InputSpeechStopped)
    (again,) = h.session.add_caption(pause, None)
    assert isinstance(again, CaptionUtterance) and not again.quick and again.pcm is pause.pcm
    assert h.session.add_caption(again, "What is it?")[-1] == UserTranscript(
        "What is it?", pause.start_ms, h.of(InputSpeechStopped)[0].at_ms
    )


def test_captions_asked_of_a_host_without_a_captioner_are_refused_and_the_session_goes_on():
    h = Harness(options=ConversationOptions(captions=True))
    ready, refused = h.events
    assert isinstance(ready, SessionReady) and ready.options["captions"] is False
    assert refused.code == "invalid_value" and "captions are off" in refused.message
    q1, _ = load_wav("q1.wav")
    h.run(np.concatenate([q1, silence(1.0)]))
    assert h.of(InputSpeechStopped) and not h.of(CaptionUtterance)


def test_unsupported_rate_is_refused():
    with pytest.raises(ValueError, match="not supported"):
        Conversation("x", 22050)


def test_bad_vad_update_changes_nothing():
    h = Harness()
    with pytest.raises(ValueError, match="threshold"):
        h.session.update(vad={"threshold": 0.0})
    assert h.session.options.vad == {}


@pytest.mark.parametrize("rate", [48000, 44100, 16000])
def test_resampled_input_arriving_in_blocks_does_not_starve_the_model(rate):
    import soxr

    q1, _ = load_wav("q1.wav")
    h = Harness(rate=rate)
    h.answer_turns = True
    pcm = np.concatenate([np.zeros(12000, np.float32), q1, np.zeros(24000, np.float32)])
    h.run(soxr.resample(pcm, 24000, rate))
    # The resampler hands out ~35 ms blocks; the cushion absorbs them: no gaps in the user's speech.
    assert h.session.underruns == 0
    lat = h.session.latencies[0]
    assert lat.server_overhead_ms <= 80 + 40  # at most the cushion more than at 24 kHz
