"""The conversation core without sockets: turn-taking state machine, input buffering, barge-in with
cut text, latencies and limits."""

from __future__ import annotations

import numpy as np
import pytest
from audio_utils import load_wav

from assistant.conversation import (
    AssistantSpeechStarted,
    AudioOut,
    BargeIn,
    Conversation,
    ConversationLimits,
    ConversationOptions,
    InputSpeechStarted,
    InputSpeechStopped,
    PlaybackClear,
    SessionEnded,
    SessionReady,
    SlotControl,
    Stats,
)
from assistant.conversation.input_buffer import FRAME_OK, FRAME_PADDED, FRAME_UNDERRUN, InputBuffer
from assistant.conversation.turns import (
    ASSISTANT_SPEAKING,
    ASSISTANT_STARTED,
    ASSISTANT_STOPPED,
    BARGE_IN,
    LISTENING,
    SILENCE_OFF,
    SILENCE_ON,
    USER_BARGING_IN,
    TurnTaking,
)
from assistant.engine import FRAME_SAMPLES

MS = 24  # samples per ms at 24 kHz


# -- TurnTaking (pure) ------------------------------------------------------------------------


def test_assistant_stretch_starts_and_ends_after_hangover():
    tt = TurnTaking(min_interrupt_samples=100 * MS, hangover_frames=2)
    assert tt.assistant_frame(True, 0) == [ASSISTANT_STARTED]
    assert tt.state == ASSISTANT_SPEAKING
    assert tt.assistant_frame(False, 0) == []
    assert tt.assistant_frame(False, 0) == []
    assert tt.assistant_frame(True, 0) == []  # a short pause stays inside the stretch
    assert [tt.assistant_frame(False, 0) for _ in range(3)] == [[], [], [ASSISTANT_STOPPED]]
    assert tt.state == LISTENING


@pytest.mark.parametrize("policy, expected", [("model", [BARGE_IN]), ("vad", [BARGE_IN, SILENCE_ON])])
def test_barge_in_needs_min_interrupt_of_overlapping_speech(policy, expected):
    tt = TurnTaking(barge_in=policy, min_interrupt_samples=120 * MS)
    tt.assistant_frame(True, 0)
    assert tt.user_speech_started(onset_sample=1000 * MS, now_sample=1100 * MS) == []  # 100 ms: not yet
    assert tt.user_input(1119 * MS) == []
    assert tt.user_input(1120 * MS) == expected
    assert tt.state == USER_BARGING_IN
    assert tt.user_input(1500 * MS) == []  # one barge-in per overlap
    assert tt.user_speech_stopped() == ([SILENCE_OFF] if policy == "vad" else [])
    assert not tt.silenced


def test_no_barge_in_while_the_assistant_is_quiet():
    tt = TurnTaking(barge_in="vad", min_interrupt_samples=0)
    assert tt.user_speech_started(0, 5000 * MS) == []
    assert tt.user_speech_stopped() == []
    assert tt.state == LISTENING


def test_assistant_starting_over_the_user_counts_overlap_from_its_start():
    tt = TurnTaking(barge_in="vad", min_interrupt_samples=200 * MS)
    tt.user_speech_started(0, 1000 * MS)  # the user has talked for a second already
    assert tt.assistant_frame(True, 1000 * MS) == [ASSISTANT_STARTED]  # overlap only just began
    assert tt.user_input(1150 * MS) == []
    assert tt.user_input(1200 * MS) == [BARGE_IN, SILENCE_ON]


