"""Test backends (silence, scripted) and the backend factory."""

from __future__ import annotations

import numpy as np
import pytest

from assistant.backends import BACKENDS, build_engine
from assistant.backends.silence import SilenceEngine
from assistant.engine import FRAME_SAMPLES


# -- factory -------------------------------------------------------------------------------
def test_build_engine_unknown_backend_lists_choices():
    with pytest.raises(ValueError, match="unknown backend 'nope'.*moshi, scripted, silence"):
        build_engine("nope")


def test_build_engine_silence_rejects_options_and_bad_batch():
    with pytest.raises(ValueError, match="no options"):
        build_engine("silence", script_reply="x.wav")
    with pytest.raises(ValueError, match="batch_size"):
        build_engine("silence", batch_size=0)


def test_backends_names():
    assert set(BACKENDS) == {"moshi", "scripted", "silence"}


# -- silence -------------------------------------------------------------------------------
def test_silence_outputs_zeros_and_no_text():
    engine = build_engine("silence", batch_size=3)
    assert isinstance(engine, SilenceEngine)
    engine.open(0)
    engine.open(2)
    loud = np.random.default_rng(0).uniform(-0.5, 0.5, (3, FRAME_SAMPLES)).astype(np.float32)
    for _ in range(3):
        out = engine.step(loud)
        assert out.pcm_out.shape == (3, FRAME_SAMPLES)
        assert out.pcm_out.dtype == np.float32
        assert not out.pcm_out.any()
        assert out.text == ["", "", ""]
        assert out.speaking.shape == (3,) and not out.speaking.any()


def test_silence_rejects_wrong_frame_shape():
    engine = build_engine("silence", batch_size=2)
    with pytest.raises(ValueError, match="shape"):
        engine.step(np.zeros((1, FRAME_SAMPLES), dtype=np.float32))


# -- scripted ------------------------------------------------------------------------------
SR = 24_000
REPLY_TAIL_S = 6.0  # silence after the input so the last reply can play out in full


def _speech_bounds(pcm: np.ndarray) -> tuple[int, int]:
    """First and last sample of a recording louder than -40 dB of its peak (where speech is)."""
    loud = np.flatnonzero(np.abs(pcm) > np.abs(pcm).max() * 0.01)
    return int(loud[0]), int(loud[-1])


