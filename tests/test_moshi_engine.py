"""MoshiEngine on tiny random checkpoints: slot isolation, seeds, silence forcing, both layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from moshi_fixtures import (
    kyutai_reference,
    random_moshi,
    tiny_kyutai_kwargs,
    train_tiny_spm,
    write_hf_checkpoint,
    write_kyutai_checkpoint,
)

from assistant.backends import build_engine
from assistant.backends.moshi import MoshiEngine
from assistant.engine import SlotOptions
from audio.frames import FRAME_SAMPLES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("moshi_engine")
    kwargs = tiny_kyutai_kwargs()
    model = random_moshi(kwargs, seed=4)
    spm = train_tiny_spm(root / "spm")
    return write_kyutai_checkpoint(root / "kyutai", model, kwargs, spm), write_hf_checkpoint(
        root / "hf", model, spm
    )


@pytest.fixture(scope="module")
def kyutai_dir(checkpoint_dirs):
    return checkpoint_dirs[0]


def user_audio(frames: int, seed: int) -> np.ndarray:
    """Noisy tones: float32 (frames, 1920), different per seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames * FRAME_SAMPLES) / 24_000
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(t.size)
    return x.astype(np.float32).reshape(frames, FRAME_SAMPLES)


def run_solo(directory, frames: np.ndarray, options: SlotOptions):
    engine = MoshiEngine.from_pretrained(str(directory), batch_size=1, device="cpu")
    engine.open(0, options)
    outs = [engine.step(frame[None]) for frame in frames]
    return np.stack([o.pcm_out[0] for o in outs]), [o.text[0] for o in outs]


def test_slots_open_and_close_without_changing_each_other(kyutai_dir):
    frames = 9
    audio = [user_audio(frames + 6, seed) for seed in range(3)]
    engine = MoshiEngine.from_pretrained(str(kyutai_dir), batch_size=3, device="cpu")
    # Slot 0 from frame 0; slot 1 joins at frame 3; slot 2 hosts a first caller for frames 0-3,
    # then a second caller from frame 5 who must not hear anything of the first.
    schedule = {0: (0, SlotOptions(seed=10)), 1: (3, SlotOptions(seed=11)), 2: (5, SlotOptions(seed=12))}
    engine.open(2, SlotOptions(seed=99))
    got = {slot: ([], []) for slot in schedule}
    for t in range(frames + 5):
        if t == 4:
            engine.close(2)
        for slot, (start, options) in schedule.items():
            if t == start:
                engine.open(slot, options)
        pcm_in = np.stack(
            [
                audio[slot][t - schedule[slot][0]]
                if engine.live[slot] and t >= schedule[slot][0]
                else np.zeros(FRAME_SAMPLES, np.float32)
                for slot in range(3)
            ]
        )
        if engine.live[2] and t < 4:
            pcm_in[2] = audio[2][t]
        out = engine.step(pcm_in)
        for slot, (start, _) in schedule.items():
            if start <= t < start + frames:
                got[slot][0].append(out.pcm_out[slot])
                got[slot][1].append(out.text[slot])
    for slot, (_, options) in schedule.items():
        solo_pcm, solo_text = run_solo(kyutai_dir, audio[slot][:frames], options)
        assert got[slot][1] == solo_text, slot
        np.testing.assert_allclose(np.stack(got[slot][0]), solo_pcm, atol=1e-4)
    # The outputs are not trivially equal: the seeds and inputs differ, so do the replies.
    assert not np.allclose(np.stack(got[0][0]), np.stack(got[1][0]), atol=1e-3)
    assert np.abs(np.stack(got[0][0])[2:]).max() > 1e-3


def test_first_frame_is_silent_and_seed_makes_it_reproducible(kyutai_dir):
    frames = user_audio(6, seed=5)
    pcm_a, text_a = run_solo(kyutai_dir, frames, SlotOptions(seed=3))
    pcm_b, text_b = run_solo(kyutai_dir, frames, SlotOptions(seed=3))
    pcm_c, _ = run_solo(kyutai_dir, frames, SlotOptions(seed=4))
    assert np.array_equal(pcm_a, pcm_b) and text_a == text_b
    assert not np.allclose(pcm_a, pcm_c, atol=1e-3)
    assert not pcm_a[0].any() and text_a[0] == ""  # the acoustic delay: no complete frame yet


