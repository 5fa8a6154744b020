"""Kyutai's Moshi checkpoint layout -> transformers': the LM keyword arguments as a config, and the
weights renamed (RoPE q/k rows permuted, fused and per-step depth weights split), in memory."""

from __future__ import annotations

import logging
import re

import torch

from assistant.moshi.checkpoint import DEFAULT_DELAYS, CheckpointError

# Kyutai's LM keyword arguments for the 7B moshiko/moshika (moshi/models/loaders.py `_lm_kwargs`).
KYUTAI_7B_KWARGS: dict = {
    "dim": 4096,
    "text_card": 32000,
    "existing_text_padding_id": 3,
    "n_q": 16,
    "dep_q": 8,
    "card": 2048,
    "num_heads": 32,
    "num_layers": 32,
    "hidden_scale": 4.125,
    "causal": True,
    "layer_scale": None,
    "context": 3000,
    "max_period": 10000,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "depformer_dim": 1024,
    "depformer_dim_feedforward": int(4.125 * 1024),
    "depformer_num_heads": 16,
    "depformer_num_layers": 6,
    "depformer_layer_scale": None,
    "depformer_multi_linear": True,
    "depformer_context": 8,
    "depformer_max_period": 10000,
    "depformer_gating": "silu",
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "delays": list(DEFAULT_DELAYS),
}

MODEL_TYPES = ("moshi", "personaplex")
# Settings our step implements; a Kyutai config asking for anything else is refused up front.
_REQUIRED_KYUTAI = {
    "causal": True,
    "layer_scale": None,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "depformer_layer_scale": None,
    "depformer_multi_linear": True,
    "depformer_gating": "silu",
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
}
# Architecture switches accepted only at their off value (anything else changes the weights or the step).
_OFF_ONLY_KYUTAI = (
    "norm_emb",
    "bias_proj",
    "depformer_weights_per_step_schedule",
    "depformer_low_rank_embeddings",
    "depformer_norm",
    "demux_second_stream",
    "demux_second_text_stream",
    "extra_heads_num_heads",
    "cross_attention",
    "conditioners",
    "fuser",
    "lora",
    "quantize",
)
# Bookkeeping keys with no effect on the LM's computation.
_IGNORED_KYUTAI = {
    "model_type",
    "lm_gen_config",
    "model_id",
    "depformer_causal",
    "depformer_max_period",
    "existing_text_end_padding_id",
    "mimi_config_name",
    "gradient_checkpointing",
    "tts_config",
    "stt_config",
    "lora_name",
    "lora_rank",
    "lora_scaling",
    "extra_heads_dim",
    "kv_repeat",
    "text_card_out",
    "silence_tokens",
    "sine_tokens",
    "default_voice",
}
# What an unknown key's name says when it may change the model: sizes, layers, heads, codebooks,
# delays, the depth transformer, attention, adapters, conditioning, norms, positions. Such a key
# is refused; any other unknown key is metadata (a version, a date, a training note) and ignored.
_ARCHITECTURE_WORDS = re.compile(
    r"dim|layer|head|card|n_q|dep_q|delay|depformer|attention|attn|cross|lora|condition|fuser|"
    r"quantiz|norm|gating|emb|context|period|rope|causal|bias|scale|demux|kv|hidden|vocab|codebook|"
    r"stream|rank|linear|dropout|window"
)
_logged_ignored: set[tuple[str, ...]] = set()
log = logging.getLogger(__name__)


# -- Kyutai config -> transformers config -------------------------------------------------------
def _gated_hidden(dim: int, dim_feedforward: int) -> int:
    """Hidden width of Kyutai's ActivationGating for these sizes (its own rule, reproduced)."""
    return (21 * dim) // 8 if dim_feedforward == 4 * dim else (2 * dim_feedforward) // 3


