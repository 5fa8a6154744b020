"""Tiny random models written in the real checkpoint formats, for tests that must not download anything.

Mimi: `tiny_mimi_config()`, `random_mimi(config, seed)`, `write_mimi_checkpoint(path, model, layout)`.
The Kyutai layout is written by `kyutai_mimi_state_dict`, an inverse of audio.mimi.convert derived
from Kyutai's `moshi` source (key names of `moshi.models.loaders.get_mimi`, interleaved RoPE pairs).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import MimiConfig, MimiModel

from audio.mimi.convert import KYUTAI_MIMI_FILENAME

# -- Mimi ---------------------------------------------------------------------------------------------


def tiny_mimi_config(**overrides) -> MimiConfig:
    """A Mimi with the real frame geometry (24 kHz, 1920-sample frames, 25 Hz transformers) and
    tiny widths. The 6-step sliding window is short so that 50 frames (100 steps) wrap the KV ring."""
    fields = dict(
        num_filters=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=64,
        codebook_size=64,
        codebook_dim=16,
        vector_quantization_hidden_dimension=16,
        num_quantizers=10,
        upsample_groups=32,
        sliding_window=6,
        max_position_embeddings=8000,
    )
    fields.update(overrides)
    return MimiConfig(**fields)


def random_mimi(config: MimiConfig | None = None, seed: int = 0) -> MimiModel:
    """A MimiModel with deterministic random weights that make every part matter.

    transformers' init leaves the codebooks all zero (every code then decodes the same) and the layer
    scales at 0.01 (the transformers then barely change anything): both are randomised here, and the
    attention is sharpened so that a wrong position or head layout changes the output visibly.
    """
    config = config or tiny_mimi_config()
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MimiModel(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "embed_sum") and hasattr(module, "cluster_usage"):
                usage = torch.rand(module.cluster_usage.shape, generator=generator) + 0.5
                centroids = torch.randn(module.embed_sum.shape, generator=generator)
                module.cluster_usage.copy_(usage)
                module.embed_sum.copy_(centroids * usage[:, None])  # embed = embed_sum / usage
                module._embed = None  # drop the cached centroids
        for name, tensor in model.state_dict().items():
            if name.endswith("layer_scale.scale"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.4 + 0.3)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                tensor.mul_(4.0)
    return model


def write_mimi_checkpoint(path_or_dir: str | Path, model: MimiModel, layout: str = "kyutai") -> Path:
    """Save `model` as a real checkpoint and return the path to pass to StreamingMimi.from_pretrained.

    layout "hf": a transformers dir (config.json + model.safetensors, as `kyutai/mimi` on the Hub).
    layout "kyutai": Kyutai's single file; a dir gets `tokenizer-e351c8d8-checkpoint125.safetensors`.
    """
    path = Path(path_or_dir)
    if layout == "hf":
        model.save_pretrained(path)
        return path
    if layout != "kyutai":
        raise ValueError(f"layout must be 'kyutai' or 'hf', got {layout!r}")
    if path.suffix != ".safetensors":
        path.mkdir(parents=True, exist_ok=True)
        path = path / KYUTAI_MIMI_FILENAME
    state = {k: v.contiguous() for k, v in kyutai_mimi_state_dict(model).items()}
    save_file(state, str(path))
    return path


def kyutai_mimi_state_dict(model: MimiModel) -> dict[str, torch.Tensor]:
    """transformers MimiModel -> the state dict Kyutai's `moshi` MimiModel would have.

    Names follow moshi 0.2.x: SEANet `encoder.model.{i}` / `decoder.model.{i}` with `conv.conv` and
    `convtr.convtr` nesting; `{encoder,decoder}_transformer.transformer.layers.{n}` with a fused
    `self_attn.in_projs.0.weight` (q, k, v stacked), `out_projs.0`, `norm1/2`, `linear1/2`,
    `layer_scale_1/2`; `quantizer.rvq_first` / `rvq_rest` with `vq.layers.{k}._codebook.*`.
    """
    config = model.config
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach().clone()
        parts = key.split(".")
        if key.startswith(("encoder.encoder_seanet.layers.", "decoder.decoder_seanet.layers.")):
            half, index, rest = parts[0], parts[3], ".".join(parts[4:])
            module = model.get_submodule(".".join(parts[:4]))
            is_transposed = type(module).__name__ == "MimiConvTranspose1d"
            if rest.startswith("conv."):
                nest = "convtr.convtr." if is_transposed else "conv.conv."
                out[f"{half}.model.{index}.{nest}{rest[len('conv.') :]}"] = value
            else:  # resnet block: block.{j}.conv.{w} / shortcut.conv.{w}
                sub = rest.split(".")
                out[
                    f"{half}.model.{index}.{sub[0]}.{sub[1] + '.' if sub[0] == 'block' else ''}conv.conv.{sub[-1]}"
                ] = value
        elif key == "encoder.downsample.conv.weight":
            out["downsample.conv.conv.conv.weight"] = value
        elif key == "decoder.upsample.conv.weight":
            out["upsample.convtr.convtr.convtr.weight"] = value
        elif ".self_attn.q_proj." in key or ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue  # fused below
        elif "_transformer.layers." in key:
            half, layer = parts[0], parts[3]
            rest = ".".join(parts[4:])
            renames = {
                "input_layernorm.weight": "norm1.weight",
                "input_layernorm.bias": "norm1.bias",
                "post_attention_layernorm.weight": "norm2.weight",
                "post_attention_layernorm.bias": "norm2.bias",
                "mlp.fc1.weight": "linear1.weight",
                "mlp.fc2.weight": "linear2.weight",
                "self_attn_layer_scale.scale": "layer_scale_1.scale",
                "mlp_layer_scale.scale": "layer_scale_2.scale",
                "self_attn.o_proj.weight": "self_attn.out_projs.0.weight",
            }
            out[f"{half}_transformer.transformer.layers.{layer}.{renames[rest]}"] = value
        elif key.startswith("quantizer."):
            half = "rvq_first" if parts[1] == "semantic_residual_vector_quantizer" else "rvq_rest"
            if parts[2] in ("input_proj", "output_proj"):
                out[f"quantizer.{half}.{parts[2]}.weight"] = value
            else:
                buffer = {
                    "initialized": "_initialized",
                    "cluster_usage": "cluster_usage",
                    "embed_sum": "embedding_sum",
                }
                out[f"quantizer.{half}.vq.layers.{parts[3]}._codebook.{buffer[parts[5]]}"] = value
        else:
            raise KeyError(f"no Kyutai name for {key}")
    for half in ("encoder", "decoder"):
        transformer = getattr(model, half).get_submodule(f"{half}_transformer")
        for n, layer in enumerate(transformer.layers):
            attn = layer.self_attn
            q = _halves_to_interleaved(attn.q_proj.weight.detach(), config.num_attention_heads)
            k = _halves_to_interleaved(attn.k_proj.weight.detach(), config.num_key_value_heads)
            fused = torch.cat([q, k, attn.v_proj.weight.detach()]).clone()
            out[f"{half}_transformer.transformer.layers.{n}.self_attn.in_projs.0.weight"] = fused
    return out


def _halves_to_interleaved(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Per head, rows (r_0..r_{d/2-1}, i_0..i_{d/2-1}) -> (r_0, i_0, r_1, i_1, ...): Kyutai's RoPE pairs."""
    out_dim, in_dim = weight.shape
    head_dim = out_dim // num_heads
    return weight.reshape(num_heads, 2, head_dim // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def kyutai_mimi_kwargs(config: MimiConfig) -> dict:
    """The `mimi_config` dict of Kyutai's `moshi.models.loaders.get_mimi` for the same Mimi as `config`."""
    seanet = {
        "channels": config.audio_channels,
        "dimension": config.hidden_size,
        "causal": True,
        "n_filters": config.num_filters,
        "n_residual_layers": config.num_residual_layers,
        "activation": "ELU",
        "compress": config.compress,
        "dilation_base": config.dilation_growth_rate,
        "disable_norm_outer_blocks": 0,
        "kernel_size": config.kernel_size,
        "residual_kernel_size": config.residual_kernel_size,
        "last_kernel_size": config.last_kernel_size,
        "norm": "none",
        "pad_mode": "constant",
        "ratios": list(config.upsampling_ratios),
        "true_skip": not config.use_conv_shortcut,
    }
    quantizer = {
        "dimension": config.codebook_dim,
        "n_q": config.num_quantizers,
        "bins": config.codebook_size,
        "input_dimension": config.hidden_size,
        "output_dimension": config.hidden_size,
    }
    transformer = {
        "d_model": config.hidden_size,
        "num_heads": config.num_attention_heads,
        "num_layers": config.num_hidden_layers,
        "causal": True,
        "layer_scale": config.layer_scale_initial_scale,
        "context": config.sliding_window,
        "conv_layout": True,
        "max_period": config.rope_parameters["rope_theta"],
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "dim_feedforward": config.intermediate_size,
        "input_dimension": config.hidden_size,
        "output_dimensions": [config.hidden_size],
    }
    return {
        "sample_rate": config.sampling_rate,
        "channels": config.audio_channels,
        "frame_rate": config.frame_rate,
        "seanet": seanet,
        "quantizer": quantizer,
        "transformer": transformer,
    }
