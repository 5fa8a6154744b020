"""MoshiVis: images during a call, against Kyutai's kyuteye_pt and batched.

tests/data/moshivis_tiny is a tiny random MoshiVis made with Kyutai's own code (release layout,
recorded by tests/reference/record_moshivis.py), with two test images and `reference.json`: the
reference's greedy [text, 8 assistant codes] per output frame for the first 48 frames of
tests/data/speech/q1.wav, in six runs (no image; image A from step 16 as Kyutai's client does;
A or B from step 0; A then B from step 24; A then none from step 24). The image changes most
tokens of the tiny model (see `test_the_image_changes_what_the_model_says`), so equality here
means the image was seen exactly as the reference sees it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from assistant.backends.moshi import MoshiEngine

DATA = Path(__file__).parent / "data" / "moshivis_tiny"
SPEECH = Path(__file__).parent / "data" / "speech"
REFERENCE = json.loads((DATA / "reference.json").read_text())
IMAGES = {name: (DATA / name).read_bytes() for name in ("image_a.png", "image_b.png")}


def engine(batch_size: int = 1, **options) -> MoshiEngine:
    options = {"compile": False, **options}
    return MoshiEngine.from_pretrained(
        str(DATA), batch_size=batch_size, device="cpu", temperature=0.0, text_temperature=0.0, **options
    )


def speech(name: str = "q1.wav", frames: int = REFERENCE["user_frames"]) -> np.ndarray:
    audio, rate = soundfile.read(str(SPEECH / name), dtype="float32")
    assert rate == 24000
    out = np.zeros(frames * 1920, dtype=np.float32)
    out[: min(len(audio), len(out))] = audio[: len(out)]
    return out.reshape(frames, 1920)


def schedule_of(run: str) -> dict[int, str | None]:
    """A reference run's {step: image file or None}, the image counting from that very step."""
    return {int(step): name for step, name in REFERENCE["runs"][run].items()}


class Recorder:
    """Runs a MoshiEngine through its real step and keeps each slot's [text, 8 codes] frames."""

    def __init__(self, eng: MoshiEngine):
        self.eng = eng
        self.frames: dict[int, list[list[int]]] = {}
        self.text: dict[int, list[str]] = {}
        self.pcm: dict[int, list[np.ndarray]] = {}
        step = eng.runner.lm_step

        def recording_step(bucket, *args, **kwargs):
            out = step(bucket, *args, **kwargs)
            for slot in range(eng.batch_size):
                row = eng.row_of(slot)
                if row is not None and bool(out.ready[row]):
                    frame = [int(out.text[row]), *(int(c) for c in out.audio[row])]
                    self.frames.setdefault(slot, []).append(frame)
            return out

        eng.runner.lm_step = recording_step

    def step(self, pcm: np.ndarray) -> None:
        out = self.eng.step(pcm)
        for slot in range(self.eng.batch_size):
            if self.eng.live[slot]:
                self.text.setdefault(slot, []).append(out.text[slot])
                self.pcm.setdefault(slot, []).append(out.pcm_out[slot].copy())


def show(eng: MoshiEngine, slot: int, name: str | None, start_frame: int) -> None:
    """Give `slot` an image (or remove it) and encode it now, so it is in force from the next step."""
    eng.set_image(slot, eng.check_image(IMAGES[name]) if name else None, start_frame=start_frame)
    eng.finish_prompts()


def test_checkpoint_loads_as_a_vision_model():
    eng = engine()
    assert eng.takes_images and eng.loaded.model_type == "moshivis"
    assert eng.loaded.vision.num_tokens == 1024 and eng.loaded.vision.image_size == 448
    assert eng.describe()["takes_images"] is True