def kyutai_lm_kwargs(raw_config: dict | None) -> dict:
    """Kyutai LM keyword arguments: a config.json's LM part, or the 7B defaults without one."""
    if raw_config is None:
        return dict(KYUTAI_7B_KWARGS)
    kwargs = {k: v for k, v in raw_config.items() if k not in ("moshi_name", "mimi_name", "tokenizer_name")}
    missing = [
        k for k in ("dim", "num_heads", "num_layers", "text_card", "card", "n_q", "dep_q") if k not in kwargs
    ]
    if missing:
        raise CheckpointError(f"Kyutai config.json lacks {missing}; expected Kyutai's LM keyword arguments")
    merged = {k: v for k, v in KYUTAI_7B_KWARGS.items() if k not in ("depformer_dim_feedforward",)} | kwargs
    for key, wanted in _REQUIRED_KYUTAI.items():
        if key in merged and merged[key] != wanted:
            raise CheckpointError(f"Kyutai config sets {key}={merged[key]!r}; only {wanted!r} is supported")
    for key in _OFF_ONLY_KYUTAI:
        if merged.get(key):
            raise CheckpointError(
                f"Kyutai config sets {key}={merged[key]!r}, which this engine does not support"
            )
    if merged.get("model_type", "moshi") not in MODEL_TYPES:
        raise CheckpointError(
            f"Kyutai config has model_type={merged['model_type']!r}; supported: {', '.join(MODEL_TYPES)}"
        )
    if merged.get("text_card_out") not in (None, merged["text_card"]):
        raise CheckpointError(
            f"Kyutai config sets text_card_out={merged['text_card_out']} != text_card; not supported"
        )
    unknown = sorted(set(merged) - set(KYUTAI_7B_KWARGS) - _IGNORED_KYUTAI - set(_OFF_ONLY_KYUTAI))
    architectural = [key for key in unknown if _ARCHITECTURE_WORDS.search(key.lower())]
    if architectural:
        raise CheckpointError(
            f"Kyutai config has unknown keys {architectural} that may change the model; "
            "is this a Moshi LM config?"
        )
    if unknown and tuple(unknown) not in _logged_ignored:
        _logged_ignored.add(tuple(unknown))
        log.info("config.json: ignoring %s (metadata: no effect on the model)", ", ".join(unknown))
    merged = {k: v for k, v in merged.items() if k not in unknown}
    if merged["n_q"] % 2 or merged["dep_q"] not in (merged["n_q"] // 2, merged["n_q"]):
        raise CheckpointError(
            f"n_q={merged['n_q']}, dep_q={merged['dep_q']}: expected n_q = 2 x the assistant's codebooks "
            "and dep_q = n_q / 2 (Moshi) or n_q (PersonaPlex, whose depth transformer also predicts the user)"
        )
    if len(merged["delays"]) != merged["n_q"] + 1:
        raise CheckpointError(
            f"delays has {len(merged['delays'])} entries, expected n_q + 1 = {merged['n_q'] + 1}"
        )
    return merged


def kyutai_lm_config(kwargs: dict, mimi_config=None):
    """transformers MoshiConfig equal to Kyutai's LM keyword arguments."""
    from transformers import MimiConfig, MoshiConfig

    dim, dep_dim = kwargs["dim"], kwargs["depformer_dim"]
    ff = int(kwargs["hidden_scale"] * dim)
    dep_ff = kwargs.get("depformer_dim_feedforward") or int(kwargs["hidden_scale"] * dep_dim)
    kv_repeat = kwargs.get("kv_repeat", 1)
    mimi_config = mimi_config or MimiConfig(codebook_size=kwargs["card"])
    return MoshiConfig(
        vocab_size=kwargs["text_card"],
        hidden_size=dim,
        num_hidden_layers=kwargs["num_layers"],
        num_attention_heads=kwargs["num_heads"],
        num_key_value_heads=kwargs["num_heads"] // kv_repeat,
        audio_vocab_size=kwargs["card"],
        max_position_embeddings=kwargs["context"],
        sliding_window=kwargs["context"],
        rope_parameters={"rope_type": "default", "rope_theta": float(kwargs["max_period"])},
        ffn_dim=2 * _gated_hidden(dim, ff),
        rms_norm_eps=1e-8,
        # the assistant's codebooks; a PersonaPlex depth transformer's further steps (the user's codes)
        # are never needed, since the user's codes are always given (see convert_kyutai_lm_state_dict)
        num_codebooks=kwargs["n_q"] // 2,
        audio_encoder_config=mimi_config.to_dict(),
        depth_decoder_config={
            "hidden_size": dep_dim,
            "num_hidden_layers": kwargs["depformer_num_layers"],
            "num_attention_heads": kwargs["depformer_num_heads"],
            "ffn_dim": 2 * _gated_hidden(dep_dim, dep_ff),
            "sliding_window": kwargs["depformer_context"],
            "max_position_embeddings": kwargs["depformer_context"] + 1,
            "rms_norm_eps": 1e-8,
        },
    )


def mimi_config_from_kyutai(mimi_kwargs: dict):
    """transformers MimiConfig from Kyutai's Mimi config JSON (`mimi_config_name` in a Kyutai config.json)."""
    from audio.mimi.convert import mimi_config_for_kyutai

    try:
        seanet, quantizer, transformer = (
            mimi_kwargs["seanet"],
            mimi_kwargs["quantizer"],
            mimi_kwargs["transformer"],
        )
        fields = {
            "sampling_rate": mimi_kwargs.get("sample_rate", 24_000),
            "audio_channels": mimi_kwargs.get("channels", 1),
            "hidden_size": seanet["dimension"],
            "num_filters": seanet["n_filters"],
            "num_residual_layers": seanet["n_residual_layers"],
            "upsampling_ratios": list(seanet["ratios"]),
            "kernel_size": seanet["kernel_size"],
            "last_kernel_size": seanet["last_kernel_size"],
            "residual_kernel_size": seanet["residual_kernel_size"],
            "dilation_growth_rate": seanet["dilation_base"],
            "compress": seanet["compress"],
            "use_conv_shortcut": not seanet.get("true_skip", True),
            "codebook_size": quantizer["bins"],
            "codebook_dim": quantizer["dimension"],
            "vector_quantization_hidden_dimension": quantizer["dimension"],
            "num_quantizers": quantizer["n_q"],
            "upsample_groups": seanet["dimension"],
            "num_hidden_layers": transformer["num_layers"],
            "num_attention_heads": transformer["num_heads"],
            "num_key_value_heads": transformer["num_heads"],
            "head_dim": transformer["d_model"] // transformer["num_heads"],
            "intermediate_size": transformer["dim_feedforward"],
            "sliding_window": transformer["context"],
            "layer_scale_initial_scale": transformer.get("layer_scale", 0.01),
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": float(transformer.get("max_period", 10000)),
            },
        }
    except (KeyError, TypeError) as exc:
        raise CheckpointError(
            f"Kyutai Mimi config lacks {exc}; expected seanet/quantizer/transformer sections"
        ) from exc
    config = mimi_config_for_kyutai()
    for key, value in fields.items():
        setattr(config, key, value)
    return config


