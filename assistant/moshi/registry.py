"""The checkpoints this project knows by name, and whether each is in the local Hugging Face cache.

Data plus two small helpers, so `assistant models`, `--backend auto` and the README agree on one
list. Each entry names the files the loader reads from a Hub repo; a checkpoint counts as cached
only when every one of them is in the cache, because a half-finished download cannot be served.

Download sizes are approximate, computed from the architecture rather than read from the Hub
(which this module never contacts): parameters x 2 bytes in bf16 (Moshi 7B: 7.69 B parameters;
PersonaPlex, whose depth transformer also predicts the user's 8 codebooks: 8.37 B) plus the
float32 Mimi codec (0.38 GB); the text tokenizer (0.5 MB) and PersonaPlex's voice prompts are
left out. MoshiVis adds its SigLIP image encoder (0.42 B) and gated cross-attention (0.20 B).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from assistant.moshi.checkpoint import KYUTAI_MIMI_NAME, KYUTAI_MOSHI_NAME, KYUTAI_TOKENIZER_NAME

MOSHI_FILES = (KYUTAI_MOSHI_NAME, KYUTAI_MIMI_NAME, KYUTAI_TOKENIZER_NAME)
PERSONAPLEX_FILES = (*MOSHI_FILES, "voices.tgz", "config.json")
# Fetched when the repo has them; the loader reads an optional config.json of LM arguments.
OPTIONAL_FILES = ("config.json",)


@dataclass(frozen=True)
class KnownCheckpoint:
    name: str  # what `assistant models download NAME` takes
    repo_id: str
    size_gb: float  # approximate download, see the module docstring
    licence: str
    layout: str  # "moshi" (Kyutai's files) | "personaplex" (plus voice prompts, config.json) | "moshivis" (images)
    files: tuple[str, ...]  # what the loader needs from the repo
    gated: bool = False  # the Hub asks you to accept the licence (and log in) before downloading

    @property
    def takes_prompts(self) -> bool:
        """PersonaPlex-style checkpoints are conditioned on a voice prompt and a text (persona) prompt."""
        return self.layout == "personaplex"

    @property
    def takes_images(self) -> bool:
        """MoshiVis checkpoints see an image during the call (an image encoder and cross-attention)."""
        return self.layout == "moshivis"

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"


def _moshi(name: str, repo_id: str, licence: str, gated: bool = False) -> KnownCheckpoint:
    return KnownCheckpoint(name, repo_id, 15.8, licence, "moshi", MOSHI_FILES, gated)


def _personaplex(name: str, repo_id: str, licence: str) -> KnownCheckpoint:
    return KnownCheckpoint(name, repo_id, 17.1, licence, "personaplex", PERSONAPLEX_FILES, gated=True)


CHECKPOINTS = (
    _moshi("moshiko", "kyutai/moshiko-pytorch-bf16", "CC-BY 4.0"),
    _moshi("moshika", "kyutai/moshika-pytorch-bf16", "CC-BY 4.0"),
    KnownCheckpoint(
        "moshika-vis",
        "kyutai/moshika-vis-pytorch-bf16",
        17.0,
        "CC-BY 4.0 + Gemma terms (SigLIP)",
        "moshivis",
        MOSHI_FILES,
    ),
    _personaplex("personaplex", "nvidia/personaplex-7b-v1", "NVIDIA Open Model License"),
    _moshi("moshika-rl-seamless", "kyutai/moshika-rl-seamless", "CC BY-NC 4.0", gated=True),
    _personaplex(
        "personaplex-rl-seamless",
        "kyutai/personaplex-rl-seamless",
        "CC BY-NC 4.0 + NVIDIA Open Model License",
    ),
)


def find(name_or_repo: str) -> KnownCheckpoint | None:
    """The known checkpoint with this short name or repo id (any case), else None."""
    wanted = name_or_repo.strip().lower()
    return next((c for c in CHECKPOINTS if wanted in (c.name, c.repo_id.lower())), None)


@dataclass(frozen=True)
class CacheStatus:
    path: Path | None  # the snapshot folder holding the files found, None when none are cached
    missing: tuple[str, ...]  # needed files that are not in the cache

    @property
    def cached(self) -> bool:
        return self.path is not None and not self.missing


def cache_status(checkpoint: KnownCheckpoint, cache_dir: str | Path | None = None) -> CacheStatus:
    """Which of `checkpoint`'s files the local Hugging Face cache holds (its `main` snapshot).

    Reads the cache folders only (`try_to_load_from_cache`), so it never touches the network and
    answers the same with or without HF_HUB_OFFLINE. `cache_dir` defaults to huggingface_hub's
    (HF_HUB_CACHE, else $HF_HOME/hub).
    """
    from huggingface_hub import try_to_load_from_cache

    found: list[Path] = []
    missing: list[str] = []
    for filename in checkpoint.files:
        hit = try_to_load_from_cache(checkpoint.repo_id, filename, cache_dir=cache_dir)
        if isinstance(hit, str):
            found.append(Path(hit))
        else:  # None (never seen) or the marker of a file the Hub said does not exist
            missing.append(filename)
    return CacheStatus(found[0].parent if found else None, tuple(missing))


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads on this machine (for messages)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)