@pytest.mark.parametrize("run", sorted(REFERENCE["runs"]))
def test_greedy_tokens_equal_kyutais_reference(run):
    """No image, an image from xa_start = 16, images from step 0, a second image mid-way, the
    image removed mid-way: every output frame's text and 8 audio codes equal kyuteye_pt's."""
    schedule = schedule_of(run)
    # the reference's "a_from_16" hands the image over at once and counts it from step 16
    start = 16 if run == "a_from_16" else 0
    if run == "a_from_16":
        schedule = {0: "image_a.png"}
    eng = engine()
    rec = Recorder(eng)
    eng.open(0)
    for step, frame in enumerate(speech()):
        if step in schedule:
            show(eng, 0, schedule[step], start if step == 0 else 0)
        rec.step(frame[None])
    assert rec.frames[0] == REFERENCE["frames"][run]


def test_an_image_given_to_a_held_slot_counts_from_its_first_step():
    """The server opens a slot held until the client's first audio; an image encoded meanwhile
    (a MoshiVis client sends it first) is in force from the first step, as in the reference."""
    eng = engine()
    rec = Recorder(eng)
    eng.open(0, held=True)
    show(eng, 0, "image_a.png", 0)
    eng.start(0)
    for frame in speech():
        rec.step(frame[None])
    assert rec.frames[0] == REFERENCE["frames"]["a_from_0"]


def test_the_image_changes_what_the_model_says():
    """The fixture is discriminative: an image changes most tokens, and two images differ."""
    plain = np.array(REFERENCE["frames"]["none"])
    a, b = np.array(REFERENCE["frames"]["a_from_0"]), np.array(REFERENCE["frames"]["b_from_0"])
    assert np.mean(a != plain) > 0.5 and np.mean(b != plain) > 0.5 and np.mean(a != b) > 0.5
    later = np.array(REFERENCE["frames"]["a_from_16"])
    # xa_start = 16: the image first shows in output frame 15 (its codebooks 1-7 come from step 16)
    assert (later[:15] == plain[:15]).all() and (later[15:] != plain[15:]).any()


def test_four_rows_batched_equal_their_solo_runs():
    """Rows with image A, image B, no image, and one joining late with image A (counting from its
    own frame 16) share every step; each row's text, codes and audio equal its run alone."""
    frames = speech()
    other = speech("q2.wav")
    late = 10
    eng = engine(batch_size=4)
    rec = Recorder(eng)
    for slot in range(3):
        eng.open(slot)
    show(eng, 0, "image_a.png", 0)
    show(eng, 1, "image_b.png", 0)
    for step in range(len(frames)):
        if step == late:
            eng.open(3)
            show(eng, 3, "image_a.png", 16)
        pcm = np.stack(
            [frames[step], frames[step], other[step], frames[step - late] if step >= late else other[0]]
        )
        rec.step(pcm)

    def alone(name: str | None, audio: np.ndarray, start: int, steps: int) -> Recorder:
        single = engine()
        r = Recorder(single)
        single.open(0)
        if name:
            show(single, 0, name, start)
        for frame in audio[:steps]:
            r.step(frame[None])
        return r

    expected = {
        0: alone("image_a.png", frames, 0, len(frames)),
        1: alone("image_b.png", frames, 0, len(frames)),
        2: alone(None, other, 0, len(frames)),
        3: alone("image_a.png", frames, 16, len(frames) - late),
    }
    for slot, want in expected.items():
        assert rec.frames[slot] == want.frames[0], f"row {slot}"
        assert rec.text[slot] == want.text[0], f"row {slot}"
        np.testing.assert_allclose(
            np.array(rec.pcm[slot]), np.array(want.pcm[0]), atol=1e-4, err_msg=f"row {slot}"
        )
    assert rec.frames[0] != rec.frames[1] and rec.frames[0][:20] != rec.frames[2][:20]
    assert rec.frames[0] == REFERENCE["frames"]["a_from_0"]