# -- Kyutai weights -> transformers weights ----------------------------------------------------
def rope_rows(num_heads: int, head_dim: int) -> torch.Tensor:
    """Row order turning Kyutai's interleaved-pair RoPE into transformers' rotate-half RoPE."""
    per_head = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return (torch.arange(num_heads)[:, None] * head_dim + per_head[None, :]).reshape(-1)


class _Source:
    """Pops Kyutai tensors by name, checking shapes, so errors name the file, key and expected shape."""

    def __init__(self, state: dict[str, torch.Tensor], filename: str):
        self.state = dict(state)
        self.filename = filename

    def take(self, key: str, shape: tuple[int, ...], legacy: str | None = None) -> torch.Tensor:
        if key not in self.state and legacy is not None and legacy in self.state:
            key = legacy
        if key not in self.state:
            raise CheckpointError(f"{self.filename}: missing tensor {key!r} (expected shape {list(shape)})")
        tensor = self.state.pop(key)
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(
                f"{self.filename}: tensor {key!r} has shape {list(tensor.shape)}, expected {list(shape)} "
                "for this config (does config.json match the weights?)"
            )
        return tensor

    def drop_depth_steps_from(self, first: int) -> None:
        """Forget depth-transformer weights of steps >= first (a PersonaPlex model's user steps)."""
        pattern = re.compile(
            r"^(depformer_in|linears|depformer_emb)\.(\d+)\.|^depformer\.layers\.\d+\."
            r"(self_attn\.in_projs|self_attn\.out_projs|gating)\.(\d+)\."
        )
        for key in list(self.state):
            match = pattern.match(key)
            if match is None:
                continue
            step = int(match.group(2) or match.group(4))
            limit = first - 1 if match.group(1) == "depformer_emb" else first
            if step >= limit:
                del self.state[key]

    def check_empty(self) -> None:
        if self.state:
            extra = sorted(self.state)
            raise CheckpointError(
                f"{self.filename}: {len(extra)} unexpected tensors, e.g. {extra[:5]}; "
                "this Moshi variant (or config.json) is not supported"
            )


