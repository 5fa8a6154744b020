"""Load a Moshi checkpoint in either layout into transformers' MoshiForConditionalGeneration.

Layouts:
- Kyutai's (`kyutai/moshiko-pytorch-bf16`): `model.safetensors` with Kyutai's key names, the Mimi
  weights in `tokenizer-e351c8d8-checkpoint125.safetensors`, the SentencePiece text tokenizer
  `tokenizer_spm_32k_3.model`, and an optional `config.json` of LM keyword arguments (plus
  `moshi_name`, `mimi_name`, `tokenizer_name` overriding the file names). Keys are converted in memory.
- Hugging Face's converted layout (`kmhf/hf-moshiko`): `config.json` (model_type "moshi") with
  (sharded) safetensors that already hold transformers' names, Mimi included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

KYUTAI_MOSHI_NAME = "model.safetensors"
KYUTAI_MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
KYUTAI_TOKENIZER_NAME = "tokenizer_spm_32k_3.model"
DEFAULT_DELAYS = (0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1)
TEXT_PAD_ID = 3  # Kyutai's `existing_text_padding_id`
TEXT_END_PAD_ID = 0  # marks the last padding step before a word

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
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing file, unknown layout, mismatched shapes."""


@dataclass
class TextTokenizer:
    """Turns text token ids into display text: SentencePiece pieces with "▁" shown as a space."""

    pieces: list[str]
    silent_ids: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def from_file(cls, path: Path, silent_ids: set[int]) -> TextTokenizer:
        path = Path(path)
        if path.suffix == ".json":
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(path))
            pieces = [tok.id_to_token(i) or "" for i in range(tok.get_vocab_size())]
            silent = set(silent_ids)
        else:
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
            pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
            silent = set(silent_ids) | {i for i in range(len(pieces)) if sp.is_control(i) or sp.is_unknown(i)}
        return cls(pieces=pieces, silent_ids=frozenset(silent))

    def piece(self, token_id: int) -> str:
        """Display text of one token; padding, control and out-of-vocabulary ids give ""."""
        if token_id in self.silent_ids or not 0 <= token_id < len(self.pieces):
            return ""
        piece = self.pieces[token_id]
        if piece.startswith("<") and piece.endswith(">") and len(piece) > 2:
            return ""  # <pad>, <s>, </s>, <unk> and friends of a tokenizer.json
        if piece.startswith("<0x") and piece.endswith(">"):
            return ""
        return piece.replace("\u2581", " ")

    def decode(self, token_ids) -> str:
        return "".join(self.piece(int(t)) for t in token_ids)


@dataclass
class LoadedMoshi:
    """A loaded checkpoint. `mimi` is transformers' MimiModel (HF layout) or the Kyutai Mimi file."""

    model: torch.nn.Module  # MoshiForConditionalGeneration, eval mode, on its device and dtype
    tokenizer: TextTokenizer
    mimi: object
    layout: str  # "kyutai" | "hf"
    source: str
    mimi_config: object = None  # transformers MimiConfig of a Kyutai Mimi file; None = the 7B's Mimi
    delays: tuple[int, ...] = DEFAULT_DELAYS
    text_pad_id: int = TEXT_PAD_ID
    text_end_pad_id: int = TEXT_END_PAD_ID


