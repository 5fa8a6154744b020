"""Loading Moshi checkpoints in Kyutai's and Hugging Face's layouts, and their errors."""

from __future__ import annotations

import json

import pytest
import torch
from moshi_fixtures import (
    lm_state_dict,
    random_moshi,
    tiny_kyutai_kwargs,
    train_tiny_spm,
    write_hf_checkpoint,
    write_kyutai_checkpoint,
)

from assistant.moshi.checkpoint import CheckpointError
from assistant.moshi.lm import MoshiStreamingLM, Sampling
from assistant.moshi.loading import detect_layout, load_moshi
from assistant.moshi.tokenizer import TextTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("moshi")
    kwargs = tiny_kyutai_kwargs()
    model = random_moshi(kwargs, seed=2)
    spm = train_tiny_spm(root / "spm")
    kyutai = write_kyutai_checkpoint(root / "kyutai", model, kwargs, spm)
    hf = write_hf_checkpoint(root / "hf", model, spm)
    return {"root": root, "kwargs": kwargs, "model": model, "spm": spm, "kyutai": kyutai, "hf": hf}


def greedy_run(model, steps: int = 10) -> torch.Tensor:
    lm = MoshiStreamingLM(model, batch_size=2)
    zeros, ones = torch.zeros(2), torch.ones(2, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    frames = []
    for _ in range(steps):
        out = lm.step(
            torch.randint(0, 64, (2, 8), generator=gen), Sampling(zeros, ones, zeros, ones, torch.zeros(2, 9))
        )
        frames.append(torch.cat([out.text[:, None], out.audio], 1))
    return torch.stack(frames)


def test_both_layouts_load_the_same_weights_and_generate_the_same(checkpoints):
    kyutai = load_moshi(checkpoints["kyutai"], device="cpu")
    hf = load_moshi(checkpoints["hf"], device="cpu")
    assert (kyutai.layout, hf.layout) == ("kyutai", "hf")
    assert kyutai.model.dtype == torch.float32  # CPU default
    original = lm_state_dict(checkpoints["model"])
    for loaded in (kyutai, hf):
        state = lm_state_dict(loaded.model)
        assert set(state) == set(original)
        assert all(torch.equal(state[k], original[k]) for k in original)
    assert torch.equal(greedy_run(kyutai.model), greedy_run(hf.model))
    assert kyutai.mimi.name == "tokenizer-e351c8d8-checkpoint125.safetensors"
    assert hf.mimi is hf.model.audio_encoder


def test_kyutai_bf16_weights_load_in_requested_dtype(checkpoints, tmp_path):
    directory = write_kyutai_checkpoint(
        tmp_path / "bf16",
        checkpoints["model"],
        checkpoints["kwargs"],
        checkpoints["spm"],
        dtype=torch.bfloat16,
    )
    loaded = load_moshi(directory, device="cpu", dtype="bf16")
    assert loaded.model.decoder.lm_head.weight.dtype == torch.bfloat16
    expected = checkpoints["model"].decoder.lm_head.weight.to(torch.bfloat16)
    assert torch.equal(loaded.model.decoder.lm_head.weight, expected)


def test_kyutai_without_config_assumes_7b_and_says_what_mismatched(checkpoints, tmp_path):
    directory = write_kyutai_checkpoint(
        tmp_path / "noconf",
        checkpoints["model"],
        checkpoints["kwargs"],
        checkpoints["spm"],
        with_config=False,
    )
    assert detect_layout(directory) == "kyutai"
    with pytest.raises(CheckpointError) as err:
        load_moshi(directory, device="cpu")
    message = str(err.value)
    assert "model.safetensors" in message and "text_emb.weight" in message and "[32001, 4096]" in message


def test_mismatched_config_names_file_tensor_and_shape(checkpoints, tmp_path):
    directory = write_kyutai_checkpoint(
        tmp_path / "bad", checkpoints["model"], checkpoints["kwargs"], checkpoints["spm"]
    )
    (directory / "config.json").write_text(json.dumps(tiny_kyutai_kwargs(num_layers=3)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*transformer\.layers\.2\.self_attn"):
        load_moshi(directory, device="cpu")


def test_missing_files_are_named(checkpoints, tmp_path):
    directory = write_kyutai_checkpoint(
        tmp_path / "notok", checkpoints["model"], checkpoints["kwargs"], checkpoints["spm"]
    )
    (directory / "tokenizer_spm_32k_3.model").unlink()
    with pytest.raises(CheckpointError, match="tokenizer_spm_32k_3.model"):
        load_moshi(directory, device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="neither config.json nor model.safetensors"):
        load_moshi(empty, device="cpu")
    with pytest.raises(CheckpointError, match="no such directory"):
        load_moshi(tmp_path / "does" / "not" / "exist", device="cpu")


def test_kyutai_config_file_names_override_defaults(checkpoints, tmp_path):
    directory = write_kyutai_checkpoint(
        tmp_path / "renamed", checkpoints["model"], checkpoints["kwargs"], checkpoints["spm"]
    )
    (directory / "model.safetensors").rename(directory / "lm.safetensors")
    config = dict(checkpoints["kwargs"], moshi_name="lm.safetensors")
    (directory / "config.json").write_text(json.dumps(config))
    loaded = load_moshi(directory, device="cpu")
    assert torch.equal(loaded.model.decoder.lm_head.weight, checkpoints["model"].decoder.lm_head.weight)


def test_unsupported_kyutai_variant_is_refused(checkpoints, tmp_path):
    directory = write_kyutai_checkpoint(
        tmp_path / "variant", checkpoints["model"], checkpoints["kwargs"], checkpoints["spm"]
    )
    (directory / "config.json").write_text(json.dumps(dict(checkpoints["kwargs"], depformer_pos_emb="rope")))
    with pytest.raises(CheckpointError, match="depformer_pos_emb"):
        load_moshi(directory, device="cpu")


def test_text_pieces_become_words_and_padding_is_silent(checkpoints):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(checkpoints["spm"]))
    tokenizer = TextTokenizer.from_file(checkpoints["spm"], {3, 0})
    ids = sp.encode("hello there how are you")
    assert tokenizer.decode(ids) == " hello there how are you"
    assert tokenizer.decode([3, 0, 1, 2] + ids[:1] + [3]) == tokenizer.piece(ids[0])
    assert tokenizer.piece(10_000) == ""


def test_hf_layout_mismatch_names_tensors_and_shapes(checkpoints, tmp_path):
    import shutil

    directory = tmp_path / "hf"
    shutil.copytree(checkpoints["hf"], directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(dict(config, ffn_dim=200)))
    with pytest.raises(
        CheckpointError, match=r"wrong shape.*mlp\.fc1\.weight \[176, 32\] vs expected \[200, 32\]"
    ):
        load_moshi(directory, device="cpu")
    (directory / "config.json").write_text(json.dumps(dict(config, num_hidden_layers=3)))
    with pytest.raises(CheckpointError, match=r"8 tensors missing.*layers\.2\."):
        load_moshi(directory, device="cpu")
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "tokenizer.model").unlink()
    with pytest.raises(CheckpointError, match="no text tokenizer"):
        load_moshi(directory, device="cpu")
