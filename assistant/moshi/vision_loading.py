"""Load a MoshiVis checkpoint (Kyutai's release layout) onto the Moshi engine.

One `model.safetensors` holds everything: keys starting `image_prefix.` are the image side
(`enc.model.*` a SigLIP vision transformer under transformers' `SiglipVisionModel` names,
`proj_xa`, `norm_xa.alpha`); the rest is the LM under MoshiVis's names (`llm.text_emb`,
`llm.transformer.layers.N.*`, `audio_emb.N`, `audio_linears.N`, the depth transformer as Moshi's),
with each temporal layer's `norm_cross` and cross-attention gate, and the one shared
cross-attention stored once under layer 0. The LM keys are renamed to Kyutai's Moshi names and
converted as Moshi's are; Mimi and the text tokenizer are Moshi's files.

Without a config.json the sizes are the release's (Moshi 7B, SigLIP 448 px: 1024 image tokens);
a config.json may describe another model with MoshiVis's own key names (`dim`, `num_layers`,
`audio_card`, ..., `image_encoder` for SigLIP's sizes), as the tiny test checkpoint does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from assistant.moshi.checkpoint import KYUTAI_MOSHI_NAME, CheckpointError
from assistant.moshi.kyutai import KYUTAI_7B_KWARGS, kyutai_lm_kwargs
from assistant.moshi.vision import ImageCrossAttention, ImageEncoder

IMAGE_PREFIX = "image_prefix."
# SigLIP of PaliGemma 2 at 448 px (`siglip_gemma2_448`), the release's encoder
SIGLIP_448 = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 448,
    "patch_size": 14,
}
# MoshiVis config name -> Kyutai LM keyword argument (the sizes a config.json may change)
_LM_KEYS = {
    "dim": "dim",
    "text_card": "text_card",
    "padding_token_id": "existing_text_padding_id",
    "n_q": "n_q",
    "dep_q": "dep_q",
    "audio_card": "card",
    "num_heads": "num_heads",
    "num_layers": "num_layers",
    "hidden_scale": "hidden_scale",
    "context": "context",
    "max_period": "max_period",
    "depformer_dim": "depformer_dim",
    "depformer_dim_feedforward": "depformer_dim_feedforward",
    "depformer_num_heads": "depformer_num_heads",
    "depformer_num_layers": "depformer_num_layers",
    "depformer_context": "depformer_context",
    "delays": "delays",
}
# The image fusion this engine implements (the release's); a config asking for another is refused.
_FUSION = {
    "xa_gating": "sigmoid",
    "xa_conditional_gating": True,
    "xa_shared": True,
    "xa_gate_shared": False,
    "norm_xa": "rms_norm",
    "num_extra_tokens": 0,
    "num_crossattended_tokens": -1,
}
_RENAMES = (  # MoshiVis LM names -> Kyutai's Moshi names
    ("llm.transformer.", "transformer."),
    ("llm.text_emb.", "text_emb."),
    ("llm.text_linear.", "text_linear."),
    ("llm.out_norm.", "out_norm."),
    ("audio_emb.", "emb."),
    ("audio_linears.", "linears."),
)


def is_moshivis(directory: Path, raw: dict | None) -> bool:
    """Whether `directory` holds a MoshiVis checkpoint: its config says so, or its weights have an image side."""
    if (raw or {}).get("model_type") == "moshivis":
        return True
    weights = directory / (raw or {}).get("model", KYUTAI_MOSHI_NAME)
    if not weights.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return any(key.startswith(IMAGE_PREFIX) for key in f.keys())


def moshivis_lm_kwargs(raw: dict | None) -> dict:
    """Kyutai LM keyword arguments of a MoshiVis config (the 7B's without one)."""
    raw = raw or {}
    for key, wanted in _FUSION.items():
        if key in raw and raw[key] != wanted:
            raise CheckpointError(f"MoshiVis config sets {key}={raw[key]!r}; only {wanted!r} is supported")
    encoder = str(raw.get("encoder_name", "siglip_gemma2_448"))
    if not encoder.startswith("siglip"):
        raise CheckpointError(
            f"MoshiVis config names encoder {encoder!r}; only SigLIP encoders are supported"
        )
    sizes = {_LM_KEYS[k]: v for k, v in raw.items() if k in _LM_KEYS}
    if "delays" in sizes:
        sizes["delays"] = list(sizes["delays"])
    return kyutai_lm_kwargs(dict(KYUTAI_7B_KWARGS, **sizes))


def split_state(state: dict[str, torch.Tensor], filename: str):
    """Release weights -> (LM under Kyutai's names, cross-attention parts, image side without its prefix)."""
    image = {k[len(IMAGE_PREFIX) :]: v for k, v in state.items() if k.startswith(IMAGE_PREFIX)}
    cross: dict[str, torch.Tensor] = {}
    lm: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(IMAGE_PREFIX):
            continue
        if ".cross_attention." in key or ".norm_cross." in key:
            cross[key] = value
            continue
        for old, new in _RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        lm[key] = value
    if not image or not cross:
        raise CheckpointError(f"{filename}: no image side ({IMAGE_PREFIX}*) or cross-attention weights")
    return lm, cross, image


def _take(state: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], filename: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{filename}: missing tensor {key!r} (expected shape {list(shape)})")
    tensor = state.pop(key)
    if tuple(tensor.shape) != shape:
        raise CheckpointError(
            f"{filename}: tensor {key!r} has shape {list(tensor.shape)}, expected {list(shape)} "
            "(does config.json match the weights?)"
        )
    return tensor


def build_cross_attention(cross: dict[str, torch.Tensor], config, filename: str) -> ImageCrossAttention:
    """The shared cross-attention and per-layer norms and gates from MoshiVis's weights."""
    dim, layers = config.hidden_size, config.num_hidden_layers
    module = ImageCrossAttention(dim, config.num_attention_heads, layers)
    base = "llm.transformer.layers."
    qkv = _take(cross, base + "0.cross_attention.mha.in_proj_weight", (3 * dim, dim), filename)
    state = dict(zip(("q.weight", "k.weight", "v.weight"), qkv.split(dim), strict=True))
    state["out.weight"] = _take(cross, base + "0.cross_attention.mha.out_proj.weight", (dim, dim), filename)
    for i in range(layers):
        state[f"norms.{i}.weight"] = _take(
            cross, f"{base}{i}.norm_cross.alpha", (1, 1, dim), filename
        ).reshape(dim)
        gate = f"{base}{i}.cross_attention.gate.alpha."
        state[f"gate_in.{i}.weight"] = _take(cross, gate + "0.weight", (dim // 8, dim), filename)
        state[f"gate_out.{i}.weight"] = _take(cross, gate + "2.weight", (dim, dim // 8), filename)
    # a checkpoint saved without deduplication repeats the shared module under every layer
    leftover = [k for k in cross if ".cross_attention.mha." not in k or ".layers.0." in k]
    if leftover:
        raise CheckpointError(f"{filename}: unexpected cross-attention tensors, e.g. {sorted(leftover)[:3]}")
    module.load_state_dict(state, strict=True)
    return module


def build_image_encoder(image: dict[str, torch.Tensor], raw: dict | None, lm_dim: int, filename: str):
    """SigLIP + projection + norm from the `image_prefix.` weights; sizes from config `image_encoder`."""
    from transformers import SiglipVisionConfig

    sizes = dict(SIGLIP_448, **(raw or {}).get("image_encoder", {}))
    encoder = ImageEncoder(SiglipVisionConfig(**sizes, vision_use_head=False), lm_dim)
    state = {f"siglip.{k[len('enc.model.') :]}": v for k, v in image.items() if k.startswith("enc.model.")}
    state.update(
        {
            "proj.weight": image.get("proj_xa.weight"),
            "proj.bias": image.get("proj_xa.bias"),
            "norm.weight": image.get("norm_xa.alpha", torch.empty(0)).reshape(-1),
        }
    )
    expected = encoder.state_dict()
    missing = sorted(k for k in expected if state.get(k) is None)
    extra = sorted(set(state) - set(expected))
    unknown = sorted(k for k in image if not k.startswith(("enc.model.", "proj_xa.", "norm_xa.")))
    if missing or extra or unknown:
        raise CheckpointError(
            f"{filename}: the image side does not match a SigLIP of {sizes} (missing {missing[:3]}, "
            f"unexpected {(extra + unknown)[:3]})"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{filename}: image tensor {key!r} has shape {list(tensor.shape)}, expected "
                f"{list(expected[key].shape)} (does config.json's image_encoder match the weights?)"
            )
    encoder.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return encoder
