"""Streaming Mimi: frame-by-frame == offline, independent rows, both checkpoint layouts, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from model_fixtures import (
    kyutai_mimi_kwargs,
    kyutai_mimi_state_dict,
    random_mimi,
    tiny_mimi_config,
    write_mimi_checkpoint,
)
from safetensors.torch import save_file
from transformers import MimiConfig, MimiModel

from audio.frames import FRAME_SAMPLES
from audio.mimi.codec import StreamingMimi
from audio.mimi.convert import (
    KYUTAI_MIMI_FILENAME,
    convert_kyutai_mimi_state_dict,
    mimi_config_for_kyutai,
)

AUDIO_DIR = Path(__file__).resolve().parent / "data" / "speech"


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_model() -> MimiModel:
    return random_mimi(tiny_mimi_config(), seed=0)


def _signal(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    """Speech-like test input: a few drifting tones plus noise, in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(frames * FRAME_SAMPLES) / 24_000
    freqs = 100 + 400 * torch.rand(batch, 3, 1, generator=gen)
    tones = torch.sin(2 * torch.pi * freqs * t * (1 + 0.1 * torch.sin(t))).sum(1) / 3
    return (0.5 * tones + 0.1 * torch.randn(batch, frames * FRAME_SAMPLES, generator=gen)).clamp(-1, 1)


def _offline_codes(model: MimiModel, pcm: torch.Tensor, num_codebooks: int = 8) -> torch.Tensor:
    with torch.no_grad():
        return model.encode(pcm[:, None], num_quantizers=num_codebooks).audio_codes  # (B, K, T)


def _offline_audio(model: MimiModel, codes: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.decode(codes).audio_values[:, 0]  # (B, T * 1920)


def _stream_encode(codec: StreamingMimi, pcm: torch.Tensor) -> torch.Tensor:
    frames = pcm.shape[-1] // FRAME_SAMPLES
    return torch.stack(
        [codec.encode(pcm[:, i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]) for i in range(frames)], dim=-1
    )


def _stream_decode(codec: StreamingMimi, codes: torch.Tensor) -> torch.Tensor:
    return torch.cat([codec.decode(codes[:, :, i]) for i in range(codes.shape[-1])], dim=-1)


# -- exactness -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["hf", "kyutai"])
def test_frame_by_frame_equals_offline_over_60_frames(tiny_model, tmp_path, layout):
    source = write_mimi_checkpoint(tmp_path / "mimi", tiny_model, layout=layout)
    codec = StreamingMimi.from_pretrained(source, batch_size=2, config=tiny_mimi_config())
    assert (codec.frame_samples, codec.sample_rate_hz, codec.num_codebooks) == (1920, 24_000, 8)
    assert codec.cardinality == 64 and codec.batch_size == 2

    pcm = _signal(2, 60)
    codes = _stream_encode(codec, pcm)
    expected = _offline_codes(tiny_model, pcm)
    assert codes.dtype == torch.long and codes.shape == (2, 8, 60)
    assert torch.equal(codes, expected)

    audio = _stream_decode(codec, expected)
    reference = _offline_audio(tiny_model, expected)
    assert audio.dtype == torch.float32 and audio.shape == (2, 60 * FRAME_SAMPLES)
    assert torch.allclose(audio, reference, rtol=0, atol=1e-4), (audio - reference).abs().max()


def test_decoded_audio_depends_on_the_codes(tiny_model):
    codec = StreamingMimi.from_model(tiny_model, batch_size=2)
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 64, (2, 8, 20), generator=gen)
    codes[1] = torch.randint(0, 64, (8, 20), generator=gen)
    audio = _stream_decode(codec, codes)
    # the rows differ from the first frame's codes on: their audio must differ by a clear margin
    assert (audio[0] - audio[1]).abs().mean() > 0.1 * audio.abs().mean()


def test_real_speech_frame_by_frame_equals_offline(tiny_model):
    speech, rate = sf.read(AUDIO_DIR / "q1.wav", dtype="float32")
    assert rate == 24_000
    frames = len(speech) // FRAME_SAMPLES
    pcm = torch.from_numpy(speech[: frames * FRAME_SAMPLES])[None]
    codec = StreamingMimi.from_model(tiny_model, batch_size=1)
    codes = _stream_encode(codec, pcm)
    assert torch.equal(codes, _offline_codes(tiny_model, pcm))
    assert torch.allclose(_stream_decode(codec, codes), _offline_audio(tiny_model, codes), rtol=0, atol=1e-4)


