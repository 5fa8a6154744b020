"""PersonaPlex-family models: role and voice prompts, against NVIDIA's reference and batched.

tests/data/personaplex_tiny is a tiny random checkpoint made with NVIDIA's own code (its state-dict
names, a 16-step depth transformer), with a WAV voice, the `.pt` preset the reference saved from it,
and `reference.json`: the reference's greedy outputs for user.wav after a role prompt, per voice
(recorded by tests/reference/record_personaplex.py). The reference spends its first step filling
position 0 and so hears each user frame one step later than this engine: its output k + 1 is our
output k, and its first output (the prompt's last silence frame) has no counterpart here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from assistant.backends.moshi import MoshiEngine
from assistant.engine import SlotOptions
from assistant.moshi.prompts import PromptError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).parent / "data" / "personaplex_tiny"
REFERENCE = json.loads((DATA / "reference.json").read_text())
ROLE = REFERENCE["role"]


def engine(batch_size: int = 1, source: Path = DATA, **options) -> MoshiEngine:
    return MoshiEngine.from_pretrained(
        str(source),
        batch_size=batch_size,
        device="cpu",
        temperature=0.0,
        text_temperature=0.0,
        compile=False,
        **options,
    )


def opened(eng: MoshiEngine, options: SlotOptions, slot: int = 0) -> MoshiEngine:
    """Open `slot` and feed its prompt now (an engine does it in its next steps)."""
    eng.open(slot, options)
    eng.finish_prompts()
    assert eng.is_ready(slot)
    return eng


def user_frames(path: Path = DATA / "user.wav") -> np.ndarray:
    audio, rate = soundfile.read(str(path), dtype="float32")
    assert rate == 24000
    n = -(-len(audio) // 1920)
    padded = np.zeros(n * 1920, dtype=np.float32)
    padded[: len(audio)] = audio
    return padded.reshape(n, 1920)


def token_frames(eng: MoshiEngine, frames: np.ndarray) -> list[list[int]]:
    """[text, 8 assistant codes] per frame of slot 0, from the engine's own codec and LM."""
    out = []
    for frame in frames:
        codes = eng.codec.encode(frame[None])
        step = eng.lm.step(codes, eng._sampling_tensors(1))
        out.append([int(step.text[0]), *(int(c) for c in step.audio[0])])
    return out


@pytest.fixture(scope="module")
def loaded():
    from assistant.moshi.loading import load_moshi

    return load_moshi(str(DATA), device="cpu", dtype=torch.float32)


def test_checkpoint_is_detected_as_personaplex_with_its_voices(loaded):
    assert loaded.model_type == "personaplex" and loaded.takes_prompts
    assert sorted(loaded.voices) == ["TINYF0.pt", "TINYF0.wav"]
    # the reference's 16-step depth transformer: only the assistant's 8 steps are kept
    assert loaded.model.depth_decoder.config.num_codebooks == 8


@pytest.mark.parametrize("prefill", ["fast", "stepwise"])
@pytest.mark.parametrize("voice", ["TINYF0.wav", "TINYF0.pt"])
def test_greedy_tokens_equal_nvidias_reference(voice, prefill):
    eng = opened(engine(prefill=prefill, prefill_chunk=16), SlotOptions(instructions=ROLE, voice=voice))
    want = REFERENCE["frames"][voice][1:]
    got = token_frames(eng, user_frames())[: len(want)]
    assert got == want


def test_a_held_slot_takes_its_prompt_then_waits_for_its_first_frame_and_equals_the_reference():
    eng = engine(prefill_chunk=16)
    eng.open(0, SlotOptions(instructions=ROLE, voice="TINYF0.wav"), held=True)
    for _ in range(3):  # the prompt goes in at the first step; the slot then waits, unstepped
        out = eng.step(np.full((1, 1920), 0.1, np.float32))
        assert not out.pcm_out.any()
    assert eng.is_ready(0) and eng.row_of(0) is None
    eng.start(0)
    want = REFERENCE["frames"]["TINYF0.wav"][1:]
    assert token_frames(eng, user_frames())[: len(want)] == want


