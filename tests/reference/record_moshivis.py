"""Record Kyutai's MoshiVis reference outputs on a tiny random checkpoint made with its own code.

Usage (kyutai-labs/moshivis checked out somewhere; `kyuteye_pt` is not on PyPI; it needs
torchvision and PyYAML beside this project's dependencies):

    PYTHONPATH=.:tests python tests/reference/record_moshivis.py /path/to/moshivis/kyuteye_pt \
        tests/data/moshivis_tiny

Builds `kyuteye`'s MoshiVis (its LM, shared gated cross-attention, `ImageProjection`) with a
tiny LM and a tiny SigLIP, random weights sharpened so greedy decisions have margins and the
image really moves the output, and writes the release layout: one `model.safetensors` with the
`image_prefix.*` keys and the LM under MoshiVis's names (the shared cross-attention once, under
layer 0), a tiny Mimi, a SentencePiece tokenizer, a config.json describing the model, two test
images, and `reference.json`: the reference's greedy [text, 8 assistant codes] per step for
tests/data/speech/q1.wav, per run (no image; an image from step xa_start; a second image from a
later step; the image removed). Images go through the reference server's own preprocessing
(`get_minimal_transforms(448)` + `to_tensor_and_normalize`) and K/V (`precompte_ca_kv`).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile
import torch

HERE = Path(__file__).resolve().parent
SPEECH = HERE.parents[0] / "data" / "speech"
USER_FRAMES = 48
SIGLIP = {  # wider than the LM: the projection is a real Linear (equal widths get an Identity)
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 448,
    "patch_size": 14,
}
# step -> the image conditioning every step from it on (None: no image)
RUNS = {
    "none": {},
    "a_from_16": {16: "image_a.png"},
    "a_from_0": {0: "image_a.png"},
    "b_from_0": {0: "image_b.png"},
    "a_then_b_at_24": {0: "image_a.png", 24: "image_b.png"},
    "a_then_none_at_24": {0: "image_a.png", 24: None},
}


def tiny_moshi_kwargs() -> dict:
    """MoshiVis's MoshiConfig fields for a tiny model (the same structure as the 7B)."""
    return {
        "dim": 32,
        "text_card": 48,
        "padding_token_id": 3,
        "n_q": 16,
        "dep_q": 8,
        "audio_card": 64,
        "num_heads": 2,
        "num_layers": 2,
        "hidden_scale": 4.125,
        "context": 200,
        "depformer_dim": 16,
        "depformer_dim_feedforward": int(4.125 * 16),
        "depformer_num_heads": 2,
        "depformer_num_layers": 2,
        "depformer_context": 8,
    }


def kyuteye_config(kyuteye_pt: Path):
    from kyuteye.config.kyuteye_config import KyuteyeConfig

    return KyuteyeConfig.from_yml(kyuteye_pt / "configs" / "moshika-vis.yaml"), KyuteyeConfig


def build_reference(kyuteye_pt: Path, seed: int = 0):
    """kyuteye's MoshiVisGen and ImageProjection with tiny sizes and sharpened random weights."""
    import kyuteye.models.image_projection as image_projection
    from kyuteye.models.moshivis import MoshiVisGen
    from transformers import SiglipVisionConfig, SiglipVisionModel

    base, config_class = kyuteye_config(kyuteye_pt)
    raw = base.to_dict() | tiny_moshi_kwargs()
    config = config_class(**{k: v for k, v in raw.items() if k not in ("aug_strategy",)})

    def tiny_encoder(*_args, **_kwargs):
        from kyuteye.modules.image_encoder import TrimmedFlexiViTWrapper

        siglip = SiglipVisionModel(SiglipVisionConfig(**SIGLIP, vision_use_head=False))
        return TrimmedFlexiViTWrapper(getattr(siglip, "vision_model", siglip), interpolate_pos_encoding=True)

    # the reference builds SigLIP-400M (1152 wide) unless told otherwise
    image_projection.load_image_encoder = tiny_encoder
    image_projection.ImageProjection.encoder_out_dim = property(lambda self: SIGLIP["hidden_size"])
    torch.manual_seed(seed)
    gen = MoshiVisGen.from_config(config, None, "cpu", torch.float32, use_sampling=False)
    projection = image_projection.ImageProjection(config, gen.model_dim, load_pretrained_encoder=False)
    sharpen(gen.lm_model, projection, seed + 1)
    return gen.eval(), projection.eval(), config