def test_real_default_config_streams_exactly():
    """The real kyutai/mimi geometry (MimiConfig() defaults), random weights, 12 frames."""
    config = MimiConfig()
    model = random_mimi(config, seed=3)
    codec = StreamingMimi.from_model(model, batch_size=1)
    assert (codec.cardinality, codec.frame_samples) == (2048, 1920)
    pcm = _signal(1, 12, seed=3)
    codes = _stream_encode(codec, pcm)
    assert torch.equal(codes, _offline_codes(model, pcm))
    audio = _stream_decode(codec, codes)
    assert torch.allclose(audio, _offline_audio(model, codes), rtol=0, atol=1e-4)


# -- rows are independent ---------------------------------------------------------------------------


def test_rows_are_independent_and_reset_forgets_only_its_row(tiny_model):
    pcm = _signal(3, 24, seed=5)
    batch = StreamingMimi.from_model(tiny_model, batch_size=3)
    codes_before = _stream_encode(batch, pcm[:, : 10 * FRAME_SAMPLES])
    audio_before = _stream_decode(batch, codes_before)
    batch.reset(1)
    codes_after = _stream_encode(batch, pcm[:, 10 * FRAME_SAMPLES :])
    audio_after = _stream_decode(batch, codes_after)
    codes = torch.cat([codes_before, codes_after], -1)
    audio = torch.cat([audio_before, audio_after], -1)

    for row in (0, 2):  # untouched rows: as if each had the codec to itself
        alone = StreamingMimi.from_model(tiny_model, batch_size=1)
        assert torch.equal(codes[row : row + 1], _stream_encode(alone, pcm[row : row + 1]))
        solo_audio = _stream_decode(alone, codes[row : row + 1])
        assert torch.allclose(audio[row : row + 1], solo_audio, rtol=0, atol=1e-4)
    assert list(batch.frames_encoded) == [24, 14, 24] and list(batch.frames_decoded) == [24, 14, 24]
    # the reset row starts over: like a new session that began at frame 10
    fresh = StreamingMimi.from_model(tiny_model, batch_size=1)
    assert torch.equal(codes_after[1:2], _stream_encode(fresh, pcm[1:2, 10 * FRAME_SAMPLES :]))
    assert torch.allclose(audio_after[1:2], _stream_decode(fresh, codes_after[1:2]), rtol=0, atol=1e-4)
    assert not torch.equal(
        codes_after[1], _stream_encode(StreamingMimi.from_model(tiny_model, 1), pcm[1:2])[0, :, 10:]
    )


