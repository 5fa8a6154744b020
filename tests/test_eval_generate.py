"""output.wav in-process (batched, time-aligned) and the scenario set it is made from."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from assistant.backends.scripted import ScriptedEngine
from assistant.backends.silence import SilenceEngine
from assistant.eval import scenarios
from assistant.eval.dataset import TASKS, read_sample
from assistant.eval.generate import generate_in_process
from assistant.eval.score import merge_segments
from assistant.eval.segments import speech_segments
from assistant.offline import run_offline, run_offline_batch
from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ
from audio.resample import resample


class Echo(SilenceEngine):
    """Says back, at half volume, each input frame in the step that hears it."""

    def _step(self, pcm_in):
        out = super()._step(pcm_in)
        out.pcm_out[:] = pcm_in * 0.5
        return out


def test_a_batch_of_recordings_gives_each_the_answer_it_gets_alone(tmp_path):
    # Two questions of different lengths, with room for the scripted reply after each.
    questions = ("What is the weather like?", "Could you recommend a good book to read, please?")
    silence = np.zeros(3 * 16000, np.float32)
    users = [resample(np.concatenate([scenarios.say(q, tmp_path), silence]), 16000, 24000) for q in questions]
    together = run_offline_batch(ScriptedEngine(2), users)
    for user, batched in zip(users, together, strict=True):
        alone = run_offline(ScriptedEngine(1), user)
        assert np.abs(alone.assistant).max() > 0.1  # it did answer
        np.testing.assert_array_equal(batched.assistant, alone.assistant)
        assert batched.text == alone.text


def test_output_wav_has_the_inputs_length_and_is_heard_one_frame_after_its_input(tmp_path):
    folder = tmp_path / "1"
    folder.mkdir()
    rng = np.random.default_rng(0)
    user_16k = rng.uniform(-0.5, 0.5, 16000 * 2 + 123).astype(np.float32)  # 2.0077 s, not whole frames
    sf.write(str(folder / "input.wav"), user_16k, 16000, subtype="PCM_16")
    sample = read_sample(folder, TASKS["backchannel"], folder)
    done = []
    generate_in_process(Echo(4), [sample], on_done=lambda s, error: done.append((s.id, error)))
    assert done == [("1", None)]

    output, rate = sf.read(str(sample.output_wav), dtype="float32")
    heard_input, _ = sf.read(str(folder / "input.wav"), dtype="float32")
    user_24k = resample(heard_input, 16000, SAMPLE_RATE_HZ)
    assert rate == SAMPLE_RATE_HZ and output.shape[0] == user_24k.shape[0]  # same duration as the input
    np.testing.assert_array_equal(output[:FRAME_SAMPLES], 0.0)  # nothing is heard before frame 0 is done
    np.testing.assert_allclose(output[FRAME_SAMPLES:], 0.5 * user_24k[:-FRAME_SAMPLES], atol=2e-4)


def test_scenario_times_match_their_audio_and_the_set_is_built_once(tmp_path):
    folders = scenarios.build(tmp_path, kinds=("interrupt", "turn"))
    assert [f.name for f in folders["interrupt"]] == ["0", "1"]
    folder = folders["interrupt"][1]
    (stamp,) = json.loads((folder / "interrupt.json").read_text())
    audio, rate = sf.read(str(folder / "input.wav"), dtype="float32")
    assert rate == 16000
    # Pauses at its commas split the interruption; v1.5's 0.6 s merge joins it again.
    question, interruption = merge_segments(speech_segments(audio), 0.6)[-2:]
    assert np.allclose(interruption, stamp["timestamp"], atol=0.15)
    # The interruption comes after_s = 3.0 s after the question ends.
    assert abs(interruption[0] - question[1] - scenarios.SPECS["interrupt"][1]["after_s"]) < 0.15
    sample = read_sample(folders["turn"][0], TASKS["smooth_turn_taking"], tmp_path / "out")
    turn_audio, _ = sf.read(str(sample.input_wav), dtype="float32")
    assert abs(sample.event_s - speech_segments(turn_audio)[-1][1]) < 0.15  # where the question ends

    made = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("input.wav")}
    scenarios.build(tmp_path, kinds=("interrupt", "turn"))
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("input.wav")} == made  # cached
