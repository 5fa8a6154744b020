"""Tiny random Moshi models written in both checkpoint layouts, for the Moshi tests.

(Kept apart from model_fixtures.py, whose Mimi helpers it uses, because another engineer owns that file.)

Everything is built inside the test (tmp_path): a SentencePiece model trained on a few sentences,
random LM weights (sharpened so greedy decisions have clear margins), Kyutai's and Hugging
Face's file layouts holding the same weights. Also the test-only helpers the production code has no
use for: `kyutai_state_dict_from_transformers` (transformers' LM weights under Kyutai's names) and
`depth_logits` (the depth transformer's logits for given tokens).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from model_fixtures import kyutai_mimi_kwargs, random_mimi, tiny_mimi_config, write_mimi_checkpoint

from assistant.moshi.checkpoint import KYUTAI_MIMI_NAME, KYUTAI_TOKENIZER_NAME
from assistant.moshi.kyutai import kyutai_lm_config, rope_rows
from assistant.moshi.lm import DepthCache, MoshiStreamingLM

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


def train_tiny_spm(directory: Path, vocab_size: int = 48) -> Path:
    """Train a SentencePiece model on a few sentences; ids 0 unk, 1 bos, 2 eos, 3 pad (as Kyutai's)."""
    import sentencepiece

    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 4) + "\n")
    prefix = directory / "spm"
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        minloglevel=2,
        num_threads=1,
    )
    return prefix.with_suffix(".model")


def random_moshi(kwargs: dict, seed: int = 0, sharpen: float = 6.0):
    """MoshiForConditionalGeneration (float32, tiny Mimi inside) with random weights.

    Linear weights are scaled so activations stay O(1); the text and audio heads are multiplied by
    `sharpen` so argmax decisions have margins far above float noise.
    """
    from transformers import MoshiForConditionalGeneration

    mimi_config = tiny_mimi_config(codebook_size=kwargs["card"])
    config = kyutai_lm_config(kwargs, mimi_config=mimi_config)
    torch.manual_seed(seed)
    model = MoshiForConditionalGeneration(config).eval()
    model.audio_encoder.load_state_dict(random_mimi(mimi_config, seed=seed).state_dict())
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
    return model


def lm_state_dict(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("audio_encoder.")}


