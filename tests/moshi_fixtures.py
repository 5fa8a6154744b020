"""Tiny random Moshi models written in both checkpoint layouts, for the Moshi tests.

Everything is built inside the test (tmp_path): a SentencePiece model trained on a few sentences,
random LM weights (sharpened so greedy decisions have clear margins), Kyutai's and Hugging
Face's file layouts holding the same weights.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from assistant.moshi.loading import (
    KYUTAI_MIMI_NAME,
    KYUTAI_TOKENIZER_NAME,
    kyutai_lm_config,
    kyutai_state_dict_from_transformers,
)

SENTENCES = [
    "hello there how are you today",
    "i am fine thank you and you",
    "the weather is nice and warm",
    "what time is it now please",
    "let us talk about music and films",
    "this is a tiny model for tests",
]


def tiny_kyutai_kwargs(**overrides) -> dict:
    """Kyutai LM keyword arguments of a tiny model (same structure as the 7B)."""
    kwargs = {
        "dim": 32,
        "text_card": 48,
        "existing_text_padding_id": 3,
        "n_q": 16,
        "dep_q": 8,
        "card": 64,
        "num_heads": 2,
        "num_layers": 2,
        "hidden_scale": 4.125,
        "causal": True,
        "layer_scale": None,
        "context": 40,
        "max_period": 10000,
        "gating": "silu",
        "norm": "rms_norm_f32",
        "positional_embedding": "rope",
        "depformer_dim": 16,
        "depformer_dim_feedforward": int(4.125 * 16),
        "depformer_num_heads": 2,
        "depformer_num_layers": 2,
        "depformer_layer_scale": None,
        "depformer_multi_linear": True,
        "depformer_context": 8,
        "depformer_max_period": 10000,
        "depformer_gating": "silu",
        "depformer_pos_emb": "none",
        "depformer_weights_per_step": True,
        "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
    }
    kwargs.update(overrides)
    return kwargs


def tiny_mimi_config(card: int = 64):
    """A small transformers MimiConfig (1920-sample frames, 8 codebooks of `card` entries)."""
    from transformers import MimiConfig

    return MimiConfig(hidden_size=16, num_filters=4, num_hidden_layers=1, intermediate_size=32,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=8, codebook_size=card,
                      codebook_dim=8, vector_quantization_hidden_dimension=8, num_quantizers=8,
                      upsample_groups=16)


def train_tiny_spm(directory: Path, vocab_size: int = 48) -> Path:
    """Train a SentencePiece model on a few sentences; ids 0 unk, 1 bos, 2 eos, 3 pad (as Kyutai's)."""
    import sentencepiece

    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 4) + "\n")
    prefix = directory / "spm"
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2, num_threads=1,
    )
    return prefix.with_suffix(".model")


def random_moshi(kwargs: dict, seed: int = 0, sharpen: float = 6.0):
    """MoshiForConditionalGeneration (float32, tiny Mimi inside) with random weights.

    Linear weights are scaled so activations stay O(1); the text and audio heads are multiplied by
    `sharpen` so argmax decisions have margins far above float noise.
    """
    from transformers import MoshiForConditionalGeneration

    config = kyutai_lm_config(kwargs, mimi_config=tiny_mimi_config(kwargs["card"]))
    torch.manual_seed(seed)
    model = MoshiForConditionalGeneration(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("audio_encoder."):
                continue
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            elif "embed_tokens" in name:
                param.copy_(torch.randn(param.shape, generator=gen))
            else:
                fan_in = param.shape[-1]
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(fan_in))
        model.decoder.lm_head.weight.mul_(sharpen)
        model.depth_decoder.lm_heads.weight.mul_(sharpen)
        codebooks = [m for n, m in model.audio_encoder.named_modules() if n.endswith("codebook")]
        for cb in codebooks:  # an untrained Mimi has all-zero codebooks: give it real ones
            cb.embed_sum.copy_(torch.randn(cb.embed_sum.shape, generator=gen))
            cb.cluster_usage.fill_(1.0)
            cb.initialized.fill_(True)
    return model


def lm_state_dict(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("audio_encoder.")}


def write_kyutai_checkpoint(directory: Path, model, kwargs: dict, tokenizer: Path, *, with_config: bool = True,
                            dtype: torch.dtype = torch.float32, mimi_writer=None) -> Path:
    """Write `model`'s LM in Kyutai's layout: model.safetensors (Kyutai names), Mimi file, tokenizer, config."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = kyutai_state_dict_from_transformers(lm_state_dict(model), model.config)
    save_file({k: v.to(dtype) for k, v in state.items()}, str(directory / "model.safetensors"))
    shutil.copy(tokenizer, directory / KYUTAI_TOKENIZER_NAME)
    if mimi_writer is not None:
        mimi_writer(directory / KYUTAI_MIMI_NAME, model.audio_encoder)
    else:
        (directory / KYUTAI_MIMI_NAME).write_bytes(b"")  # the LM loader only locates it; the codec reads it
    if with_config:
        (directory / "config.json").write_text(json.dumps(kwargs))
    return directory


def write_hf_checkpoint(directory: Path, model, tokenizer: Path) -> Path:
    """Write `model` in Hugging Face's layout: config.json + safetensors (Mimi included) + tokenizer.model."""
    model.save_pretrained(directory)
    shutil.copy(tokenizer, directory / "tokenizer.model")
    return directory