def convert_kyutai_lm_state_dict(
    state: dict[str, torch.Tensor],
    config,
    filename: str = "model.safetensors",
    *,
    user_depth_steps: bool = False,
):
    """Kyutai LM weights -> the LM part of MoshiForConditionalGeneration's state dict (no Mimi).

    Fused q/k/v projections are split, q/k rows of the temporal transformer permuted for
    transformers' RoPE, and the depth transformer's per-codebook weights stacked.

    A PersonaPlex depth transformer has steps past the assistant's K codebooks (they predict the
    user's codes). Those outputs are never used: the user's codes of a position are always given,
    so they are forced wherever the reference reads them, and they come after every assistant
    codebook in the depth order, so they cannot change one. With `user_depth_steps` their
    weights (present or not) are dropped.
    """
    src = _Source(state, filename)
    dep = config.depth_decoder_config
    dim, heads, kv_heads, hd = (
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
    )
    card, text_card, K = config.audio_vocab_size, config.vocab_size, config.num_codebooks
    out: dict[str, torch.Tensor] = {
        "decoder.model.embed_tokens.weight": src.take("text_emb.weight", (text_card + 1, dim)),
        "decoder.lm_head.weight": src.take("text_linear.weight", (text_card, dim)),
        "decoder.model.norm.weight": src.take("out_norm.alpha", (1, 1, dim)).reshape(dim),
    }
    for i in range(2 * K):
        out[f"embed_tokens.{i}.weight"] = src.take(f"emb.{i}.weight", (card + 1, dim))
    q_rows, k_rows = rope_rows(heads, hd), rope_rows(kv_heads, hd)
    for layer in range(config.num_hidden_layers):
        k_in, k_out = f"transformer.layers.{layer}.", f"decoder.model.layers.{layer}."
        qkv = src.take(
            k_in + "self_attn.in_projs.0.weight",
            ((heads + 2 * kv_heads) * hd, dim),
            legacy=k_in + "self_attn.in_proj_weight",
        )
        q, k, v = qkv.split([heads * hd, kv_heads * hd, kv_heads * hd])
        out[k_out + "self_attn.q_proj.linear.weight"] = q[q_rows]
        out[k_out + "self_attn.k_proj.linear.weight"] = k[k_rows]
        out[k_out + "self_attn.v_proj.linear.weight"] = v
        out[k_out + "self_attn.o_proj.linear.weight"] = src.take(
            k_in + "self_attn.out_projs.0.weight",
            (dim, heads * hd),
            legacy=k_in + "self_attn.out_proj.weight",
        )
        out[k_out + "input_layernorm.weight"] = src.take(k_in + "norm1.alpha", (1, 1, dim)).reshape(dim)
        out[k_out + "post_attention_layernorm.weight"] = src.take(k_in + "norm2.alpha", (1, 1, dim)).reshape(
            dim
        )
        out[k_out + "mlp.fc1.weight"] = src.take(k_in + "gating.linear_in.weight", (config.ffn_dim, dim))
        out[k_out + "mlp.fc2.weight"] = src.take(
            k_in + "gating.linear_out.weight", (dim, config.ffn_dim // 2)
        )

    ddim, dheads, dhd = dep.hidden_size, dep.num_attention_heads, dep.head_dim
    dkv = dep.num_key_value_heads
    out["depth_decoder.text_embed_tokens.weight"] = src.take(
        "depformer_text_emb.weight", (text_card + 1, ddim)
    )
    for i in range(K - 1):
        out[f"depth_decoder.embed_tokens.{i}.weight"] = src.take(
            f"depformer_emb.{i}.weight", (card + 1, ddim)
        )
    out["depth_decoder.input_projections.weight"] = torch.stack(
        [src.take(f"depformer_in.{i}.weight", (ddim, dim)) for i in range(K)]
    )
    out["depth_decoder.lm_heads.weight"] = torch.stack(
        [src.take(f"linears.{i}.weight", (card, ddim)) for i in range(K)]
    )
    for layer in range(dep.num_hidden_layers):
        k_in, k_out = f"depformer.layers.{layer}.", f"depth_decoder.layers.{layer}."
        legacy = src.state.pop(k_in + "self_attn.in_proj_weight", None)
        if legacy is not None:  # old checkpoints fuse the steps' projections into one tensor
            rows = (dheads + 2 * dkv) * dhd
            for i, part in enumerate(legacy.split(rows)):
                src.state[k_in + f"self_attn.in_projs.{i}.weight"] = part
        legacy_out = src.state.pop(k_in + "self_attn.out_proj.weight", None)
        if legacy_out is not None:
            for i, part in enumerate(legacy_out.split(ddim)):
                src.state[k_in + f"self_attn.out_projs.{i}.weight"] = part
        qs, ks, vs = [], [], []
        for i in range(K):
            qkv = src.take(k_in + f"self_attn.in_projs.{i}.weight", ((dheads + 2 * dkv) * dhd, ddim))
            q, k, v = qkv.split([dheads * dhd, dkv * dhd, dkv * dhd])
            qs.append(q)
            ks.append(k)
            vs.append(v)
        out[k_out + "self_attn.q_proj.linear.weight"] = torch.stack(qs)
        out[k_out + "self_attn.k_proj.linear.weight"] = torch.stack(ks)
        out[k_out + "self_attn.v_proj.linear.weight"] = torch.stack(vs)
        out[k_out + "self_attn.o_proj.linear.weight"] = torch.stack(
            [src.take(k_in + f"self_attn.out_projs.{i}.weight", (ddim, dheads * dhd)) for i in range(K)]
        )
        out[k_out + "input_layernorm.weight"] = src.take(k_in + "norm1.alpha", (1, 1, ddim)).reshape(ddim)
        out[k_out + "post_attention_layernorm.weight"] = src.take(k_in + "norm2.alpha", (1, 1, ddim)).reshape(
            ddim
        )
        out[k_out + "mlp.fc1.weight"] = torch.stack(
            [src.take(k_in + f"gating.{i}.linear_in.weight", (dep.ffn_dim, ddim)) for i in range(K)]
        )
        out[k_out + "mlp.fc2.weight"] = torch.stack(
            [src.take(k_in + f"gating.{i}.linear_out.weight", (ddim, dep.ffn_dim // 2)) for i in range(K)]
        )
    if user_depth_steps:
        src.drop_depth_steps_from(K)
    src.check_empty()
    return out