def kyutai_state_dict_from_transformers(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The inverse of `assistant.moshi.kyutai.convert_kyutai_lm_state_dict`: write transformers' LM weights with Kyutai's names."""
    dep = config.depth_decoder_config
    dim, heads, kv_heads, hd = (
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
    )
    K = config.num_codebooks
    inv_q, inv_k = torch.argsort(rope_rows(heads, hd)), torch.argsort(rope_rows(kv_heads, hd))
    out = {
        "text_emb.weight": state["decoder.model.embed_tokens.weight"],
        "text_linear.weight": state["decoder.lm_head.weight"],
        "out_norm.alpha": state["decoder.model.norm.weight"].reshape(1, 1, dim),
        "depformer_text_emb.weight": state["depth_decoder.text_embed_tokens.weight"],
    }
    for i in range(2 * K):
        out[f"emb.{i}.weight"] = state[f"embed_tokens.{i}.weight"]
    for layer in range(config.num_hidden_layers):
        k_in, k_out = f"decoder.model.layers.{layer}.", f"transformer.layers.{layer}."
        q = state[k_in + "self_attn.q_proj.linear.weight"][inv_q]
        k = state[k_in + "self_attn.k_proj.linear.weight"][inv_k]
        out[k_out + "self_attn.in_projs.0.weight"] = torch.cat(
            [q, k, state[k_in + "self_attn.v_proj.linear.weight"]]
        )
        out[k_out + "self_attn.out_projs.0.weight"] = state[k_in + "self_attn.o_proj.linear.weight"]
        out[k_out + "norm1.alpha"] = state[k_in + "input_layernorm.weight"].reshape(1, 1, dim)
        out[k_out + "norm2.alpha"] = state[k_in + "post_attention_layernorm.weight"].reshape(1, 1, dim)
        out[k_out + "gating.linear_in.weight"] = state[k_in + "mlp.fc1.weight"]
        out[k_out + "gating.linear_out.weight"] = state[k_in + "mlp.fc2.weight"]
    for i in range(K):
        out[f"depformer_in.{i}.weight"] = state["depth_decoder.input_projections.weight"][i]
        out[f"linears.{i}.weight"] = state["depth_decoder.lm_heads.weight"][i]
    for i in range(K - 1):
        out[f"depformer_emb.{i}.weight"] = state[f"depth_decoder.embed_tokens.{i}.weight"]
    ddim = dep.hidden_size
    for layer in range(dep.num_hidden_layers):
        k_in, k_out = f"depth_decoder.layers.{layer}.", f"depformer.layers.{layer}."
        for i in range(K):
            out[k_out + f"self_attn.in_projs.{i}.weight"] = torch.cat(
                [state[k_in + f"self_attn.{p}_proj.linear.weight"][i] for p in "qkv"]
            )
            out[k_out + f"self_attn.out_projs.{i}.weight"] = state[k_in + "self_attn.o_proj.linear.weight"][i]
            out[k_out + f"gating.{i}.linear_in.weight"] = state[k_in + "mlp.fc1.weight"][i]
            out[k_out + f"gating.{i}.linear_out.weight"] = state[k_in + "mlp.fc2.weight"][i]
        out[k_out + "norm1.alpha"] = state[k_in + "input_layernorm.weight"].reshape(1, 1, ddim)
        out[k_out + "norm2.alpha"] = state[k_in + "post_attention_layernorm.weight"].reshape(1, 1, ddim)
    return {k: v.contiguous() for k, v in out.items()}


def depth_logits(lm: MoshiStreamingLM, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Depth logits (B, K, card) for given text + audio tokens (B, 1 + K); what `lm._depth` sees when forced."""
    cache = DepthCache(*lm._depth_shape, lm.device, lm.dtype)
    return torch.stack([lm._depth_step(k, tokens[:, k], hidden, cache) for k in range(lm.num_codebooks)], 1)


def write_kyutai_checkpoint(
    directory: Path,
    model,
    kwargs: dict,
    tokenizer: Path,
    *,
    with_config: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write `model` in Kyutai's layout: model.safetensors (Kyutai names), the Mimi file and its Kyutai
    config (named by `mimi_config_name`, as Kyutai's loader allows), the tokenizer, config.json."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = kyutai_state_dict_from_transformers(lm_state_dict(model), model.config)
    save_file({k: v.to(dtype) for k, v in state.items()}, str(directory / "model.safetensors"))
    shutil.copy(tokenizer, directory / KYUTAI_TOKENIZER_NAME)
    write_mimi_checkpoint(directory / KYUTAI_MIMI_NAME, model.audio_encoder, layout="kyutai")
    if with_config:
        (directory / "mimi_config.json").write_text(
            json.dumps(kyutai_mimi_kwargs(model.audio_encoder.config))
        )
        (directory / "config.json").write_text(json.dumps(dict(kwargs, mimi_config_name="mimi_config.json")))
    return directory


def kyutai_reference(directory: Path):
    """Kyutai's own Mimi and greedy LMGen on a checkpoint `write_kyutai_checkpoint` wrote: (mimi, lm_gen).
    Needs Kyutai's moshi package (the equivalence tests skip without it)."""
    from moshi.models import lm as lm_module
    from moshi.models import loaders
    from safetensors.torch import load_file

    config = json.loads((directory / "config.json").read_text())
    mimi_kwargs = json.loads((directory / config.pop("mimi_config_name")).read_text())
    mimi = loaders.get_mimi(str(directory / KYUTAI_MIMI_NAME), mimi_kwargs, num_codebooks=8)
    lm = lm_module.LMModel(device="cpu", dtype=torch.float32, **config)
    lm.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    lm.eval()
    return mimi, lm_module.LMGen(lm, use_sampling=False, temp=0.0, temp_text=0.0)


def write_hf_checkpoint(directory: Path, model, tokenizer: Path) -> Path:
    """Write `model` in Hugging Face's layout: config.json + safetensors (Mimi included) + tokenizer.model."""
    model.save_pretrained(directory)
    shutil.copy(tokenizer, directory / "tokenizer.model")
    return directory