def sharpen(lm, projection, seed: int) -> None:
    """Weights scaled so activations stay O(1); output heads x6 (argmax margins); the image path
    strong enough that the gate opens (sigmoid(. - 4) would otherwise keep the image at ~2%)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in list(lm.named_parameters()) + [
            (f"image.{n}", p) for n, p in projection.named_parameters()
        ]:
            if name.endswith("alpha") and param.dim() == 3:  # RMS norm gains
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            elif "layer_norm" in name or "post_layernorm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                param.copy_(base + 0.1 * torch.randn(param.shape, generator=gen))
            elif "emb" in name and "patch_embedding" not in name:
                param.copy_(torch.randn(param.shape, generator=gen))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
            else:
                fan_in = math.prod(param.shape[1:])
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(fan_in))
        lm.llm.text_linear.weight.mul_(6.0)
        for linear in lm.audio_linears:
            linear.weight.mul_(6.0)
        for layer in lm.llm.transformer.layers:
            layer.cross_attention.gate.alpha[2].weight.mul_(8.0)
            layer.cross_attention.mha.out_proj.weight.mul_(2.0)


def release_state_dict(lm, projection) -> dict[str, torch.Tensor]:
    """The release layout: LM keys as MoshiVis names them, the shared cross-attention under layer 0
    only, the image side under `image_prefix.`."""
    state = {}
    for key, value in lm.state_dict().items():
        if ".cross_attention.mha." in key and not key.startswith("llm.transformer.layers.0."):
            continue
        state[key] = value.contiguous().clone()
    for key, value in projection.state_dict().items():
        state[f"image_prefix.{key}"] = value.contiguous().clone()
    return state


def write_images(out: Path) -> None:
    """Two small, different, non-square test pictures (smooth, so the PNGs stay small)."""
    from PIL import Image, ImageDraw

    a = Image.new("RGB", (320, 200), (30, 90, 200))
    draw = ImageDraw.Draw(a)
    draw.ellipse((40, 30, 200, 170), fill=(250, 210, 40))
    draw.rectangle((210, 60, 300, 180), fill=(200, 30, 40))
    a.save(out / "image_a.png")
    b = Image.new("RGB", (180, 260), (20, 160, 60))
    draw = ImageDraw.Draw(b)
    for i in range(0, 260, 40):
        draw.rectangle((0, i, 180, i + 18), fill=(240, 240, 240))
    draw.polygon([(90, 20), (170, 240), (10, 240)], fill=(120, 40, 160))
    b.save(out / "image_b.png")


def image_kv(gen, projection, path: Path):
    """The reference server's `extract_image`: decode, resize to 448, normalise, encode, K/V.

    Decoded with Pillow rather than torchvision's `decode_image` (whose C extension need not load
    here): for an RGB PNG both give the same pixels."""
    from kyuteye.modules.image_transforms import get_minimal_transforms
    from PIL import Image

    with Image.open(path) as picture:
        image = torch.from_numpy(np.asarray(picture.convert("RGB")).copy()).permute(2, 0, 1)
    image = get_minimal_transforms(448)(image)
    image = projection.to_tensor_and_normalize(image)[None]
    return gen.precompte_ca_kv(projection(image)["cross_attention_src"])


def user_frames() -> np.ndarray:
    audio, rate = soundfile.read(str(SPEECH / "q1.wav"), dtype="float32")
    assert rate == 24000, rate
    frames = np.zeros(USER_FRAMES * 1920, dtype=np.float32)
    frames[: min(len(audio), len(frames))] = audio[: len(frames)]
    return frames.reshape(USER_FRAMES, 1920)


def run(gen, mimi, kvs: dict, schedule: dict) -> list[list[int]]:
    """The reference server's loop: Mimi encode per frame, one step with the image K/V in force."""
    mimi.reset_streaming()
    gen.reset_streaming()
    current, out = None, []
    for step, frame in enumerate(user_frames()):
        if step in schedule:
            current = kvs[schedule[step]] if schedule[step] else None
        codes = mimi.encode(torch.from_numpy(frame)[None, None])
        tokens, _ = gen.step(codes[:, :, 0:1], ca_src=current)
        if tokens is not None:
            out.append([int(t) for t in tokens[0, :, 0]])
    return out


def main(kyuteye_pt: Path, out: Path) -> None:
    sys.path.insert(0, str(kyuteye_pt))
    sys.path.insert(0, str(HERE))
    import sentencepiece
    from moshi_fixtures import train_tiny_spm
    from record_personaplex import build_reference_mimi
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    gen, projection, config = build_reference(kyuteye_pt)
    save_file(release_state_dict(gen.lm_model, projection), str(out / "model.safetensors"))
    mimi = build_reference_mimi(out)
    spm = train_tiny_spm(out / "spm")
    shutil.copy(spm, out / "tokenizer.model")
    shutil.rmtree(out / "spm")
    sentencepiece.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    fuse = {
        k: getattr(config, k) for k in ("xa_gating", "xa_conditional_gating", "xa_shared", "xa_gate_shared")
    }
    (out / "config.json").write_text(
        json.dumps(
            dict(
                tiny_moshi_kwargs(),
                model_type="moshivis",
                encoder_name=config.encoder_name,
                image_encoder=SIGLIP,
                norm_xa=config.norm_xa,
                **fuse,
                model="model.safetensors",
                mimi_codec="tokenizer-mimi.safetensors",
                text_tokenizer="tokenizer.model",
                mimi_config_name="mimi_config.json",
            ),
            indent=1,
        )
    )
    write_images(out)
    with torch.no_grad():
        kvs = {name: image_kv(gen, projection, out / name) for name in ("image_a.png", "image_b.png")}
        mimi.streaming_forever(1)
        gen.streaming_forever(1)
        frames = {name: run(gen, mimi, kvs, schedule) for name, schedule in RUNS.items()}
    record = {
        "user": "tests/data/speech/q1.wav",
        "user_frames": USER_FRAMES,
        "note": "frames = the reference's step outputs [text, 8 assistant codes], greedy; "
        "runs: {step: image} from that step on (null: no image)",
        "runs": {name: {str(k): v for k, v in RUNS[name].items()} for name in RUNS},
        "frames": frames,
    }
    (out / "reference.json").write_text(json.dumps(record))
    plain = np.array(frames["none"])
    for name, got in frames.items():
        changed = float(np.mean(np.array(got) != plain))
        print(f"{name}: {len(got)} frames, {changed:.0%} of tokens differ from no image", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
