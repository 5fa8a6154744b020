"""`--backend auto`: the best engine this machine can run in real time, and why.

The 7B speech models answer in real time only on a CUDA GPU with room for their bf16 weights, and
`make run` should start something on any machine without fetching 16 GB unasked. So: a big enough
CUDA GPU and a checkpoint already in the Hugging Face cache -> the moshi backend on that
checkpoint (PersonaPlex first, then Moshiko); anything less -> the scripted backend, with a reason
that says what is missing and the command that gets the real model.
"""

from __future__ import annotations

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
) -> AutoChoice:
    """Pure decision: `gpu_memory_gb` of CUDA device 0 (None: no CUDA GPU), the fully cached
    checkpoints, and an explicit `--model` (which auto then serves whenever the GPU allows)."""
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


def choose_backend(model: str | None = None) -> AutoChoice:
    """`choose` for this machine: probes the GPU, then (only if one is there) the local cache."""
    gpu_memory_gb = cuda_memory_gb()
    cached = [] if gpu_memory_gb is None else [c for c in CHECKPOINTS if cache_status(c).cached]
    return choose(gpu_memory_gb, cached, model, cache_dir=str(hub_cache_dir()))


def banner(choice: AutoChoice) -> str:
    """What `assistant serve --backend auto` prints on stderr before it starts."""
    if choice.backend == "scripted":
        return (
            "assistant serve: --backend auto chose the scripted backend (a recorded reply, no speech "
            f"model): {choice.reason}"
        )
    return f"assistant serve: --backend auto chose {choice.backend}: {choice.reason}"
