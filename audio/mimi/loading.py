"""Mimi checkpoint resolution and loading: a local dir, a Hugging Face repo id (fetched or cached), or
Kyutai's single safetensors file (converted by `audio.mimi.convert`), loaded as a transformers `MimiModel`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import MimiConfig, MimiModel

from audio.mimi.convert import (
    KYUTAI_MIMI_FILENAME,
    convert_kyutai_mimi_state_dict,
    is_kyutai_mimi_state_dict,
    mimi_config_for_kyutai,
)

_EXPECTED = (
    "expected a transformers-layout Mimi (config.json + model.safetensors, like kyutai/mimi), "
    f"a Kyutai checkpoint file ({KYUTAI_MIMI_FILENAME}), or a dir / Hugging Face repo id holding one of them"
)


def load_mimi_model(source: str | Path, config: MimiConfig | None = None) -> MimiModel:
    """Resolve `source` (see `StreamingMimi.from_pretrained`) and load it as a transformers `MimiModel`."""
    path = Path(source).expanduser()
    if path.is_file():
        return _load_kyutai_file(path, config)
    if path.is_dir():
        return _load_dir(path, config)
    if str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise FileNotFoundError(f"Mimi source {str(source)!r} does not exist; {_EXPECTED}")
    return _load_dir(_download(str(source)), config)


def _download(repo_id: str) -> Path:
    """Fetch only the Mimi files of a Hub repo; works offline from the local cache.

    A Kyutai repo (kyutai/moshiko-pytorch-bf16) keeps the 15 GB Moshi LM in its model.safetensors,
    so model.safetensors is fetched only once config.json says the repo is a transformers Mimi.
    """
    from huggingface_hub import snapshot_download

    tried = ["config.json", "tokenizer-*.safetensors"]
    try:
        snapshot = Path(snapshot_download(repo_id, allow_patterns=tried))
        if not any(snapshot.glob("tokenizer-*.safetensors")) and _config_model_type(snapshot) == "mimi":
            tried.append("model.safetensors")
            snapshot = Path(snapshot_download(repo_id, allow_patterns=tried))
        return snapshot
    except Exception as exc:  # network, auth, missing repo, empty cache offline: all end the same way
        raise FileNotFoundError(
            f"Mimi source {repo_id!r} is not a local path, and fetching it as a Hugging Face repo "
            f"(files {', '.join(tried)}, from the Hub or the local cache) failed: "
            f"{type(exc).__name__}: {str(exc).rstrip('.')}; {_EXPECTED}"
        ) from exc


def _config_model_type(directory: Path) -> str | None:
    try:
        return json.loads((directory / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _load_dir(directory: Path, config: MimiConfig | None) -> MimiModel:
    # a Kyutai repo holds the Mimi file next to the LM's own model.safetensors and config.json
    if (directory / KYUTAI_MIMI_FILENAME).is_file():
        return _load_kyutai_file(directory / KYUTAI_MIMI_FILENAME, config)
    kyutai_files = sorted(directory.glob("tokenizer-*.safetensors"))
    if len(kyutai_files) == 1:
        return _load_kyutai_file(kyutai_files[0], config)
    weights = directory / "model.safetensors"
    if weights.is_file() and _is_kyutai_file(weights):
        return _load_kyutai_file(weights, config)
    if weights.is_file() and (directory / "config.json").is_file():
        model_type = _config_model_type(directory)
        if model_type != "mimi":
            raise ValueError(
                f"{directory / 'config.json'} is for model_type {model_type!r}, not 'mimi'; {_EXPECTED}"
            )
        return _load_transformers_dir(directory)
    found = ", ".join(sorted(p.name for p in directory.iterdir())[:10]) or "nothing"
    raise FileNotFoundError(f"no Mimi checkpoint in {directory} (found: {found}); {_EXPECTED}")


def _is_kyutai_file(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            return is_kyutai_mimi_state_dict(handle.keys())
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"could not read {path} as safetensors: {exc}; {_EXPECTED}") from exc


def _load_transformers_dir(directory: Path) -> MimiModel:
    try:
        model, info = MimiModel.from_pretrained(str(directory), output_loading_info=True, dtype=torch.float32)
    except Exception as exc:
        raise ValueError(f"could not load {directory} as a transformers Mimi: {exc}. {_EXPECTED}") from exc
    problems = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if problems or info.get("error_msgs"):
        raise ValueError(
            f"{directory / 'model.safetensors'} does not match its config.json: {problems or info}"
        )
    return model.eval()


def _load_kyutai_file(path: Path, config: MimiConfig | None) -> MimiModel:
    from safetensors.torch import load_file

    if path.suffix not in (".safetensors", ".sft"):
        raise ValueError(f"{path} is not a safetensors file; {_EXPECTED}")
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise ValueError(f"could not read {path} as safetensors: {exc}. {_EXPECTED}") from exc
    if not is_kyutai_mimi_state_dict(state):
        raise ValueError(f"{path} does not hold Kyutai Mimi weights (no encoder.model.* keys); {_EXPECTED}")
    config = config or mimi_config_for_kyutai()
    converted = convert_kyutai_mimi_state_dict(state, config)
    model = MimiModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
        for k, v in converted.items()
        if k in expected and v.shape != expected[k].shape
    ]
    unexpected = sorted(set(converted) - set(expected))
    if missing or wrong or unexpected:
        raise ValueError(
            f"{path} does not fit the Mimi config given (pass config= for a non-default Mimi): "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, wrong shapes {wrong[:5]}, "
            f"extra {unexpected[:5]}"
        )
    model.load_state_dict({k: v.float() for k, v in converted.items()}, strict=True)
    return model.eval()
