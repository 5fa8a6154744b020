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

from assistant.moshi.checkpoint import (
    DEFAULT_DELAYS,
    KYUTAI_MIMI_NAME,
    KYUTAI_MOSHI_NAME,
    KYUTAI_TOKENIZER_NAME,
    TEXT_END_PAD_ID,
    TEXT_PAD_ID,
    CheckpointError,
)
from assistant.moshi.kyutai import (
    KYUTAI_7B_KWARGS,
    convert_kyutai_lm_state_dict,
    kyutai_lm_config,
    kyutai_lm_kwargs,
    mimi_config_from_kyutai,
)
from assistant.moshi.prompts import SILENCE_TOKENS, SINE_TOKENS, find_voices
from assistant.moshi.registry import CHECKPOINTS, find, hub_cache_dir
from assistant.moshi.tokenizer import TextTokenizer
from assistant.moshi.vision import MoshiVision, use_kyuteye_norms
from assistant.moshi.vision_loading import (
    build_cross_attention,
    build_image_encoder,
    is_moshivis,
    moshivis_lm_kwargs,
    split_state,
)

# Hub repos in PersonaPlex's layout: their config.json does not say so (nor give the architecture).
PERSONAPLEX_REPOS = tuple(c.repo_id for c in CHECKPOINTS if c.layout == "personaplex")
# The architecture fields a config.json must carry to describe its own model (tiny test checkpoints do).
_ARCHITECTURE_KEYS = ("dim", "num_heads", "num_layers", "text_card", "card", "n_q", "dep_q")


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
    model_type: str = "moshi"  # "personaplex": takes role and voice prompts
    voices: dict[str, Path] = field(default_factory=dict)  # voice preset name -> .wav / .pt file
    default_voice: str | None = None
    silence_tokens: tuple[int, ...] = SILENCE_TOKENS  # codes of the prompts' silence and tone frames
    sine_tokens: tuple[int, ...] = SINE_TOKENS
    vision: torch.nn.Module | None = None  # MoshiVision of a model that sees images (model_type "moshivis")

    @property
    def takes_prompts(self) -> bool:
        return self.model_type == "personaplex"

    @property
    def takes_images(self) -> bool:
        return self.vision is not None


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
        return Path(
            snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.model", "voices.tgz"])
        )
    except Exception as exc:  # offline, gated, missing repo: say which, and what to do
        raise CheckpointError(fetch_failure(source, exc)) from exc


def fetch_failure(source: str, exc: Exception) -> str:
    """What to do when the hub did not hand out `source` (a repo id), in place of the hub's own text."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    known = find(source)
    get_it = f"`assistant models download {known.name}`" if known else f"`hf download {source}`"
    no_weights = "or try the whole loop without weights: --backend scripted"
    if isinstance(exc, LocalEntryNotFoundError):  # HF_HUB_OFFLINE=1, or no network
        return (
            f"--model {source} is not in the Hugging Face cache ({hub_cache_dir()}) and the hub cannot be "
            f"reached (offline?); get it with {get_it} on a machine that is online, {no_weights}"
        )
    if isinstance(exc, (GatedRepoError, RepositoryNotFoundError)):  # the hub answers both for a gated repo
        return (
            f"--model {source}: the hub refused it (no such repo, or a gated one: accept its licence at "
            f"https://huggingface.co/{source}, then `hf auth login` or set HF_TOKEN), {no_weights}"
        )
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return f"--model {source}: fetching it from the Hugging Face hub failed ({first_line}); {no_weights}"


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


def need_file(directory: Path, name: str, what: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint dir {directory} has no {name} ({what})")
    return path


def load_moshi(source: str | Path, *, device=None, dtype=None) -> LoadedMoshi:
    """Load a Moshi checkpoint (local dir, HF repo id or a name of `assistant models`) onto `device`."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    known = find(str(source)) if not Path(str(source)).expanduser().exists() else None
    if known is not None:
        source = known.repo_id
    directory = _local_dir(str(source))
    layout = detect_layout(directory)
    if layout == "kyutai":
        return _load_kyutai(directory, device, dtype, str(source))
    return _load_hf(directory, device, dtype, str(source))


def model_type_of(directory: Path, raw: dict | None, source: str) -> str:
    """ "personaplex" for a PersonaPlex-layout checkpoint (config says so, a known repo, or voices shipped)."""
    if (raw or {}).get("model_type") == "personaplex" or source in PERSONAPLEX_REPOS:
        return "personaplex"
    if (directory / "voices.tgz").is_file() or (directory / "voices").is_dir():
        return "personaplex"
    return "moshi"


def _personaplex_kwargs(raw: dict | None) -> dict:
    """LM keyword arguments of a PersonaPlex checkpoint: the 7B with a 16-step depth transformer,
    unless its config.json describes the architecture itself."""
    raw = raw or {}
    if all(key in raw for key in _ARCHITECTURE_KEYS):
        return kyutai_lm_kwargs(raw)
    return kyutai_lm_kwargs(
        dict(KYUTAI_7B_KWARGS, dep_q=2 * KYUTAI_7B_KWARGS["dep_q"], model_type="personaplex")
    )