def two_rows_with_images(eng: MoshiEngine, frames: np.ndarray) -> tuple[list[list[str]], np.ndarray]:
    """Two rows: image A from step 4 (counting from step 6), image B from step 12; text and audio."""
    eng.open(0)
    eng.open(1)
    texts, pcm = [], []
    for step, frame in enumerate(frames):
        if step == 4:
            show(eng, 0, "image_a.png", 6)
        if step == 12:
            show(eng, 1, "image_b.png", 0)
        out = eng.step(np.stack([frame, frame]))
        texts.append(out.text)
        pcm.append(out.pcm_out.copy())
    return texts, np.array(pcm)


def test_compiled_step_with_images_has_no_graph_breaks_and_equals_the_eager_step(monkeypatch):
    """The compiled / captured step always computes the cross-attention and masks rows without an
    image in force (static shapes); the eager step skips it when no row has one. Same output."""
    from torch._dynamo.utils import counters

    frames = speech(frames=24)
    eager = two_rows_with_images(engine(batch_size=2), frames)
    monkeypatch.setenv("ASSISTANT_COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    compiled_engine = engine(batch_size=2, compile=True)
    assert compiled_engine.describe()["step_mode"] == "torch-compile"
    compiled = two_rows_with_images(compiled_engine, frames)
    assert not counters["graph_break"]
    assert compiled[0] == eager[0]
    np.testing.assert_allclose(compiled[1], eager[1], rtol=0, atol=2e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_with_images_equal_the_eager_step_on_cuda():
    """On a GPU: each bucket's captured step (cross-attention masked per row) gives what eager kernels give."""
    frames = speech(frames=24)
    options = {
        "batch_size": 2,
        "device": "cuda",
        "dtype": "fp32",
        "temperature": 0.0,
        "text_temperature": 0.0,
    }
    eager = two_rows_with_images(MoshiEngine.from_pretrained(str(DATA), compile=False, **options), frames)
    graphed_engine = MoshiEngine.from_pretrained(str(DATA), compile=True, **options)
    assert graphed_engine.describe()["step_mode"] == "cuda-graphs"
    graphed = two_rows_with_images(graphed_engine, frames)
    assert graphed_engine.runner.eager_fallbacks == 0
    assert graphed[0] == eager[0]
    np.testing.assert_allclose(graphed[1], eager[1], rtol=0, atol=2e-5)


def test_an_image_is_encoded_in_stages_across_ticks_and_counts_from_the_step_after():
    """With no spare time each tick runs one encoder stage; the row keeps plain Moshi's output
    until the last stage, then the image counts from its next step."""
    eng = engine()
    plain = engine()
    eng.open(0)
    plain.open(0)
    frames = speech(frames=30)
    for frame in frames[:18]:
        eng.step(frame[None])
        plain.step(frame[None])
    eng.set_image(0, eng.check_image(IMAGES["image_a.png"]))
    stages = eng.loaded.vision.encoder.num_stages
    for _ in range(stages):
        assert eng.image_status(0) == "encoding"
        eng.images.advance(eng.row_of, budget_ms=0.0)
    assert eng.image_status(0) == "set"
    outs = [(eng.step(f[None]), plain.step(f[None])) for f in frames[18:]]
    assert any(a.text[0] != b.text[0] or not np.allclose(a.pcm_out, b.pcm_out) for a, b in outs)


def test_removing_the_image_returns_to_plain_moshi_from_the_next_step():
    """A then nothing: the steps after the removal are plain Moshi steps over the same history
    (the reference's "a_then_none_at_24": no cross-attention from step 24 on), while another row
    of the batch keeps its image (so the batch still runs the cross-attention, masked)."""
    eng = engine(batch_size=2)
    rec = Recorder(eng)
    eng.open(0)
    eng.open(1)
    show(eng, 1, "image_b.png", 0)
    for step, frame in enumerate(speech()):
        if step == 0:
            show(eng, 0, "image_a.png", 0)
        if step == 24:
            eng.set_image(0, None)
            assert eng.image_status(0) == "none" and eng.image_status(1) == "set"
        rec.step(np.stack([frame, frame]))
    assert rec.frames[0] == REFERENCE["frames"]["a_then_none_at_24"]
    assert rec.frames[1] == REFERENCE["frames"]["b_from_0"]


def test_a_vision_model_has_no_prompt_to_pin_and_slides_under_either_context_policy():
    """Past a 16-frame window with an image in force, pin (the default) and slide say the same:
    a vision model's context holds only the conversation, and its image is outside it."""
    from assistant.moshi.vision_lm import streaming_lm

    said = {}
    for policy in ("pin", "slide"):
        eng = engine(context=16, context_policy=policy)
        assert not eng.lm.pin_prompts
        rec = Recorder(eng)
        eng.open(0)
        show(eng, 0, "image_a.png", 0)
        for frame in speech():
            rec.step(frame[None])
        said[policy] = rec.frames[0]
    assert len(said["pin"]) > 2 * 16 and said["pin"] == said["slide"]  # well past the window
    with pytest.raises(ValueError, match="nothing to pin"):
        streaming_lm(eng.loaded, 1, context=16, pin_prompts=True)


def test_images_go_through_the_frame_loop_queue():
    """SlotHandle.set_image is queued like update: applied at the next tick, encoded after its step."""
    from assistant.scheduler import Scheduler

    eng = engine()
    scheduler = Scheduler(eng, grace_ms=0.0)
    slot = scheduler.reserve()

    class Session:
        def take_frame(self):
            return np.zeros(1920, dtype=np.float32)

        def deliver(self, *args):
            pass

        def check_limits(self, now):
            pass

        def end(self, reason):
            pass

    slot.attach(Session())
    image = slot.check_image(IMAGES["image_b.png"])
    assert slot.takes_images and image.width == 180 and image.height == 260 and image.format == "PNG"
    slot.set_image(image)
    assert slot.image_status() == "none"  # nothing happens until the next tick
    for _ in range(10):  # the tiny encoder fits one tick's spare time; a loaded box may need more
        scheduler.step_now()
        if slot.image_status() == "set":
            break
    assert slot.image_status() == "set"
    slot.set_image(None)
    scheduler.step_now()
    assert slot.image_status() == "none"
    slot.release()
    scheduler.shutdown()


def test_respond_with_an_image_answers_differently(tmp_path):
    from assistant.cli import main

    def respond(*extra: str) -> str:
        text = tmp_path / "reply.txt"
        args = ["respond", "--model", str(DATA), "--input", str(SPEECH / "q1.wav")]
        args += ["--output", str(tmp_path / "reply.wav"), "--text-output", str(text), "--temperature", "0"]
        assert main([*args, "--tail-seconds", "0", "--device", "cpu", *extra]) == 0
        return text.read_text()

    plain = respond()
    late = respond("--image", str(DATA / "image_a.png"), "--image-at", "3.0")
    assert late != plain
    # shown 3 s in, the image cannot change what was said before: the texts share that much
    assert late[:8] == plain[:8]


def test_the_release_layout_is_recognised_by_its_weights(tmp_path):
    """Kyutai's repo has no config.json saying what it is: the image side in the weights says it."""
    import shutil

    from assistant.moshi.loading import load_moshi

    for item in DATA.iterdir():
        shutil.copy(item, tmp_path / item.name)
    config = json.loads((DATA / "config.json").read_text())
    del config["model_type"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_moshi(str(tmp_path), device="cpu")
    assert loaded.model_type == "moshivis" and loaded.takes_images


def test_moshika_vis_is_listed_with_images(capsys):
    from assistant.cli import main

    assert main(["models", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    vis = listed["moshika-vis"]
    assert vis["repo_id"] == "kyutai/moshika-vis-pytorch-bf16" and vis["takes_images"] is True
    assert vis["approx_size_gb"] == 17.0 and vis["licence"].startswith("CC-BY 4.0")
    assert listed["moshiko"]["takes_images"] is False