# -- device and dtype --------------------------------------------------------------------------
_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` means CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device; use --device cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`None` means bfloat16 on CUDA and float32 on CPU."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of bf16, fp16, fp32") from None


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
    if merged.get("model_type", "moshi") != "moshi":
        raise CheckpointError(
            f"Kyutai config has model_type={merged['model_type']!r}; only 'moshi' models are supported"
        )
    if merged.get("text_card_out") not in (None, merged["text_card"]):
        raise CheckpointError(
            f"Kyutai config sets text_card_out={merged['text_card_out']} != text_card; not supported"
        )
    unknown = sorted(set(merged) - set(KYUTAI_7B_KWARGS) - _IGNORED_KYUTAI - set(_OFF_ONLY_KYUTAI))
    if unknown:
        raise CheckpointError(f"Kyutai config has unknown keys {unknown}; is this a Moshi LM config?")
    if merged["n_q"] != 2 * merged["dep_q"]:
        raise CheckpointError(
            f"n_q={merged['n_q']} must be 2 * dep_q={merged['dep_q']} (assistant + user streams)"
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
        num_codebooks=kwargs["dep_q"],
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

    def check_empty(self) -> None:
        if self.state:
            extra = sorted(self.state)
            raise CheckpointError(
                f"{self.filename}: {len(extra)} unexpected tensors, e.g. {extra[:5]}; "
                "this Moshi variant (or config.json) is not supported"
            )


def convert_kyutai_lm_state_dict(state: dict[str, torch.Tensor], config, filename: str = "model.safetensors"):
    """Kyutai LM weights -> the LM part of MoshiForConditionalGeneration's state dict (no Mimi).

    Fused q/k/v projections are split, q/k rows of the temporal transformer permuted for
    transformers' RoPE, and the depth transformer's per-codebook weights stacked.
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
        if legacy is not None:  # old checkpoints fuse the 8 steps' projections into one tensor
            for i, part in enumerate(legacy.chunk(K)):
                src.state[k_in + f"self_attn.in_projs.{i}.weight"] = part
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
    src.check_empty()
    return out


# -- building models ---------------------------------------------------------------------------
def _fix_rotary_buffers(model: torch.nn.Module, device: torch.device) -> None:
    """Recompute RoPE frequencies, which are non-persistent buffers and so stay on meta after assign-loading."""
    from transformers.models.moshi.modeling_moshi import MoshiRotaryEmbedding

    for module in model.modules():
        if isinstance(module, MoshiRotaryEmbedding):
            inv_freq, scaling = module.compute_default_rope_parameters(module.config)
            module.inv_freq = inv_freq.to(device)
            module.original_inv_freq = inv_freq.clone().to(device)
            module.attention_scaling = scaling


def build_moshi_from_lm_state(config, lm_state: dict[str, torch.Tensor], device, dtype, filename: str):
    """MoshiForConditionalGeneration holding `lm_state` (transformers names), without a Mimi inside."""
    from transformers import MoshiForConditionalGeneration

    with torch.device("meta"):
        model = MoshiForConditionalGeneration(config)
    model.audio_encoder = None  # Kyutai ships Mimi separately; the codec loads it
    expected = model.state_dict()
    missing = sorted(set(expected) - set(lm_state))
    if missing:
        raise CheckpointError(f"{filename}: weights missing after conversion, e.g. {missing[:5]}")
    for key, tensor in lm_state.items():
        if key not in expected:
            raise CheckpointError(f"{filename}: converted key {key!r} is not part of the model")
        if tuple(expected[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{filename}: {key!r} has shape {list(tensor.shape)}, expected {list(expected[key].shape)}"
            )
    state = {k: v.to(device=device, dtype=dtype) for k, v in lm_state.items()}
    model.load_state_dict(state, assign=True, strict=True)
    _fix_rotary_buffers(model, device)
    return model.eval()


def random_moshi(config, *, device, dtype, seed: int = 0, std: float = 0.02):
    """A MoshiForConditionalGeneration (no Mimi) with random N(0, std) weights, built directly on `device`."""
    from transformers import MoshiForConditionalGeneration

    with torch.device("meta"):
        model = MoshiForConditionalGeneration(config)
    model.audio_encoder = None
    model = model.to(dtype).to_empty(device=device)  # cast on meta first: no float32 copy of 7B on the device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, std, generator=gen)
    _fix_rotary_buffers(model, device)
    return model.eval()


# -- finding and loading checkpoints -----------------------------------------------------------
def _local_dir(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"--model {source}: expected a checkpoint directory or a Hugging Face repo id")
    if source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise CheckpointError(
            f"--model {source}: no such directory, and not a Hugging Face repo id (owner/name)"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.model"]))
    except Exception as exc:  # network, auth, missing repo: the hub's message says which
        raise CheckpointError(
            f"--model {source}: could not fetch the repo from the Hugging Face hub: {exc}"
        ) from exc


def detect_layout(directory: Path) -> str:
    """ "hf" for transformers' layout (config.json with model_type "moshi"), else "kyutai"."""
    config_path = directory / "config.json"
    if config_path.is_file():
        raw = json.loads(config_path.read_text())
        if raw.get("model_type") == "moshi" and ("audio_encoder_config" in raw or "architectures" in raw):
            return "hf"
        return "kyutai"
    if (directory / KYUTAI_MOSHI_NAME).is_file():
        return "kyutai"
    files = sorted(p.name for p in directory.iterdir())[:10]
    raise CheckpointError(
        f"checkpoint dir {directory} has neither config.json nor {KYUTAI_MOSHI_NAME} (it holds {files}); "
        "expected Kyutai's layout (model.safetensors, Mimi and tokenizer files) or Hugging Face's (config.json "
        "+ safetensors)"
    )


def _need(directory: Path, name: str, what: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint dir {directory} has no {name} ({what})")
    return path


def load_moshi(source: str | Path, *, device=None, dtype=None) -> LoadedMoshi:
    """Load a Moshi checkpoint (local dir or HF repo id, either layout) onto `device` in `dtype`."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    directory = _local_dir(str(source))
    layout = detect_layout(directory)
    if layout == "kyutai":
        return _load_kyutai(directory, device, dtype, str(source))
    return _load_hf(directory, device, dtype, str(source))


def _load_kyutai(directory: Path, device, dtype, source: str) -> LoadedMoshi:
    from safetensors.torch import load_file

    config_path = directory / "config.json"
    raw = json.loads(config_path.read_text()) if config_path.is_file() else None
    names = raw or {}
    moshi_file = _need(directory, names.get("moshi_name", KYUTAI_MOSHI_NAME), "Kyutai LM weights")
    mimi_file = _need(directory, names.get("mimi_name", KYUTAI_MIMI_NAME), "Kyutai Mimi weights")
    tok_file = _need(
        directory, names.get("tokenizer_name", KYUTAI_TOKENIZER_NAME), "SentencePiece text tokenizer"
    )
    kwargs = kyutai_lm_kwargs(raw)
    mimi_config = None
    if names.get("mimi_config_name"):
        mimi_json = _need(directory, names["mimi_config_name"], "Kyutai Mimi config named by config.json")
        mimi_config = mimi_config_from_kyutai(json.loads(mimi_json.read_text()))
    config = kyutai_lm_config(kwargs, mimi_config)
    lm_state = convert_kyutai_lm_state_dict(load_file(str(moshi_file)), config, filename=str(moshi_file))
    model = build_moshi_from_lm_state(config, lm_state, device, dtype, str(moshi_file))
    pad = kwargs.get("existing_text_padding_id", TEXT_PAD_ID)
    end_pad = kwargs.get("existing_text_end_padding_id", TEXT_END_PAD_ID)
    return LoadedMoshi(
        model=model,
        tokenizer=TextTokenizer.from_file(tok_file, {pad, end_pad}),
        mimi=mimi_file,
        mimi_config=mimi_config,
        layout="kyutai",
        source=source,
        delays=tuple(kwargs["delays"]),
        text_pad_id=pad,
        text_end_pad_id=end_pad,
    )


def _find_hf_tokenizer(directory: Path) -> Path:
    for name in ("tokenizer.model", KYUTAI_TOKENIZER_NAME):
        if (directory / name).is_file():
            return directory / name
    models = sorted(directory.glob("*.model"))
    if models:
        return models[0]
    if (directory / "tokenizer.json").is_file():
        return directory / "tokenizer.json"
    raise CheckpointError(
        f"checkpoint dir {directory} has no text tokenizer (tokenizer.model or tokenizer.json)"
    )


def _load_hf(directory: Path, device, dtype, source: str) -> LoadedMoshi:
    from transformers import MoshiForConditionalGeneration

    if not list(directory.glob("*.safetensors")):
        raise CheckpointError(f"checkpoint dir {directory} has config.json but no *.safetensors weights")
    tok_file = _find_hf_tokenizer(directory)
    try:
        # Mismatches are collected rather than raised so the error below can say which tensors differ.
        model, info = MoshiForConditionalGeneration.from_pretrained(
            directory, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint dir {directory} (Hugging Face layout) failed to load: {exc}"
        ) from exc
    problems = []
    if info.get("mismatched_keys"):
        shown = [
            f"{k[0]} {list(k[1])} vs expected {list(k[2])}"
            if isinstance(k, tuple) and len(k) == 3
            else str(k)
            for k in sorted(info["mismatched_keys"], key=str)[:3]
        ]
        problems.append(f"{len(info['mismatched_keys'])} tensors with the wrong shape, e.g. {shown}")
    if info.get("missing_keys"):
        problems.append(
            f"{len(info['missing_keys'])} tensors missing, e.g. {sorted(info['missing_keys'])[:3]}"
        )
    if problems:
        raise CheckpointError(
            f"checkpoint dir {directory}: the safetensors do not match config.json: " + "; ".join(problems)
        )
    model = model.to(device).eval()
    return LoadedMoshi(
        model=model,
        tokenizer=TextTokenizer.from_file(tok_file, {TEXT_PAD_ID, TEXT_END_PAD_ID}),
        mimi=model.audio_encoder,
        layout="hf",
        source=source,
    )