def _frames(pcm: np.ndarray, tail_s: float = 0.0) -> np.ndarray:
    """Cut pcm (plus tail_s of silence) into whole frames: float32 (n, 1920), last frame zero-padded."""
    total = pcm.shape[0] + round(tail_s * SR)
    out = np.zeros(-(-total // FRAME_SAMPLES) * FRAME_SAMPLES, dtype=np.float32)
    out[: pcm.shape[0]] = pcm
    return out.reshape(-1, FRAME_SAMPLES)


def _run(engine, inputs: list[np.ndarray]) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    """Step `engine` over per-slot frame sequences (slots without input get silence).

    Returns pcm (B, n, 1920), text [B][n], speaking (B, n).
    """
    n = max(x.shape[0] for x in inputs)
    b_size = engine.batch_size
    pcm = np.zeros((b_size, n, FRAME_SAMPLES), dtype=np.float32)
    text = [[""] * n for _ in range(b_size)]
    speaking = np.zeros((b_size, n), dtype=bool)
    for i in range(n):
        batch = np.zeros((b_size, FRAME_SAMPLES), dtype=np.float32)
        for b, x in enumerate(inputs):
            if i < x.shape[0]:
                batch[b] = x[i]
        out = engine.step(batch)
        pcm[:, i] = out.pcm_out
        speaking[:, i] = out.speaking
        for b in range(b_size):
            text[b][i] = out.text[b]
    return pcm, text, speaking


def _runs(speaking: np.ndarray) -> list[tuple[int, int]]:
    """(first, last + 1) frame index of each run of True."""
    edges = np.diff(np.concatenate([[0], speaking.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


@pytest.fixture(scope="module")
def conversation():
    """conversation.wav and where its speech is: q1, 3 s silence, interrupt, 1 s silence."""
    from audio_utils import load_wav

    conv, _ = load_wav("conversation.wav")
    q1, _ = load_wav("q1.wav")
    interrupt, _ = load_wav("interrupt.wav")
    gap = 3 * SR
    assert conv.shape[0] == q1.shape[0] + gap + interrupt.shape[0] + SR, "conversation.wav layout changed"
    i_on, i_off = _speech_bounds(interrupt)
    return {
        "pcm": conv,
        "q1_end": _speech_bounds(q1)[1],
        "interrupt_start": q1.shape[0] + gap + i_on,
        "interrupt_end": q1.shape[0] + gap + i_off,
    }


@pytest.fixture(scope="module")
def solo_run(conversation):
    """One scripted slot hearing the whole conversation, then silence."""
    engine = build_engine("scripted", batch_size=1)
    engine.open(0)
    pcm, text, speaking = _run(engine, [_frames(conversation["pcm"], REPLY_TAIL_S)])
    return engine, pcm[0], text[0], speaking[0]


def _vad_reference(engine, frames: np.ndarray) -> list[tuple[int, object]]:
    """(frame index, event) for each event a fresh VAD with the engine's config reports on `frames`."""
    from audio.vad import StreamingVad

    vad = StreamingVad(engine.vad_config, sample_rate_hz=SR)
    return [(i, event) for i, frame in enumerate(frames) for event in vad.push(frame)]


def test_scripted_replies_after_turn_is_cut_by_interrupt_and_replies_again(conversation, solo_run):
    engine, pcm, text, speaking = solo_run
    reply = engine.reply
    cfg = engine.vad_config
    runs = _runs(speaking)
    assert len(runs) == 2, f"expected a reply after each user turn, got speaking runs {runs}"
    (start1, stop1), (start2, stop2) = runs
    events = _vad_reference(engine, _frames(conversation["pcm"], REPLY_TAIL_S))
    assert [e.type for _, e in events] == ["speech_started", "speech_stopped"] * 2
    (_, _), (stopped1, _), (started2, _), (stopped2, _) = events

    # No added latency: each reply starts in the very frame whose audio completed the end of turn, and
    # the interrupt cuts the reply in the frame where the VAD hears it.
    assert (start1, stop1, start2) == (stopped1, started2, stopped2)
    # Against the audio itself: the reply comes once the user is done, within end of speech +
    # min_silence + one frame, allowing the VAD's 100 ms end-of-speech accuracy.
    min_silence = cfg.min_silence_ms * SR / 1000
    slack = 0.1 * SR
    assert (
        conversation["q1_end"]
        < start1 * FRAME_SAMPLES
        <= conversation["q1_end"] + min_silence + FRAME_SAMPLES + slack
    )
    assert (
        conversation["interrupt_end"]
        < start2 * FRAME_SAMPLES
        <= conversation["interrupt_end"] + min_silence + FRAME_SAMPLES + slack
    )
    # The cut comes within one frame of the VAD confirming the interrupt (min_speech_ms after its onset).
    onset = conversation["interrupt_start"]
    assert onset <= stop1 * FRAME_SAMPLES <= onset + cfg.min_speech_ms * SR / 1000 + FRAME_SAMPLES + slack

    # The first reply played the WAV's samples and words until the cut; the cut stayed cut.
    np.testing.assert_array_equal(pcm[start1:stop1], reply.frames[: stop1 - start1])
    assert stop1 - start1 < reply.num_frames, "the interrupt should have cut the first reply"
    assert "".join(text[start1:stop1]) == "".join(reply.pieces[: stop1 - start1])
    assert reply.text.startswith("".join(text[start1:stop1]))
    # The second reply starts over and plays in full, audio and text.
    assert stop2 - start2 == reply.num_frames
    np.testing.assert_array_equal(pcm[start2:stop2], reply.frames)
    assert "".join(text[start2:stop2]) == reply.text

    # Nothing is said or written outside the replies.
    quiet = ~speaking
    assert not pcm[quiet].any()
    assert not any(t for t, q in zip(text, quiet, strict=True) if q)


def test_scripted_text_is_paced_with_the_audio(solo_run):
    engine, _, text, speaking = solo_run
    start, stop = _runs(speaking)[-1]
    piece_frames = [i - start for i in range(start, stop) if text[i]]
    words = engine.reply.text.split()
    # Word by word, spread over the reply: the first word with the first frame, the last one late.
    assert len(piece_frames) >= len(words) - 2
    assert piece_frames[0] == 0
    assert piece_frames[-1] * FRAME_SAMPLES / SR > 0.6 * (stop - start) * FRAME_SAMPLES / SR
    # Each word comes no earlier than the audio of that frame has sound in it.
    for i in piece_frames:
        assert np.abs(engine.reply.frames[i]).max() > 0.01


def test_scripted_slots_are_isolated(conversation, solo_run):
    from audio_utils import load_wav

    _, solo_pcm, solo_text, solo_speaking = solo_run
    q2, _ = load_wav("q2.wav")
    engine = build_engine("scripted", batch_size=3)
    for slot in range(3):
        engine.open(slot)
    conv = _frames(conversation["pcm"], REPLY_TAIL_S)
    pcm, text, speaking = _run(engine, [conv, np.zeros_like(conv), _frames(q2, REPLY_TAIL_S)])
    # Slot 0 behaves exactly as if alone; the silent slot never speaks; slot 2 answers its own turn.
    np.testing.assert_array_equal(pcm[0], solo_pcm)
    assert text[0] == solo_text
    np.testing.assert_array_equal(speaking[0], solo_speaking)
    assert not speaking[1].any() and not pcm[1].any()
    runs2 = _runs(speaking[2])
    assert len(runs2) == 1
    q2_end = _speech_bounds(q2)[1]
    deadline = q2_end + engine.vad_config.min_silence_ms * SR / 1000 + FRAME_SAMPLES + 0.1 * SR
    assert q2_end < runs2[0][0] * FRAME_SAMPLES <= deadline


def test_scripted_reopened_slot_starts_clean(conversation, solo_run):
    from audio_utils import load_wav

    q1, _ = load_wav("q1.wav")
    engine = build_engine("scripted", batch_size=1)
    # Closed in the middle of the user's sentence: the next session's silence gets no reply.
    engine.open(0)
    q1_frames = _frames(q1)
    _run(engine, [q1_frames[: len(q1_frames) // 2]])
    engine.close(0)
    engine.open(0)
    _, _, speaking = _run(engine, [_frames(np.zeros(3 * SR, dtype=np.float32))])
    assert not speaking.any(), "a half-heard turn from the previous session must not trigger a reply"
    engine.close(0)
    # Closed in the middle of a reply: the next session hears none of it, and its conversation
    # plays out exactly like on a fresh engine.
    engine.open(0)
    _, _, speaking = _run(engine, [_frames(q1, 1.5)])
    assert speaking[0, -1], "the reply should be playing"
    engine.close(0)
    engine.open(0)
    _, solo_pcm, solo_text, solo_speaking = solo_run
    pcm, text, speaking = _run(engine, [_frames(conversation["pcm"], REPLY_TAIL_S)])
    np.testing.assert_array_equal(speaking[0], solo_speaking)
    np.testing.assert_array_equal(pcm[0], solo_pcm)
    assert text[0] == solo_text


def test_scripted_closed_slot_is_silent():
    engine = build_engine("scripted", batch_size=2)
    engine.open(0)
    loud = np.random.default_rng(1).uniform(-0.5, 0.5, (2, FRAME_SAMPLES)).astype(np.float32)
    for _ in range(5):
        engine.step(loud)
    quiet = np.zeros((2, FRAME_SAMPLES), dtype=np.float32)
    speaking_any = np.zeros(2, dtype=bool)
    for _ in range(30):
        out = engine.step(quiet)
        speaking_any |= out.speaking
        assert not out.pcm_out[1].any() and out.text[1] == ""
    assert speaking_any[0] and not speaking_any[1]


@pytest.mark.parametrize("delay_ms", [0, 200, 400])
def test_scripted_delay_postpones_the_reply(delay_ms):
    from audio_utils import load_wav

    q1, _ = load_wav("q1.wav")
    frames = _frames(q1, 2.5)
    engine = build_engine("scripted", script_delay_ms=delay_ms)
    engine.open(0)
    _, _, speaking = _run(engine, [frames])
    start = _runs(speaking[0])[0][0]
    ((detected, stopped),) = [(i, e) for i, e in _vad_reference(engine, frames) if e.type == "speech_stopped"]
    # The turn ends once the silence after the last voiced sample reaches min_silence_ms; the reply is
    # due delay_ms later. A frame is played once its input has arrived (at its end), so the reply is
    # the first frame playable at or after the due time, and never before the VAD knew the turn ended.
    reply_due = stopped.sample + (engine.vad_config.min_silence_ms + delay_ms) * SR / 1000
    assert start >= detected
    assert (start + 1) * FRAME_SAMPLES >= reply_due
    assert start == detected or start * FRAME_SAMPLES < reply_due


def test_scripted_force_silence_cuts_the_reply(conversation):
    from audio_utils import load_wav

    q1, _ = load_wav("q1.wav")
    engine = build_engine("scripted")
    engine.open(0)
    frames = _frames(q1, 2.0)
    _, _, speaking = _run(engine, [frames])
    assert speaking[0, -1], "the reply should be playing"
    engine.force_silence(0, True)
    out = engine.step(np.zeros((1, FRAME_SAMPLES), dtype=np.float32))
    assert not out.speaking[0] and not out.pcm_out.any() and out.text == [""]
    # Lifting the silence does not resume the cut reply; the next turn is answered again.
    engine.force_silence(0, False)
    pcm, _, speaking = _run(engine, [_frames(np.zeros(SR, dtype=np.float32))])
    assert not speaking.any() and not pcm.any()
    _, _, speaking = _run(engine, [frames])
    assert len(_runs(speaking[0])) == 1


def test_scripted_reply_due_while_silenced_starts_when_lifted():
    """Manual turns: the user's turn ends while the assistant is held silent; it answers when allowed."""
    from audio_utils import load_wav

    q1, _ = load_wav("q1.wav")
    engine = build_engine("scripted")
    engine.open(0)
    engine.force_silence(0, True)
    pcm, _, speaking = _run(engine, [_frames(q1, 2.0)])
    assert not speaking.any() and not pcm.any(), "a silenced slot must not speak"
    engine.force_silence(0, False)
    pcm, _, speaking = _run(engine, [_frames(np.zeros(SR, dtype=np.float32))])
    assert speaking[0, 0], "the pending reply starts in the first frame after the silence is lifted"
    np.testing.assert_array_equal(pcm[0, 0], engine.reply.frames[0])


def test_scripted_custom_reply_resampled_with_text_beside_it(tmp_path):
    import soundfile as sf
    from audio_utils import load_wav

    from audio.resample import resample

    q2, _ = load_wav("q2.wav")
    wav = tmp_path / "answer.wav"
    sf.write(wav, resample(q2, SR, 16_000), 16_000, subtype="PCM_16")
    engine = build_engine("scripted", script_reply=str(wav))
    assert engine.reply.text == "" and not any(engine.reply.pieces)
    assert abs(engine.reply.num_frames * FRAME_SAMPLES - q2.shape[0]) <= FRAME_SAMPLES
    (tmp_path / "answer.txt").write_text("What is the capital of Australia,\nand why is it not Sydney?\n")
    engine = build_engine("scripted", script_reply=wav)
    assert "".join(engine.reply.pieces) == "What is the capital of Australia, and why is it not Sydney?"


def test_scripted_bad_options_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_engine("scripted", script_reply=tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="not a readable audio file"):
        build_engine("scripted", script_reply=tmp_path / "bad.wav")
    with pytest.raises(ValueError, match="script_delay_ms"):
        build_engine("scripted", script_delay_ms=-5)
    with pytest.raises(TypeError, match="vad must be"):
        build_engine("scripted", vad=3)
    with pytest.raises(ValueError, match="bad vad options"):
        build_engine("scripted", vad={"no_such_field": 1})
    with pytest.raises(TypeError):
        build_engine("scripted", unknown_option=1)


def test_scripted_vad_options_change_end_of_turn_time():
    from audio_utils import load_wav

    q1, _ = load_wav("q1.wav")
    starts = []
    for min_silence_ms in (300, 800):
        engine = build_engine("scripted", vad={"min_silence_ms": min_silence_ms})
        engine.open(0)
        _, _, speaking = _run(engine, [_frames(q1, 2.0)])
        starts.append(_runs(speaking[0])[-1][0])
    assert (starts[1] - starts[0]) * FRAME_SAMPLES * 1000 / SR >= 500 - 80


# -- word timing ----------------------------------------------------------------------------
def test_word_starts_follow_pauses_in_the_audio():
    from assistant.backends.scripted import estimate_word_starts, pieces_for_frames

    rng = np.random.default_rng(2)
    pcm = np.zeros(3 * SR, dtype=np.float32)
    # Three phrases of noise "speech" with 300 ms pauses between them.
    bursts = [(0.10, 0.70), (1.00, 1.90), (2.20, 2.80)]
    for a, b in bursts:
        pcm[int(a * SR) : int(b * SR)] = rng.uniform(-0.3, 0.3, int(b * SR) - int(a * SR))
    words = ["Hello", "there.", "How", "are", "you", "today?", "Fine,", "thanks."]
    starts = estimate_word_starts(pcm, words, SR)
    assert starts == sorted(starts)
    # Each phrase's first word starts where its burst starts (10 ms envelope resolution).
    for k, (a, _) in zip((0, 2, 6), bursts, strict=True):
        assert abs(starts[k] - a * SR) <= 0.011 * SR, (words[k], starts[k] / SR, a)
    # Words inside a phrase fall inside its burst.
    for k in (1, 3, 4, 5, 7):
        assert any(a * SR <= starts[k] < b * SR for a, b in bursts), (words[k], starts[k] / SR)
    pieces = pieces_for_frames(words, starts, -(-pcm.shape[0] // FRAME_SAMPLES), FRAME_SAMPLES)
    assert "".join(pieces) == " ".join(words)
    assert pieces[int(1.0 * SR) // FRAME_SAMPLES].startswith(" How")