def test_a_config_with_metadata_the_loader_never_saw_loads_and_equals_the_reference(tmp_path, caplog):
    import logging
    import shutil

    from assistant.moshi.checkpoint import CheckpointError
    from assistant.moshi.loading import load_moshi

    copy = tmp_path / "personaplex_tiny"
    shutil.copytree(DATA, copy)
    config = json.loads((DATA / "config.json").read_text())
    metadata = {"release": "2026-01", "trained_by": "NVIDIA", "notes": {"steps": 1000}}
    (copy / "config.json").write_text(json.dumps(config | metadata))
    with caplog.at_level(logging.INFO, logger="assistant.moshi.kyutai"):
        eng = engine(source=copy, prefill_chunk=16)
        engine(source=copy)  # a second load says nothing new
    ignored = [r for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(ignored) == 1 and ignored[0].levelno == logging.INFO
    assert all(key in ignored[0].getMessage() for key in metadata)
    opened(eng, SlotOptions(instructions=ROLE, voice="TINYF0.wav"))
    want = REFERENCE["frames"]["TINYF0.wav"][1:]
    assert token_frames(eng, user_frames())[: len(want)] == want
    # a key that may change the architecture is still refused, by name
    (copy / "config.json").write_text(json.dumps(config | metadata | {"depformer_kv_heads": 1}))
    with pytest.raises(
        CheckpointError, match=r"unknown keys \['depformer_kv_heads'\] that may change the model"
    ):
        load_moshi(copy, device="cpu")


def test_respond_with_instructions_and_voice_answers_like_the_reference(tmp_path):
    from assistant.cli import main
    from audio.mimi.codec import StreamingMimi

    out, text = tmp_path / "reply.wav", tmp_path / "reply.txt"
    code = main(
        [
            "respond",
            "--model",
            str(DATA),
            "--input",
            str(DATA / "user.wav"),
            "--output",
            str(out),
            "--text-output",
            str(text),
            "--instructions",
            ROLE,
            "--voice",
            "TINYF0",
            "--temperature",
            "0",
            "--tail-seconds",
            "0",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    want = REFERENCE["frames"]["TINYF0.wav"][1:]
    eng = engine()
    # respond answers every input frame; the reference's outputs stop one frame short (see above)
    said, expected_text = text.read_text().strip(), eng.loaded.tokenizer.decode([f[0] for f in want]).strip()
    assert said.startswith(expected_text) and len(said) - len(expected_text) <= 8
    codec = StreamingMimi(eng.codec.model, 1, num_codebooks=8)
    expected = np.concatenate([codec.decode(torch.tensor([f[1:]]))[0].numpy() for f in want])
    reply, _ = soundfile.read(str(out), dtype="float32")
    np.testing.assert_allclose(reply[: expected.size], np.clip(expected, -1, 1), atol=2 / 32768)


def test_fast_prefill_equals_stepwise_and_the_voice_prefix_is_reused():
    fast, slow = engine(prefill="fast", prefill_chunk=5), engine(prefill="stepwise")
    options = SlotOptions(instructions="Talk about music and films.", voice="TINYF0.wav")
    opened(fast, options)
    opened(slow, options)
    length = int(fast.lm.offsets[0])
    assert length == int(slow.lm.offsets[0]) > 20
    for a, b in zip(fast.lm.kv.keys + fast.lm.kv.values, slow.lm.kv.keys + slow.lm.kv.values, strict=True):
        torch.testing.assert_close(a[0, :, :length], b[0, :, :length], atol=1e-5, rtol=1e-5)
    assert torch.equal(fast.lm.tokens[0], slow.lm.tokens[0])
    frames = user_frames()[:12]
    first = token_frames(fast, frames)
    assert first == token_frames(slow, frames)
    # a second conversation with the same voice starts from the remembered voice prefix
    fast.close(0)
    assert "TINYF0.wav" in fast.prompter._prefixes
    opened(fast, options)
    assert token_frames(fast, frames) == first


def test_four_slots_with_different_prompts_opening_at_different_frames_each_equal_their_solo_run():
    prompts = [
        SlotOptions(instructions=ROLE, voice="TINYF0.wav"),
        SlotOptions(instructions="You are a pirate. Talk about the sea.", voice="TINYF0.pt"),
        SlotOptions(instructions=None, voice=str(DATA / "voices" / "TINYF0.wav")),
        SlotOptions(instructions="Talk about films.", voice=None),
    ]
    user = user_frames()
    batched = engine(batch_size=4, prefill_chunk=8)  # prompts of 40-90 frames take several ticks here
    opened_at = [0, 2, 3, 7]
    consumed: list[list[np.ndarray]] = [[] for _ in prompts]
    outputs: list[list[tuple[np.ndarray, str]]] = [[] for _ in prompts]
    waited = [0] * len(prompts)
    # A prompt joining live conversations goes in at 4 to 8 positions a tick, as the frame's spare time
    # allows (on a busy CPU, 4): go on until every slot has answered a dozen frames.
    tick = 0
    while min(map(len, outputs)) < 12:
        assert tick < 200, [len(o) for o in outputs]
        for slot, at in enumerate(opened_at):
            if tick == at:
                batched.open(slot, prompts[slot])
        pcm_in = np.zeros((4, 1920), dtype=np.float32)
        ready = [batched.live[s] and batched.is_ready(s) for s in range(4)]
        for slot, at in enumerate(opened_at):
            if tick >= at:
                pcm_in[slot] = user[(tick - at) % len(user)]
                if ready[slot]:
                    consumed[slot].append(pcm_in[slot].copy())
                elif batched.live[slot]:
                    waited[slot] += 1
        out = batched.step(pcm_in)
        for slot in range(4):
            if ready[slot]:
                outputs[slot].append((out.pcm_out[slot].copy(), out.text[slot]))
        tick += 1
    assert max(waited) > 0, "a prompt joining live conversations should have been spread over ticks"
    assert [len(c) for c in consumed] == [len(o) for o in outputs]
    for slot, options in enumerate(prompts):
        solo = opened(engine(), options)
        for frame, (pcm, text) in zip(consumed[slot][:12], outputs[slot][:12], strict=True):
            step = solo.step(frame[None])
            assert step.text[0] == text
            np.testing.assert_allclose(step.pcm_out[0], pcm, atol=1e-4)


def test_bad_prompts_are_refused_with_a_reason_before_anything_changes():
    eng = engine()
    with pytest.raises(PromptError, match="unknown voice 'NOBODY'.*TINYF0"):
        eng.open(0, SlotOptions(voice="NOBODY"))
    assert not eng.live[0]
    with pytest.raises(PromptError, match="remembers 200"):
        eng.check_prompt("talk " * 300, None)
    opened(eng, SlotOptions(instructions=ROLE))
    with pytest.raises(PromptError, match="unknown voice"):
        eng.update(0, SlotOptions(instructions=ROLE, voice="NOBODY"))
    assert eng.is_ready(0)


def test_a_new_prompt_mid_session_starts_the_model_over_with_it():
    eng = opened(engine(), SlotOptions(instructions=ROLE, voice="TINYF0.wav"))
    token_frames(eng, user_frames()[:5])
    position = int(eng.lm.offsets[0])
    eng.update(0, SlotOptions(instructions=f"  {ROLE} ", voice="TINYF0.wav"))  # the same prompt: no restart
    assert eng.is_ready(0) and int(eng.lm.offsets[0]) == position
    eng.update(0, SlotOptions(instructions=ROLE + " ", voice="TINYF0.pt"))
    assert not eng.is_ready(0)  # the new prompt is fed by the next step
    eng.finish_prompts()
    want = REFERENCE["frames"]["TINYF0.pt"][1:]
    assert token_frames(eng, user_frames())[: len(want)] == want


def test_plain_moshi_takes_no_prompt_and_steps_without_deprecated_arguments():
    import warnings

    plain = MoshiEngine.from_pretrained("tiny", batch_size=1, device="cpu", compile=False, warm_up=False)
    assert not plain.takes_prompts and plain.voices() == []
    plain.open(0, SlotOptions(instructions="ignored by a model without prompts"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain.step(np.zeros((1, 1920), dtype=np.float32))
    assert not [w for w in caught if "past_key_values" in str(w.message)]


async def test_talk_local_gives_the_engine_its_instructions_and_voice():
    import asyncio

    from client.errors import TalkError
    from client.local import LocalConversation

    eng = engine()
    conv = LocalConversation(eng, 24000, instructions=ROLE, voice="TINYF0.pt")
    for frame in user_frames()[:3]:
        await conv.send_audio(frame)
    for _ in range(200):
        if eng.live[0] and eng.is_ready(0):
            break
        await asyncio.sleep(0.01)
    assert eng._prompt_of[0] == (ROLE, "TINYF0.pt") and eng.is_ready(0)
    await conv.end()
    with pytest.raises(TalkError, match="unknown voice 'NOBODY'"):
        LocalConversation(engine(), 24000, voice="NOBODY")


def test_bench_prefill_reports_both_modes_and_the_clock(capsys):
    from assistant.cli import main

    args = ["bench", "prefill", "--model", "tiny-personaplex", "--device", "cpu", "--prompt-frames", "40"]
    args += ["--live", "1", "--joining", "1", "--ticks", "15", "--repeats", "1", "--chunk", "16", "--json"]
    assert main(args) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["prompt"]["fast"]["frames"] == figures["prompt"]["stepwise"]["frames"] == 40
    assert figures["prompt"]["fast"]["ms"] < figures["prompt"]["stepwise"]["ms"]
    none, joined = figures["clock"]
    assert none["joining"] == 0 and joined["joining"] == 1
    # 40 positions while another session is live: between 4 and 16 a tick, however busy the CPU (the
    # spare time of a frame sets how many); the run goes on until the prompt is in.
    assert math.ceil(40 / 16) <= joined["ticks_to_ready"][0] <= math.ceil(40 / 4)
    assert joined["ticks"] >= 15 and none["ticks"] == 15


def test_voice_prefixes_are_bounded_least_recently_used_first(tmp_path, monkeypatch):
    import shutil

    from assistant.moshi import persona

    monkeypatch.setattr(persona, "MAX_VOICE_PREFIXES", 2)
    eng = engine()
    names = []
    for k in range(3):
        path = tmp_path / f"voice{k}.wav"
        shutil.copy(DATA / "voices" / "TINYF0.wav", path)
        names.append(str(path.resolve()))
        opened(eng, SlotOptions(voice=str(path)))
        eng.close(0)
    assert list(eng.prompter._prefixes) == names[1:]


def test_a_prompt_that_fails_ends_only_its_own_slot(tmp_path):
    silent = tmp_path / "silent.wav"
    soundfile.write(str(silent), np.zeros(24000, dtype=np.float32), 24000)
    eng = opened(engine(batch_size=2), SlotOptions(instructions=ROLE, voice="TINYF0.pt"))
    eng.open(1, SlotOptions(voice=str(silent)))  # readable, so accepted; silent, so it cannot be a voice
    frames = user_frames()
    out = eng.step(np.stack([frames[0], frames[0]]))
    assert list(out.failed) == [1] and "silent" in out.failed[1]
    assert not eng.is_ready(1)
    assert eng.step(np.stack([frames[1], frames[1]])).failed == {}  # reported once; slot 0 goes on
    assert eng.is_ready(0) and int(eng.lm.offsets[eng.row_of(0)]) > 0
    eng.close(1)
    with pytest.raises(RuntimeError, match="could not be fed.*silent"):
        opened(eng, SlotOptions(voice=str(silent)), slot=1)
