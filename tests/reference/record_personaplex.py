"""Record NVIDIA PersonaPlex's reference outputs on a tiny random checkpoint made with its own code.

Usage (NVIDIA/personaplex's `moshi/` folder checked out somewhere; it is not on PyPI):

    PYTHONPATH=/path/to/personaplex/moshi:tests .venv/bin/python tests/reference/record_personaplex.py \
        tests/data/personaplex_tiny

Writes the checkpoint (PersonaPlex's own state-dict names, a 16-step depth transformer, Kyutai's
legacy Mimi names, a SentencePiece tokenizer, config.json describing the architecture), a WAV
voice and the `.pt` preset the reference saves from it, and `reference.json`: the reference's
greedy text and assistant codes for a user WAV after a role prompt, once per voice. The tests
compare the engine with these recordings; only this script needs the reference code.
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

ROLE = "You are a tiny model for tests. Talk about music and films."
VOICE_SECONDS = 1.2
USER_SECONDS = 2.4
SPEECH_DIR = Path(__file__).resolve().parents[1] / "data" / "speech"


def tiny_kwargs() -> dict:
    from moshi_fixtures import tiny_kyutai_kwargs

    return tiny_kyutai_kwargs(dep_q=16, context=200)


def build_reference_lm(kwargs: dict, seed: int = 0):
    """PersonaPlex's LMModel with random weights, scaled like the tests' random models (clear argmax margins)."""
    from moshi.models.lm import LMModel

    torch.manual_seed(seed)
    model = LMModel(device="cpu", dtype=torch.float32, **kwargs).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("alpha"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            elif "emb" in name:
                param.copy_(torch.randn(param.shape, generator=gen))
            else:
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(param.shape[-1]))
        model.text_linear.weight.mul_(6.0)
        for linear in model.linears:
            linear.weight.mul_(6.0)
    return model


def build_reference_mimi(out: Path):
    """A tiny random Mimi, written as Kyutai's file, loaded into PersonaPlex's MimiModel."""
    from model_fixtures import kyutai_mimi_kwargs, kyutai_mimi_state_dict, random_mimi, tiny_mimi_config
    from moshi.models.compression import MimiModel
    from moshi.modules import SEANetDecoder, SEANetEncoder, transformer
    from moshi.quantization import SplitResidualVectorQuantizer
    from safetensors.torch import save_file

    config = tiny_mimi_config()
    kw = kyutai_mimi_kwargs(config)
    encoder = SEANetEncoder(**kw["seanet"])
    decoder = SEANetDecoder(**kw["seanet"])
    enc_tr = transformer.ProjectedTransformer(device="cpu", **kw["transformer"])
    dec_tr = transformer.ProjectedTransformer(device="cpu", **kw["transformer"])
    quantizer = SplitResidualVectorQuantizer(**kw["quantizer"])
    mimi = MimiModel(
        encoder,
        decoder,
        quantizer,
        channels=1,
        sample_rate=kw["sample_rate"],
        frame_rate=kw["frame_rate"],
        encoder_frame_rate=kw["sample_rate"] / encoder.hop_length,
        causal=True,
        resample_method="conv",
        encoder_transformer=enc_tr,
        decoder_transformer=dec_tr,
    ).eval()
    state = {}
    for key, value in kyutai_mimi_state_dict(random_mimi(config)).items():
        key = key.replace("self_attn.in_projs.0.weight", "self_attn.in_proj_weight")
        key = key.replace("self_attn.out_projs.0.weight", "self_attn.out_proj.weight")
        state[key] = value.contiguous()
    missing, unexpected = mimi.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "_codebook" not in m]:
        raise SystemExit(f"Mimi names do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    mimi.set_num_codebooks(8)
    save_file(
        {k: v.contiguous() for k, v in mimi.state_dict().items()}, str(out / "tokenizer-mimi.safetensors")
    )
    (out / "mimi_config.json").write_text(json.dumps(kw, indent=1))
    return mimi


def codes_of(mimi, pcm: np.ndarray) -> list[int]:
    """Mimi codes of one 1920-sample frame from a fresh state (the prompts' silence / tone codes)."""
    with mimi.streaming(1):
        codes = mimi.encode(torch.from_numpy(pcm.astype(np.float32))[None, None])
    return [int(c) for c in codes[0, :, 0]]


def write_audio(out: Path) -> tuple[Path, Path]:
    import soxr

    def cut(name: str, seconds: float, start: float = 0.0) -> np.ndarray:
        audio, rate = soundfile.read(str(SPEECH_DIR / name), dtype="float32", always_2d=True)
        audio = audio[:, 0]
        if rate != 24000:
            audio = soxr.resample(audio, rate, 24000)
        return audio[int(start * 24000) : int((start + seconds) * 24000)]

    (out / "voices").mkdir(parents=True, exist_ok=True)
    voice = out / "voices" / "TINYF0.wav"
    soundfile.write(str(voice), cut("q2.wav", VOICE_SECONDS, 0.3), 24000, subtype="PCM_16")
    user = out / "user.wav"
    soundfile.write(str(user), cut("q1.wav", USER_SECONDS), 24000, subtype="PCM_16")
    return voice, user


def run_reference(lm, mimi, tokenizer, voice: Path, user: Path, save_pt: bool) -> list[list[int]]:
    """The reference's offline flow (offline.py), greedy: prompts, then the user WAV frame by frame."""
    from moshi.models.lm import LMGen, _iterate_audio, encode_from_sphn, load_audio

    gen = LMGen(
        lm,
        audio_silence_frame_cnt=int(0.5 * 12.5),
        sample_rate=24000,
        device="cpu",
        frame_rate=12.5,
        save_voice_prompt_embeddings=save_pt,
        use_sampling=False,
    )
    mimi.streaming_forever(1)
    gen.streaming_forever(1)
    if voice.suffix == ".pt":
        gen.load_voice_prompt_embeddings(str(voice))
    else:
        gen.load_voice_prompt(str(voice))
    gen.text_prompt_tokens = tokenizer.encode(f"<system> {ROLE} <system>")
    mimi.reset_streaming()
    gen.reset_streaming()
    gen.step_system_prompts(mimi)
    mimi.reset_streaming()
    audio = load_audio(str(user), 24000)
    frames = []
    for codes in encode_from_sphn(
        mimi, _iterate_audio(audio, sample_interval_size=1920, pad=True), max_batch=1
    ):
        tokens = gen.step(codes[:, :, 0:1])
        if tokens is not None:
            frames.append([int(t) for t in tokens[0, :9, 0]])
    return frames


def main(out: Path) -> None:
    import moshi.models.lm as lm_module
    import sentencepiece
    from moshi_fixtures import train_tiny_spm
    from safetensors.torch import save_file

    if not Path(lm_module.__file__).read_text().count("SINE_TOKENS"):
        raise SystemExit("PYTHONPATH must put NVIDIA/personaplex's moshi/ first (it found Kyutai's moshi)")
    out.mkdir(parents=True, exist_ok=True)
    kwargs = tiny_kwargs()
    lm = build_reference_lm(kwargs)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(out / "model.safetensors"))
    mimi = build_reference_mimi(out)
    spm = train_tiny_spm(out / "spm")
    shutil.copy(spm, out / "tokenizer.model")
    shutil.rmtree(out / "spm")
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    silence = codes_of(mimi, np.zeros(1920))
    t = np.arange(1920) / 24000
    sine = codes_of(mimi, 0.5 * np.sin(2 * np.pi * 440.0 * t))
    # the reference's prompt codes are the 7B Mimi's; this codec has its own
    lm_module.SILENCE_TOKENS = np.array(silence, dtype=np.int64)
    lm_module.SINE_TOKENS = np.array(sine, dtype=np.int64)
    config = dict(
        kwargs,
        model_type="personaplex",
        moshi_name="model.safetensors",
        mimi_name="tokenizer-mimi.safetensors",
        tokenizer_name="tokenizer.model",
        mimi_config_name="mimi_config.json",
        silence_tokens=silence,
        sine_tokens=sine,
    )
    (out / "config.json").write_text(json.dumps(config, indent=1))
    voice, user = write_audio(out)
    with torch.no_grad():
        wav_frames = run_reference(lm, mimi, tokenizer, voice, user, save_pt=True)
        pt_frames = run_reference(lm, mimi, tokenizer, voice.with_suffix(".pt"), user, save_pt=False)
    record = {
        "role": ROLE,
        "user": user.name,
        "note": "frames = the reference's step outputs [text, 8 assistant codes], greedy, after the prompts",
        "frames": {"TINYF0.wav": wav_frames, "TINYF0.pt": pt_frames},
    }
    (out / "reference.json").write_text(json.dumps(record))
    print(f"wrote {out}: {len(wav_frames)} frames per voice", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
