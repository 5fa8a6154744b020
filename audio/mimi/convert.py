"""Kyutai's Mimi checkpoint layout -> transformers' `MimiModel` layout, in memory.

Kyutai ships Mimi as one safetensors file (`tokenizer-e351c8d8-checkpoint125.safetensors` in
`kyutai/moshiko-pytorch-bf16`) with the key names of its `moshi` package. transformers' `MimiModel`
computes the same thing under other names, with two real differences handled here:
- attention input projections are fused in Kyutai (`in_projs.0`, legacy `in_proj_weight`): split into q, k, v;
- Kyutai's RoPE rotates interleaved pairs (x0, x1), (x2, x3)... while transformers rotates halves
  (x_i, x_{i+d/2}): the q and k rows of every head are permuted so both compute the same scores.
"""

from __future__ import annotations

import re

import torch
from transformers import MimiConfig

KYUTAI_MIMI_FILENAME = "tokenizer-e351c8d8-checkpoint125.safetensors"

# Kyutai's transformer-layer names -> transformers' names (the attention projections are handled apart).
_LAYER_RENAMES = {
    "norm1.weight": "input_layernorm.weight",
    "norm1.bias": "input_layernorm.bias",
    "norm2.weight": "post_attention_layernorm.weight",
    "norm2.bias": "post_attention_layernorm.bias",
    "linear1.weight": "mlp.fc1.weight",
    "linear2.weight": "mlp.fc2.weight",
    "layer_scale_1.scale": "self_attn_layer_scale.scale",
    "layer_scale_2.scale": "mlp_layer_scale.scale",
    "self_attn.out_projs.0.weight": "self_attn.o_proj.weight",
    "self_attn.out_proj.weight": "self_attn.o_proj.weight",
}
_FUSED_IN_PROJ = ("self_attn.in_projs.0.weight", "self_attn.in_proj_weight", "self_attn.in_proj.weight")

# Kyutai's codebook buffers, current and legacy names (its own load hook accepts the legacy ones too).
_CODEBOOK_RENAMES = {
    "_initialized": "initialized",
    "inited": "initialized",
    "cluster_usage": "cluster_usage",
    "cluster_size": "cluster_usage",
    "embedding_sum": "embed_sum",
    "embed_sum": "embed_sum",
    "embed_avg": "embed_sum",
}
_QUANTIZER_HALVES = {
    "rvq_first": "semantic_residual_vector_quantizer",
    "rvq_rest": "acoustic_residual_vector_quantizer",
}


def mimi_config_for_kyutai() -> MimiConfig:
    """The Mimi used by Kyutai's 7B Moshi (moshiko / moshika): `moshi.models.loaders._mimi_config`.

    SEANet 64 filters, ratios 8,6,5,4, 512-dim latents, 8-layer 8-head transformers with a 250-step
    context (sliding window), 32 codebooks of 2048 entries (1 semantic), 12.5 Hz frames at 24 kHz.
    """
    return MimiConfig(
        sampling_rate=24_000,
        audio_channels=1,
        hidden_size=512,
        num_filters=64,
        num_residual_layers=1,
        upsampling_ratios=[8, 6, 5, 4],
        kernel_size=7,
        last_kernel_size=3,
        residual_kernel_size=3,
        dilation_growth_rate=2,
        use_causal_conv=True,
        pad_mode="constant",
        compress=2,
        trim_right_ratio=1.0,
        codebook_size=2048,
        codebook_dim=256,
        num_quantizers=32,
        use_conv_shortcut=False,
        vector_quantization_hidden_dimension=256,
        num_semantic_quantizers=1,
        upsample_groups=512,
        num_hidden_layers=8,
        intermediate_size=2048,
        num_attention_heads=8,
        num_key_value_heads=8,
        head_dim=64,
        hidden_act="gelu",
        max_position_embeddings=8000,
        norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        sliding_window=250,
        layer_scale_initial_scale=0.01,
        attention_bias=False,
    )


def is_kyutai_mimi_state_dict(keys) -> bool:
    """True when the key names are Kyutai's (SEANet under `encoder.model.`, quantizer halves `rvq_*`)."""
    return any(k.startswith(("encoder.model.", "decoder.model.", "quantizer.rvq_first.")) for k in keys)


