"""Untrained Moshi models (random weights, real or tiny architecture) for `--model tiny` / `7b-random`.

Benchmarks and tests use them to exercise the whole engine without downloading a checkpoint;
speed does not depend on the weights' values. "-personaplex" models take role and voice prompts,
"-vis" ones images (MoshiVis: a SigLIP encoder and the gated cross-attention).
"""

from __future__ import annotations

import torch

from assistant.moshi.kyutai import KYUTAI_7B_KWARGS, kyutai_lm_config, kyutai_lm_kwargs
from assistant.moshi.loading import LoadedMoshi, random_moshi
from assistant.moshi.tokenizer import TextTokenizer
from assistant.moshi.vision import ImageCrossAttention, ImageEncoder, MoshiVision, use_kyuteye_norms
from assistant.moshi.vision_loading import SIGLIP_448

# --model names that build random weights (benchmarks); "-personaplex" ones take role/voice prompts
RANDOM_SIZES = ("tiny", "medium", "7b-random")
RANDOM_MODELS = RANDOM_SIZES + tuple(
    f"{size}-{kind}" for kind in ("personaplex", "vis") for size in RANDOM_SIZES
)
# SigLIP sizes of the "-vis" models (all 448 px, 1024 image tokens; the 7B's is the release's)
RANDOM_SIGLIP = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2},
    "medium": {
        "hidden_size": 384,
        "intermediate_size": 1536,
        "num_hidden_layers": 6,
        "num_attention_heads": 6,
    },
    "7b-random": {},
}
TINY_KWARGS = {
    "dim": 256,
    "num_heads": 4,
    "num_layers": 4,
    "text_card": 2000,
    "card": 2048,
    "context": 3000,
    "depformer_dim": 128,
    "depformer_num_heads": 4,
    "depformer_num_layers": 2,
}
# Between the two: a model whose steps cost tens of ms on a CPU, for prefill and scheduling figures.
MEDIUM_KWARGS = {
    "dim": 1024,
    "num_heads": 8,
    "num_layers": 8,
    "text_card": 32000,
    "card": 2048,
    "context": 3000,
    "depformer_dim": 256,
    "depformer_num_heads": 4,
    "depformer_num_layers": 2,
}


def _random_codebooks(mimi) -> None:
    """An untrained Mimi has all-zero codebooks (every code equal); random ones make decode do real work."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in mimi.modules():
            if hasattr(module, "embed_sum") and hasattr(module, "cluster_usage"):
                module.embed_sum.copy_(torch.randn(module.embed_sum.shape, generator=gen))
                module.cluster_usage.fill_(1.0)
                module._embed = None


def random_loaded(which: str, device: torch.device, dtype: torch.dtype) -> LoadedMoshi:
    """A LoadedMoshi with random weights (its `mimi` a MimiModel with random codebooks), one of RANDOM_MODELS."""
    from transformers import MimiConfig, MimiModel  # imported here: importing the backend stays cheap

    from audio.mimi.convert import mimi_config_for_kyutai

    if which not in RANDOM_MODELS:
        raise ValueError(f"unknown random model {which!r}; known: {', '.join(RANDOM_MODELS)}")
    size = which.removesuffix("-personaplex").removesuffix("-vis")
    if size in ("tiny", "medium"):
        sizes = TINY_KWARGS if size == "tiny" else MEDIUM_KWARGS
        kwargs = kyutai_lm_kwargs(dict(KYUTAI_7B_KWARGS, **sizes, depformer_dim_feedforward=None))
        mimi_config = MimiConfig(
            hidden_size=64,
            num_filters=8,
            num_hidden_layers=2,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=16,
            codebook_size=2048,
            codebook_dim=32,
            vector_quantization_hidden_dimension=32,
            num_quantizers=8,
            upsample_groups=64,
        )
    else:
        kwargs, mimi_config = dict(KYUTAI_7B_KWARGS), mimi_config_for_kyutai()
    config = kyutai_lm_config(kwargs, mimi_config)
    model = random_moshi(config, device=device, dtype=dtype)
    with torch.random.fork_rng(devices=[]):  # the same Mimi weights whatever ran before (tests, benches)
        torch.manual_seed(0)
        mimi = MimiModel(mimi_config).eval()
    _random_codebooks(mimi)
    tokenizer = TextTokenizer(
        pieces=[f"\u2581w{i}" for i in range(config.vocab_size)], silent_ids=frozenset({0, 3})
    )
    model_type = "personaplex" if which.endswith("-personaplex") else "moshi"
    vision = None
    if which.endswith("-vis"):
        model_type = "moshivis"
        use_kyuteye_norms(model)
        vision = random_vision(config, RANDOM_SIGLIP[size], device, dtype)
    return LoadedMoshi(
        model=model,
        tokenizer=tokenizer,
        mimi=mimi,
        layout="random",
        source=which,
        model_type=model_type,
        vision=vision,
    )


def random_vision(config, siglip_sizes: dict, device, dtype, std: float = 0.02) -> MoshiVision:
    """A MoshiVision with random N(0, std) weights (norm gains 1) for an LM of `config`."""
    from transformers import SiglipVisionConfig

    sizes = dict(SIGLIP_448, **siglip_sizes)
    gen = torch.Generator().manual_seed(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        encoder = ImageEncoder(SiglipVisionConfig(**sizes, vision_use_head=False), config.hidden_size)
        cross = ImageCrossAttention(config.hidden_size, config.num_attention_heads, config.num_hidden_layers)
    with torch.no_grad():
        for name, param in cross.named_parameters():
            if name.startswith("norms."):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return MoshiVision(encoder.to(device).eval(), cross.to(device, dtype)).eval()