def test_greedy_ignores_the_seed(kyutai_dir):
    frames = user_audio(5, seed=6)
    greedy = dict(temperature=0.0, text_temperature=0.0)
    pcm_a, text_a = run_solo(kyutai_dir, frames, SlotOptions(seed=1, **greedy))
    pcm_b, text_b = run_solo(kyutai_dir, frames, SlotOptions(seed=2, **greedy))
    assert text_a == text_b
    np.testing.assert_allclose(pcm_a, pcm_b, atol=1e-6)


def test_forced_silence_outputs_silence_and_feeds_pad_and_silence_codes(kyutai_dir):
    engine = MoshiEngine.from_pretrained(str(kyutai_dir), batch_size=2, device="cpu")
    engine.open(0, SlotOptions(seed=1))
    engine.open(1, SlotOptions(seed=2))
    audio = user_audio(10, seed=8)
    reference_pcm, _ = run_solo(kyutai_dir, audio, SlotOptions(seed=2))
    engine.force_silence(0, True)
    outs = []
    for t in range(10):
        if t == 6:
            engine.force_silence(0, False)
        outs.append(engine.step(np.stack([audio[t], audio[t]])))
        if 1 <= t < 6:  # what the model was fed back for slot 0: pad text and Mimi's silence codes
            tokens = engine.lm.tokens[0, :, engine.lm.offsets[0] % engine.lm.tokens.shape[2]]
            assert int(tokens[0]) == engine.loaded.text_pad_id
            assert torch.equal(tokens[1:9], engine._silence_codes[0])
    silenced = np.stack([o.pcm_out[0] for o in outs[:6]])
    assert not silenced.any()
    assert all(o.text[0] == "" and not o.speaking[0] for o in outs[:6])
    assert np.abs(np.stack([o.pcm_out[0] for o in outs[7:]])).max() > 1e-3  # it speaks again
    # The other slot never noticed.
    np.testing.assert_allclose(np.stack([o.pcm_out[1] for o in outs]), reference_pcm, atol=1e-4)


def test_both_layouts_give_the_same_conversation(checkpoint_dirs):
    kyutai_dir, hf_dir = checkpoint_dirs
    audio = user_audio(6, seed=9)
    options = SlotOptions(seed=7)
    pcm_k, text_k = run_solo(kyutai_dir, audio, options)
    pcm_h, text_h = run_solo(hf_dir, audio, options)
    assert text_k == text_h
    np.testing.assert_allclose(pcm_k, pcm_h, atol=1e-5)


