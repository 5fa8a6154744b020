"""`--backend auto`: the best engine this machine can run in real time, and why.

The 7B speech models answer in real time only on a CUDA GPU with room for their bf16 weights. So:
a big enough CUDA GPU and a checkpoint already in the Hugging Face cache -> the moshi backend on
that checkpoint (PersonaPlex first, then Moshiko); such a GPU, nothing cached, but a checkpoint the
hub will hand out (reachable, and not gated for this user) -> that one, downloaded on first start;
anything less -> the scripted backend, with a reason that says what is missing and the command that
gets the real model. Without a GPU nothing is fetched: it could not run in real time anyway.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

from assistant.moshi.registry import CHECKPOINTS, KnownCheckpoint, cache_status, hub_cache_dir

# The 7B's bf16 weights (15.4 GB) plus one conversation's KV cache (1.6 GB) and the codec.
MIN_GPU_MEMORY_GB = 17.0
# Which cached checkpoint auto serves; the non-commercial fine-tunes last, so a cached checkpoint
# that allows commercial use wins.
PREFERENCE = ("personaplex", "moshiko", "moshika", "personaplex-rl-seamless", "moshika-rl-seamless")
GET_THE_MODEL = "assistant models download personaplex"


class AutoChoice(NamedTuple):
    backend: str
    model: str | None
    reason: str  # one line for the start-up banner


def choose(
    gpu_memory_gb: float | None,
    cached: Sequence[KnownCheckpoint],
    model: str | None = None,
    *,
    cache_dir: str | None = None,
    downloadable: Sequence[KnownCheckpoint] = (),
) -> AutoChoice:
    """Pure decision: `gpu_memory_gb` of CUDA device 0 (None: no CUDA GPU), the fully cached
    checkpoints, an explicit `--model` (which auto then serves whenever the GPU allows), and the
    checkpoints the hub would hand out now (asked only when nothing is cached)."""
    if gpu_memory_gb is None:
        return AutoChoice(
            "scripted",
            None,
            "no CUDA GPU found; the speech model needs an NVIDIA GPU to answer in real time "
            f"(on a machine with one, `{GET_THE_MODEL}` gets it)",
        )
    if gpu_memory_gb < MIN_GPU_MEMORY_GB:
        return AutoChoice(
            "scripted",
            None,
            f"the CUDA GPU has {gpu_memory_gb:.0f} GB, the 7B speech model needs about "
            f"{MIN_GPU_MEMORY_GB:.0f} GB in bf16; try `--backend moshi --quantize int8` (8 GB of weights)",
        )
    if model:
        return AutoChoice("moshi", model, f"serving --model {model} on the CUDA GPU")
    rank = {name: i for i, name in enumerate(PREFERENCE)}
    ranked = sorted(cached, key=lambda c: rank.get(c.name, len(rank)))
    fetchable = sorted(downloadable, key=lambda c: rank.get(c.name, len(rank)))
    if not ranked and fetchable:
        best = fetchable[0]
        return AutoChoice(
            "moshi",
            best.repo_id,
            f"no checkpoint in the Hugging Face cache; downloading {best.name} ({best.repo_id}, about "
            f"{best.size_gb:.0f} GB) on this first start",
        )
    if not ranked:
        where = f" ({cache_dir})" if cache_dir else ""
        return AutoChoice(
            "scripted",
            None,
            f"no checkpoint in the Hugging Face cache{where}; `{GET_THE_MODEL}` gets the real model",
        )
    best = ranked[0]
    return AutoChoice(
        "moshi", best.repo_id, f"serving {best.name} ({best.repo_id}) from the Hugging Face cache"
    )


def cuda_memory_gb() -> float | None:
    """Total memory of CUDA device 0 in GB, or None without torch or a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 1e9


def hub_serves(checkpoint: KnownCheckpoint, timeout_s: float = 3.0) -> bool:
    """Whether the hub answers for this checkpoint's weights now (online, and not gated for this user)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        get_hf_file_metadata(hf_hub_url(checkpoint.repo_id, checkpoint.files[0]), timeout=timeout_s)
        return True
    except Exception:  # offline, DNS, 401/403 on a gated repo, 404: not something make run can fetch
        return False


def choose_backend(model: str | None = None) -> AutoChoice:
    """`choose` for this machine: probes the GPU, then (only if one is there) the cache and the hub."""
    gpu_memory_gb = cuda_memory_gb()
    fits = gpu_memory_gb is not None and gpu_memory_gb >= MIN_GPU_MEMORY_GB
    cached = [c for c in CHECKPOINTS if cache_status(c).cached] if fits else []
    downloadable: list[KnownCheckpoint] = []
    if fits and not cached and not model:
        by_name = {c.name: c for c in CHECKPOINTS}
        for name in PREFERENCE:  # the first the hub hands out is enough
            if name in by_name and hub_serves(by_name[name]):
                downloadable = [by_name[name]]
                break
    return choose(gpu_memory_gb, cached, model, cache_dir=str(hub_cache_dir()), downloadable=downloadable)


def banner(choice: AutoChoice) -> str:
    """What `assistant serve --backend auto` prints on stderr before it starts."""
    if choice.backend == "scripted":
        return (
            "assistant serve: --backend auto chose the scripted backend (a recorded reply, no speech "
            f"model): {choice.reason}"
        )
    return f"assistant serve: --backend auto chose {choice.backend}: {choice.reason}"