def test_mask_feeds_only_chosen_rows(tiny_model):
    """Row 1 skips every third frame: its codes/audio are zeros there and its state waits; row 0 goes on."""
    pcm = _signal(2, 15, seed=7)
    codec = StreamingMimi.from_model(tiny_model, batch_size=2)
    row0 = StreamingMimi.from_model(tiny_model, batch_size=1)  # sees every frame
    row1 = StreamingMimi.from_model(tiny_model, batch_size=1)  # sees only the frames row 1 is fed
    only_first = torch.tensor([True, False])
    for i in range(15):
        frame = pcm[:, i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
        skip = i % 3 == 1
        codes = codec.encode(frame, mask=only_first if skip else None)
        audio = codec.decode(codes, mask=only_first if skip else None)
        codes0 = row0.encode(frame[:1])
        assert torch.equal(codes[:1], codes0)
        assert torch.allclose(audio[:1], row0.decode(codes0), rtol=0, atol=1e-4)
        if skip:
            assert torch.equal(codes[1], torch.zeros(8, dtype=torch.long))
            assert torch.equal(audio[1], torch.zeros(FRAME_SAMPLES))
        else:
            codes1 = row1.encode(frame[1:])
            assert torch.equal(codes[1:], codes1)
            assert torch.allclose(audio[1:], row1.decode(codes1), rtol=0, atol=1e-4)
    assert list(codec.frames_encoded) == [15, 10] and list(codec.frames_decoded) == [15, 10]
    # codes of rows that are not fed are not looked at (an engine may leave garbage there)
    garbage = torch.full((2, 8), -1)
    garbage[0] = 3
    assert torch.equal(codec.decode(garbage, mask=only_first)[1], torch.zeros(FRAME_SAMPLES))


def test_copy_row_continues_a_stream_in_another_row(tiny_model):
    pcm = _signal(1, 14, seed=13)
    codec = StreamingMimi.from_model(tiny_model, batch_size=3)
    alone = StreamingMimi.from_model(tiny_model, batch_size=1)
    first = torch.zeros(3, 8 * FRAME_SAMPLES)
    first[2] = pcm[0, : 8 * FRAME_SAMPLES]  # the session lives in row 2 first
    codes = _stream_encode(codec, first)
    _stream_decode(codec, codes)
    expected = _stream_encode(alone, pcm)
    expected_audio = _stream_decode(alone, expected)
    codec.copy_row(2, 0)  # ...then moves to row 0 and goes on there
    assert codec.frames_encoded[0] == 8 and codec.frames_decoded[0] == 8
    rest = torch.zeros(3, 6 * FRAME_SAMPLES)
    rest[0] = pcm[0, 8 * FRAME_SAMPLES :]
    later = _stream_encode(codec, rest)
    assert torch.equal(later[0], expected[0, :, 8:])
    assert torch.allclose(
        _stream_decode(codec, later)[0], expected_audio[0, 8 * FRAME_SAMPLES :], rtol=0, atol=1e-4
    )


def test_reset_all_equals_a_new_codec(tiny_model):
    pcm = _signal(2, 6, seed=9)
    codec = StreamingMimi.from_model(tiny_model, batch_size=2)
    first = _stream_encode(codec, pcm)
    _stream_decode(codec, first)
    codec.reset_all()
    assert torch.equal(_stream_encode(codec, pcm), first)


# -- checkpoint layouts -------------------------------------------------------------------------------


def test_kyutai_round_trip_restores_every_weight(tiny_model):
    config = tiny_model.config
    converted = convert_kyutai_mimi_state_dict(kyutai_mimi_state_dict(tiny_model), config)
    original = tiny_model.state_dict()
    assert converted.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(converted[key], value), key


def test_bf16_kyutai_file_loads_as_float32(tiny_model, tmp_path):
    """Kyutai ships Mimi in bf16 (moshiko-pytorch-bf16): it loads, upcast, into a float32 codec."""
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in kyutai_mimi_state_dict(tiny_model).items()}
    save_file(state, str(tmp_path / KYUTAI_MIMI_FILENAME))
    codec = StreamingMimi.from_pretrained(tmp_path, batch_size=1, config=tiny_mimi_config())
    for key, value in tiny_model.state_dict().items():
        loaded = codec.model.state_dict()[key]
        assert loaded.dtype == value.dtype
        assert torch.equal(loaded, value.to(torch.bfloat16).to(value.dtype)), key


def test_kyutai_legacy_key_names_convert_the_same(tiny_model):
    """Older Kyutai checkpoints say in_proj_weight / out_proj.weight and embed_avg / cluster_size / inited."""
    legacy = {}
    for key, value in kyutai_mimi_state_dict(tiny_model).items():
        key = key.replace("self_attn.in_projs.0.weight", "self_attn.in_proj_weight")
        key = key.replace("self_attn.out_projs.0.weight", "self_attn.out_proj.weight")
        key = key.replace("_codebook.embedding_sum", "_codebook.embed_avg")
        key = key.replace("_codebook.cluster_usage", "_codebook.cluster_size")
        legacy[key.replace("_codebook._initialized", "_codebook.inited")] = value
    converted = convert_kyutai_mimi_state_dict(legacy, tiny_model.config)
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(converted[key], value), key
    with pytest.raises(ValueError, match="decoder.model.99.weird"):
        convert_kyutai_mimi_state_dict(
            {**legacy, "decoder.model.99.weird": torch.zeros(1)}, tiny_model.config
        )