def test_after_barge_in_user_stop_returns_to_listening_once_assistant_is_silent():
    tt = TurnTaking(barge_in="vad", min_interrupt_samples=0, hangover_frames=0)
    tt.assistant_frame(True, 0)
    tt.user_speech_started(0, 10)
    assert tt.state == USER_BARGING_IN
    assert tt.assistant_frame(False, 20) == [ASSISTANT_STOPPED]
    assert tt.state == USER_BARGING_IN  # still the user's floor
    tt.user_speech_stopped()
    assert tt.state == LISTENING


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
    assert tt.assistant_frame(True, 1500 * MS) == [ASSISTANT_STARTED]
    assert tt.user_input(1800 * MS, voiced=False) == []
    assert tt.state == ASSISTANT_SPEAKING
    # The user speaks again over it: a barge-in.
    assert tt.user_input(1820 * MS, voiced=True) == [BARGE_IN, SILENCE_ON]


# -- Session with the real VAD on test speech --------------------------------------------------


class FakeSlot(SlotControl):
    def __init__(self):
        self.silenced: list[bool] = []
        self.released = False

    def force_silence(self, silent: bool) -> None:
        self.silenced.append(silent)

    def update(self, options) -> None:
        pass

    def release(self) -> None:
        self.released = True


class Harness:
    """Drives a Session like the frame clock would, on a simulated clock: 20 ms chunks, 80 ms ticks."""

    def __init__(self, rate=24000, **kwargs):
        self.now = 0.0
        self.events: list = []
        self.slot = FakeSlot()
        self.session = Conversation(
            "s1", rate, self.events.append, slot=self.slot, clock=lambda: self.now, **kwargs
        )
        self.session.start()
        self.rate = rate
        self.reply: list[tuple[bool, str]] = []  # what the "engine" says in coming frames
        self.answer_turns = False

    def run(self, pcm: np.ndarray, chunk_ms: int = 20) -> None:
        chunk = self.rate * chunk_ms // 1000
        per_tick = 80 // chunk_ms
        pcm16 = (np.clip(pcm, -1, 1) * 32767).astype("<i2")
        for i, start in enumerate(range(0, len(pcm16), chunk)):
            self.now += chunk_ms / 1000
            self.session.push_audio(pcm16[start : start + chunk].tobytes())
            if (i + 1) % per_tick == 0:
                self.tick()

    def tick(self) -> None:
        if self.answer_turns and self.of(InputSpeechStopped) and not self.reply:
            self.reply = [(True, " Hello")] * 5
            self.answer_turns = False
        self.session.take_frame()
        speaking, text = self.reply.pop(0) if self.reply else (False, "")
        pcm = np.full(FRAME_SAMPLES, 0.1 if speaking else 0.0, dtype=np.float32)
        self.session.deliver(pcm, text, speaking, step_ms=1.0)

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
    assert h.slot.silenced == ([True] if policy == "vad" else [])
    h.run(np.concatenate([interrupt[24000:], silence(1.0)]))
    assert h.slot.silenced == ([True, False] if policy == "vad" else [])
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
    h.session.check_limits(h.now)
    assert not h.of(SessionEnded)
    h.now += 1.0
    h.session.check_limits(h.now)
    ended = h.of(SessionEnded)
    assert len(ended) == 1 and ended[0].reason.startswith("idle_timeout")
    assert h.slot.released
    h.session.end("again")  # idempotent
    assert len(h.of(SessionEnded)) == 1

    h = Harness(limits=ConversationLimits(idle_timeout_s=None, max_session_s=0.5))
    h.run(silence(0.6))
    h.session.check_limits(h.now)
    assert h.of(SessionEnded)[0].reason.startswith("max_duration")


def test_update_changes_barge_in_policy_and_releases_forced_silence():
    h = Harness(options=ConversationOptions(barge_in="vad", min_interrupt_ms=0))
    h.session.turns.silenced = True
    h.session.update(barge_in="model", vad={"min_silence_ms": 300})
    assert h.session.options.barge_in == "model"
    assert h.slot.silenced == [False]
    assert h.session.options.as_dict(h.session.base_vad)["vad"]["min_silence_ms"] == 300
    with pytest.raises(ValueError):
        h.session.update(barge_in="maybe")


def test_unsupported_rate_is_refused():
    with pytest.raises(ValueError, match="not supported"):
        Conversation("x", 22050, lambda e: None)


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