def test_factory_builds_moshi_and_bad_options_are_refused(kyutai_dir):
    engine = build_engine("moshi", model=str(kyutai_dir), batch_size=2, device="cpu", temperature=0.5)
    assert isinstance(engine, MoshiEngine)
    info = engine.describe()
    assert info["backend"] == "moshi" and info["batch_size"] == 2 and info["temperature"] == 0.5
    assert info["dtype"] == "float32" and info["layout"] == "kyutai"
    engine.open(0, SlotOptions(seed=1))
    with pytest.raises(ValueError, match="temperature"):
        engine.update(0, SlotOptions(temperature=-1.0))
    with pytest.raises(ValueError, match="top_k"):
        engine.update(0, SlotOptions(top_k=2.5))
    with pytest.raises(ValueError, match="--model"):
        build_engine("moshi", model=None)
    assert MoshiEngine.suggested_batch_size("cpu") == 1
    out = engine.step(np.zeros((2, FRAME_SAMPLES), np.float32))
    assert out.pcm_out.shape == (2, FRAME_SAMPLES) and set(out.timings_ms) >= {
        "codec_encode_ms",
        "codec_decode_ms",
        "total_ms",
    }


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # moshi's own torch.jit use
def test_greedy_engine_equals_kyutais_mimi_and_lmgen_on_the_same_audio(kyutai_dir):
    """Same Kyutai-layout files, same audio: Kyutai's own Mimi + LMGen against our engine, greedy."""
    pytest.importorskip(
        "moshi.models.loaders",
        reason="Kyutai's moshi package is not installed (pip install --no-deps moshi==0.2.13 einops)",
    )
    mimi, reference = kyutai_reference(kyutai_dir)

    audio = user_audio(8, seed=12)
    engine = MoshiEngine.from_pretrained(str(kyutai_dir), batch_size=1, device="cpu")
    engine.open(0, SlotOptions(seed=1, temperature=0.0, text_temperature=0.0))
    decoded_codes = []
    decode = engine.codec.decode

    def recording_decode(codes, mask=None):  # the assistant codes our engine hands to Mimi
        decoded_codes.append(torch.as_tensor(codes))
        return decode(codes, mask)

    engine.codec.decode = recording_decode
    # Our Mimi decoder matches Kyutai's to ~1e-5 until its transformer's sliding window wraps (3 frames
    # with this tiny Mimi); past that Kyutai's ring cache drops a key the codec keeps: a codec matter.
    window_frames = engine.codec.model.config.sliding_window // 2
    with torch.no_grad(), mimi.streaming(1), reference.streaming(1):
        for t, frame in enumerate(audio):
            ours = engine.step(frame[None])
            tokens = reference.step(mimi.encode(torch.from_numpy(frame)[None, None]))
            if tokens is None:
                assert t == 0 and not ours.pcm_out.any()
                continue
            assert ours.text[0] == engine.loaded.tokenizer.piece(int(tokens[0, 0, 0])), t
            assert torch.equal(decoded_codes[-1][0], tokens[0, 1:, 0]), t
            theirs_pcm = mimi.decode(tokens[:, 1:])[0, 0].numpy()
            if t <= window_frames:
                np.testing.assert_allclose(ours.pcm_out[0], np.clip(theirs_pcm, -1, 1), atol=1e-4)
    assert np.abs(theirs_pcm).max() > 1e-3
    assert len({tuple(c[0].tolist()) for c in decoded_codes}) > 3  # the frames really differ


def test_a_held_slot_is_not_stepped_until_started_then_answers_as_if_opened_then(kyutai_dir):
    frames = user_audio(6, seed=9)
    greedy = SlotOptions(seed=1, temperature=0.0, text_temperature=0.0)
    want_pcm, want_text = run_solo(kyutai_dir, frames, greedy)
    engine = MoshiEngine.from_pretrained(str(kyutai_dir), batch_size=1, device="cpu")
    engine.open(0, greedy, held=True)
    for noise in user_audio(4, seed=10):  # ticks before the client's first frame reach nothing
        out = engine.step(noise[None])
        assert not out.pcm_out.any() and out.text == [""]
    assert engine.is_ready(0) and engine.row_of(0) is None
    engine.start(0)
    outs = [engine.step(frame[None]) for frame in frames]
    np.testing.assert_array_equal(np.stack([o.pcm_out[0] for o in outs]), want_pcm)
    assert [o.text[0] for o in outs] == want_text


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # moshi's own torch.jit use
def test_an_encoder_reset_after_the_first_frame_is_kyutais_servers_skip(kyutai_dir):
    """Kyutai's server steps the model on the first frame, then resets Mimi's streaming state, so the
    second frame is encoded as a stream's first: `reset_encoder` after step 0 gives the same tokens."""
    pytest.importorskip(
        "moshi.models.loaders",
        reason="Kyutai's moshi package is not installed (pip install --no-deps moshi==0.2.13 einops)",
    )
    mimi, reference = kyutai_reference(kyutai_dir)
    audio = user_audio(8, seed=13)
    engine = MoshiEngine.from_pretrained(str(kyutai_dir), batch_size=1, device="cpu")
    engine.open(0, SlotOptions(seed=1, temperature=0.0, text_temperature=0.0))
    ours, theirs = [], []
    with torch.no_grad(), mimi.streaming(1), reference.streaming(1):
        for t, frame in enumerate(audio):
            ours.append(engine.step(frame[None]).text[0])
            codes = mimi.encode(torch.from_numpy(frame)[None, None])
            if t == 0:  # the server's skip: encoded, then Mimi starts over; the model still steps
                mimi.reset_streaming()
                engine.reset_encoder(0)
            tokens = reference.step(codes)
            theirs.append("" if tokens is None else engine.loaded.tokenizer.piece(int(tokens[0, 0, 0])))
    assert ours == theirs and any(ours)