def _kyutai_transformer_reference(
    state: dict, prefix: str, x: torch.Tensor, config: MimiConfig
) -> torch.Tensor:
    """Kyutai's StreamingTransformer on Kyutai-named weights, written out from moshi's source:
    fused in_projs.0 split as (p h d), RoPE rotating interleaved pairs (x[2i], x[2i+1]) by
    max_period^(-2i/D), causal attention over the last `context` steps, LayerScale residuals."""
    heads, steps = config.num_attention_heads, x.shape[1]
    head_dim = config.hidden_size // heads
    freqs = torch.exp(
        torch.arange(head_dim // 2) * (-np.log(config.rope_parameters["rope_theta"]) * 2 / head_dim)
    )
    angle = torch.arange(steps, dtype=torch.float32)[:, None] * freqs  # (T, D/2)
    cos, sin = angle.cos(), angle.sin()

    def rope(t):  # t: (b, h, T, D), pairs interleaved
        real, imag = t[..., 0::2], t[..., 1::2]
        return torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1).flatten(-2)

    pos = torch.arange(steps)
    delta = pos[:, None] - pos[None, :]
    allowed = (delta >= 0) & (delta < config.sliding_window)
    for n in range(config.num_hidden_layers):
        w = {
            k[len(f"{prefix}.layers.{n}.") :]: v
            for k, v in state.items()
            if k.startswith(f"{prefix}.layers.{n}.")
        }
        h = torch.nn.functional.layer_norm(x, (x.shape[-1],), w["norm1.weight"], w["norm1.bias"], 1e-5)
        q, k, v = (
            (h @ w["self_attn.in_projs.0.weight"].T).view(1, steps, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        )
        scores = (rope(q) @ rope(k).transpose(-1, -2)) / head_dim**0.5
        attn = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
        out = attn.transpose(1, 2).reshape(1, steps, -1) @ w["self_attn.out_projs.0.weight"].T
        x = x + w["layer_scale_1.scale"] * out
        h = torch.nn.functional.layer_norm(x, (x.shape[-1],), w["norm2.weight"], w["norm2.bias"], 1e-5)
        ff = torch.nn.functional.gelu(h @ w["linear1.weight"].T) @ w["linear2.weight"].T
        x = x + w["layer_scale_2.scale"] * ff
    return x


def test_kyutai_layout_transformer_computes_what_kyutais_code_computes(tiny_model):
    """Independent of our converter: Kyutai's math on the Kyutai-layout weights == transformers' layer."""
    state = kyutai_mimi_state_dict(tiny_model)
    x = torch.randn(1, 5, tiny_model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for half in ("encoder", "decoder"):
            ours = getattr(tiny_model, half).get_submodule(f"{half}_transformer")(x).last_hidden_state
            reference = _kyutai_transformer_reference(
                state, f"{half}_transformer.transformer", x, tiny_model.config
            )
            # float32 rounding is ~1e-7 here; a wrong RoPE pairing or q/k/v split is off by ~1e-3
            assert torch.allclose(ours, reference, rtol=0, atol=1e-5), (ours - reference).abs().max()


def test_kyutai_names_and_rope_layout_match_kyutais_own_model(tmp_path):
    """Load a checkpoint written by Kyutai's own `moshi` MimiModel and compare outputs with it."""
    loaders = pytest.importorskip(
        "moshi.models.loaders", reason="Kyutai's moshi package is not installed", exc_type=ImportError
    )
    config = tiny_mimi_config(num_quantizers=8)
    torch.manual_seed(11)
    kyutai = loaders.get_mimi(None, mimi_config=kyutai_mimi_kwargs(config), num_codebooks=8)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, tensor in kyutai.state_dict().items():
            if name.endswith("_codebook.embedding_sum"):
                tensor.copy_(torch.randn(tensor.shape, generator=gen))
            elif name.endswith("_codebook._initialized"):
                tensor.fill_(1.0)
            elif "layer_scale" in name:
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.4 + 0.3)
            elif name.endswith("in_projs.0.weight"):
                tensor[: 2 * config.hidden_size].mul_(4.0)  # sharper attention: positions matter
    path = tmp_path / KYUTAI_MIMI_FILENAME
    save_file({k: v.contiguous() for k, v in kyutai.state_dict().items()}, str(path))
    codec = StreamingMimi.from_pretrained(tmp_path, batch_size=1, config=config)

    pcm = _signal(1, 24, seed=11)
    with torch.no_grad():
        kyutai_codes = kyutai.encode(pcm[:, None])
        kyutai_audio = kyutai.decode(kyutai_codes)[:, 0]
    codes = _stream_encode(codec, pcm)
    assert (codes == kyutai_codes).float().mean() > 0.99  # float rounding may flip a rare near-tie
    audio = _stream_decode(codec, kyutai_codes)
    assert torch.allclose(audio, kyutai_audio, rtol=0, atol=1e-4), (audio - kyutai_audio).abs().max()


def test_kyutai_config_matches_the_real_mimi_geometry():
    config = mimi_config_for_kyutai()
    assert config.frame_size == 1920 and config.frame_rate == 12.5
    assert (config.num_quantizers, config.codebook_size, config.sliding_window) == (32, 2048, 250)


# -- errors a user sees ------------------------------------------------------------------------------


def test_missing_source_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json \\+ model.safetensors"):
        StreamingMimi.from_pretrained(tmp_path / "nope", batch_size=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no Mimi checkpoint in"):
        StreamingMimi.from_pretrained(tmp_path / "empty", batch_size=1)


@pytest.fixture
def offline_hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache with the Hub unreachable (offline mode), as on a server without internet."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_repo_id_loads_from_the_local_hub_cache(offline_hub_cache, tiny_model):
    """A repo id resolves offline from the cache, e.g. kyutai/moshiko-pytorch-bf16 holding the Kyutai file."""
    repo = offline_hub_cache / "models--someone--tiny-moshi"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    write_mimi_checkpoint(snapshot, tiny_model, layout="kyutai")
    # beside it, as in a Kyutai repo: the LM's own weights and config, which must be left alone
    save_file({"text_emb.weight": torch.zeros(4, 4)}, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text('{"model_type": "moshi"}')
    codec = StreamingMimi.from_pretrained("someone/tiny-moshi", batch_size=1, config=tiny_mimi_config())
    pcm = _signal(1, 3)
    assert torch.equal(_stream_encode(codec, pcm), _offline_codes(tiny_model, pcm))


def test_unreachable_repo_id_says_what_was_tried(offline_hub_cache):
    with pytest.raises(FileNotFoundError, match="nobody/no-such-mimi.*Hugging Face repo"):
        StreamingMimi.from_pretrained("nobody/no-such-mimi", batch_size=1)


def test_broken_or_foreign_files_are_rejected(tmp_path, tiny_model):
    broken = tmp_path / KYUTAI_MIMI_FILENAME
    broken.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="could not read"):
        StreamingMimi.from_pretrained(broken, batch_size=1)
    # a Kyutai file of the tiny model read with the default (7B Moshi) config: shapes disagree
    path = write_mimi_checkpoint(tmp_path / "k", tiny_model, layout="kyutai")
    with pytest.raises(ValueError, match="pass config="):
        StreamingMimi.from_pretrained(path, batch_size=1)
    # a transformers dir of some other model
    other = tmp_path / "other"
    other.mkdir()
    save_file({"lm_head.weight": torch.zeros(2, 2)}, str(other / "model.safetensors"))
    (other / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="model_type 'llama', not 'mimi'"):
        StreamingMimi.from_pretrained(other, batch_size=1)
    # a transformers Mimi whose weights do not fit its config
    bad = write_mimi_checkpoint(tmp_path / "bad", tiny_model, layout="hf")
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "hidden_size": 64, "upsample_groups": 64}))
    with pytest.raises(ValueError, match="could not load .* as a transformers Mimi"):
        StreamingMimi.from_pretrained(bad, batch_size=1)
    (bad / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="could not read .*model.safetensors"):
        StreamingMimi.from_pretrained(bad, batch_size=1)


def test_bad_inputs_are_rejected(tiny_model):
    codec = StreamingMimi.from_model(tiny_model, batch_size=2)
    with pytest.raises(ValueError, match="shape"):
        codec.encode(np.zeros((2, 960), dtype=np.float32))
    with pytest.raises(ValueError, match="codes must be in"):
        codec.decode(torch.full((2, 8), 64))
    with pytest.raises(ValueError, match="mask"):
        codec.encode(np.zeros((2, FRAME_SAMPLES), dtype=np.float32), mask=np.array([1, 0]))
    with pytest.raises(IndexError):
        codec.reset(2)
    with pytest.raises(ValueError, match="num_codebooks"):
        StreamingMimi.from_model(tiny_model, batch_size=1, num_codebooks=11)