def _mimi_config_named(directory: Path, names: dict):
    """The Mimi config a Kyutai-layout config.json names (`mimi_config_name`), or None: the default Mimi."""
    if not names.get("mimi_config_name"):
        return None
    mimi_json = need_file(directory, names["mimi_config_name"], "Kyutai Mimi config named by config.json")
    return mimi_config_from_kyutai(json.loads(mimi_json.read_text()))


def _load_kyutai(directory: Path, device, dtype, source: str) -> LoadedMoshi:
    from safetensors.torch import load_file

    config_path = directory / "config.json"
    raw = json.loads(config_path.read_text()) if config_path.is_file() else None
    if is_moshivis(directory, raw):
        return _load_moshivis(directory, device, dtype, source, raw)
    names = raw or {}
    model_type = model_type_of(directory, raw, source)
    moshi_file = need_file(directory, names.get("moshi_name", KYUTAI_MOSHI_NAME), "Kyutai LM weights")
    mimi_file = need_file(directory, names.get("mimi_name", KYUTAI_MIMI_NAME), "Kyutai Mimi weights")
    tok_file = need_file(
        directory, names.get("tokenizer_name", KYUTAI_TOKENIZER_NAME), "SentencePiece text tokenizer"
    )
    kwargs = _personaplex_kwargs(raw) if model_type == "personaplex" else kyutai_lm_kwargs(raw)
    mimi_config = _mimi_config_named(directory, names)
    config = kyutai_lm_config(kwargs, mimi_config)
    lm_state = convert_kyutai_lm_state_dict(
        load_file(str(moshi_file)),
        config,
        filename=str(moshi_file),
        user_depth_steps=kwargs["dep_q"] > kwargs["n_q"] // 2,
    )
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
        **_prompt_fields(directory, names, model_type),
    )


def _load_moshivis(directory: Path, device, dtype, source: str, raw: dict | None) -> LoadedMoshi:
    """A MoshiVis checkpoint (assistant/moshi/vision_loading.py): the LM with Kyutai's norms, `vision` set."""
    from safetensors.torch import load_file

    names = raw or {}
    weights = need_file(directory, names.get("model", KYUTAI_MOSHI_NAME), "MoshiVis weights")
    mimi_file = need_file(directory, names.get("mimi_codec", KYUTAI_MIMI_NAME), "Kyutai Mimi weights")
    tok_file = need_file(
        directory, names.get("text_tokenizer", KYUTAI_TOKENIZER_NAME), "SentencePiece text tokenizer"
    )
    mimi_config = _mimi_config_named(directory, names)
    kwargs = moshivis_lm_kwargs(raw)
    config = kyutai_lm_config(kwargs, mimi_config)
    lm, cross, image = split_state(load_file(str(weights)), str(weights))
    lm_state = convert_kyutai_lm_state_dict(lm, config, filename=str(weights))
    model = build_moshi_from_lm_state(config, lm_state, device, dtype, str(weights))
    use_kyuteye_norms(model)
    cross_attention = build_cross_attention(cross, config, str(weights)).to(device, dtype)
    encoder = build_image_encoder(image, raw, config.hidden_size, str(weights)).to(device).eval()
    pad = kwargs["existing_text_padding_id"]
    return LoadedMoshi(
        model=model,
        tokenizer=TextTokenizer.from_file(tok_file, {pad, TEXT_END_PAD_ID}),
        mimi=mimi_file,
        mimi_config=mimi_config,
        layout="kyutai",
        source=source,
        delays=tuple(kwargs["delays"]),
        text_pad_id=pad,
        model_type="moshivis",
        vision=MoshiVision(encoder, cross_attention).eval(),
    )


def _prompt_fields(directory: Path, names: dict, model_type: str) -> dict:
    """LoadedMoshi fields of a prompted model: its voices and prompt codes (config.json may override)."""
    if model_type != "personaplex":
        return {}
    voices = find_voices(directory)
    default = names.get("default_voice")
    if default is not None and default not in voices:
        raise CheckpointError(
            f"config.json names default_voice {default!r}, which is not in {directory}/voices"
        )
    fields = {"model_type": model_type, "voices": voices, "default_voice": default or _first_voice(voices)}
    for key in ("silence_tokens", "sine_tokens"):
        if key in names:
            fields[key] = tuple(int(t) for t in names[key])
    return fields


def _first_voice(voices: dict[str, Path]) -> str | None:
    """The voice a session gets when it names none: NATF2 (the reference server's) when shipped."""
    for preferred in ("NATF2.pt", "NATF2.wav"):
        if preferred in voices:
            return preferred
    return next(iter(voices), None)


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