def _interleaved_to_halves(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder each head's output rows from Kyutai's interleaved RoPE pairs to transformers' halves.

    Row 2i of a head (real part of pair i) becomes row i, row 2i+1 (imaginary part) becomes row i + d/2.
    """
    out_dim, in_dim = weight.shape
    head_dim = out_dim // num_heads
    return weight.reshape(num_heads, head_dim // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def convert_kyutai_mimi_state_dict(
    state_dict: dict[str, torch.Tensor], config: MimiConfig | None = None
) -> dict[str, torch.Tensor]:
    """Kyutai Mimi state dict -> the state dict of transformers' `MimiModel(config)`.

    config: only its attention head count matters here (for the RoPE row permutation);
    defaults to `mimi_config_for_kyutai()`. Raises ValueError on keys it does not know, naming them.
    """
    config = config or mimi_config_for_kyutai()
    num_heads, num_kv_heads = config.num_attention_heads, config.num_key_value_heads
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        new = _convert_simple_key(key)
        if new is not None:
            converted[new] = value
            continue
        match = re.fullmatch(r"(encoder|decoder)_transformer\.transformer\.layers\.(\d+)\.(.+)", key)
        if match is None:
            unknown.append(key)
            continue
        half, index, rest = match.groups()
        prefix = f"{half}.{half}_transformer.layers.{index}."
        if rest in _LAYER_RENAMES:
            converted[prefix + _LAYER_RENAMES[rest]] = value
        elif rest in _FUSED_IN_PROJ:
            q_rows = num_heads * config.head_dim
            kv_rows = num_kv_heads * config.head_dim
            if value.shape[0] != q_rows + 2 * kv_rows:
                raise ValueError(
                    f"{key} has {value.shape[0]} rows; expected {q_rows + 2 * kv_rows} "
                    f"(q, k, v of {num_heads} heads x {config.head_dim}): a different Mimi; pass config="
                )
            q, k, v = value.split([q_rows, kv_rows, kv_rows], dim=0)
            converted[prefix + "self_attn.q_proj.weight"] = _interleaved_to_halves(q, num_heads)
            converted[prefix + "self_attn.k_proj.weight"] = _interleaved_to_halves(k, num_kv_heads)
            converted[prefix + "self_attn.v_proj.weight"] = v
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
        raise ValueError(f"not a Kyutai Mimi checkpoint, or a variant this converter does not know: {shown}")
    return converted


def _convert_simple_key(key: str) -> str | None:
    """Renames that need no tensor change; None for attention-layer keys and unknown keys."""
    match = re.fullmatch(r"(encoder|decoder)\.model\.(\d+)\.(.+)", key)
    if match:
        half, index, rest = match.groups()
        # Kyutai nests nn.Conv1d in NormConv1d in StreamingConv1d: `conv.conv.` (and `convtr.convtr.`)
        rest = re.sub(r"(^|\.)(conv\.conv|convtr\.convtr)\.", r"\1conv.", rest)
        if not re.fullmatch(r"(block\.\d+\.|shortcut\.)?conv\.(weight|bias)", rest):
            return None
        return f"{half}.{half}_seanet.layers.{index}.{rest}"
    if key == "downsample.conv.conv.conv.weight":
        return "encoder.downsample.conv.weight"
    if key == "upsample.convtr.convtr.convtr.weight":
        return "decoder.upsample.conv.weight"
    match = re.fullmatch(r"quantizer\.(rvq_first|rvq_rest)\.(input_proj|output_proj)\.weight", key)
    if match:
        return f"quantizer.{_QUANTIZER_HALVES[match.group(1)]}.{match.group(2)}.weight"
    match = re.fullmatch(r"quantizer\.(rvq_first|rvq_rest)\.vq\.layers\.(\d+)\._codebook\.(\w+)", key)
    if match and match.group(3) in _CODEBOOK_RENAMES:
        half, index, name = match.groups()
        return f"quantizer.{_QUANTIZER_HALVES[half]}.layers.{index}.codebook.{_CODEBOOK_RENAMES[name]}"
    return None
