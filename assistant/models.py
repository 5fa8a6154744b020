"""`assistant models`: list the known checkpoints (and which are cached here), download one.

    assistant models                     # table: name, repo, size, licence, layout, prompts, images, cached
    assistant models --json              # the same for scripts
    assistant models download personaplex

Listing reads only the local Hugging Face cache, so it works offline. A download fetches just the
files the loader needs (assistant/moshi/registry.py) into that cache, where `--model REPO` and
`--backend auto` find them.
"""

from __future__ import annotations

import argparse
import json
import sys

from assistant.moshi.registry import (
    CHECKPOINTS,
    OPTIONAL_FILES,
    CacheStatus,
    KnownCheckpoint,
    cache_status,
    find,
    hub_cache_dir,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", nargs="?", choices=("list", "download"), default="list", help="default: list"
    )
    parser.add_argument("name", nargs="?", help="download: a short name or repo id from the list")
    parser.add_argument("--json", action="store_true", help="list: print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    if args.action == "download":
        if not args.name:
            return _fail(f"which one? give a name: {_known_names()}")
        return download(args.name)
    if args.name:
        return _fail(f"`list` takes no name (did you mean `assistant models download {args.name}`?)")
    rows = [(c, cache_status(c)) for c in CHECKPOINTS]
    print(json.dumps([_as_json(c, s) for c, s in rows], indent=2) if args.json else _table(rows))
    return 0


# -- listing ------------------------------------------------------------------------------------


def _as_json(checkpoint: KnownCheckpoint, status: CacheStatus) -> dict:
    return {
        "name": checkpoint.name,
        "repo_id": checkpoint.repo_id,
        "approx_size_gb": checkpoint.size_gb,
        "licence": checkpoint.licence,
        "layout": checkpoint.layout,
        "takes_prompts": checkpoint.takes_prompts,
        "takes_images": checkpoint.takes_images,
        "gated": checkpoint.gated,
        "files": list(checkpoint.files),
        "cached": status.cached,
        "path": str(status.path) if status.cached else None,
        "missing_files": list(status.missing),
    }


def _cached_cell(status: CacheStatus) -> str:
    if status.cached:
        return f"yes  {status.path}"
    return "partial" if status.path else "no"


def _table(rows: list[tuple[KnownCheckpoint, CacheStatus]]) -> str:
    header = ("NAME", "REPO", "SIZE", "LICENCE", "LAYOUT", "PROMPTS", "IMAGES", "CACHED")
    body = [
        (
            c.name,
            c.repo_id,
            f"~{c.size_gb:.1f} GB",
            c.licence,
            c.layout,
            "yes" if c.takes_prompts else "no",
            "yes" if c.takes_images else "no",
            _cached_cell(s),
        )
        for c, s in rows
    ]
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in (header, *body)]
    lines += [
        "",
        f"Sizes are approximate (bf16 weights + the Mimi codec). Cache: {hub_cache_dir()}",
        "Get one: assistant models download NAME   Serve it: assistant serve --model REPO",
    ]
    return "\n".join(lines)


# -- downloading --------------------------------------------------------------------------------


def download(name: str) -> int:
    """Fetch `name`'s files into the Hugging Face cache (with huggingface_hub's progress bars)."""
    checkpoint = find(name)
    if checkpoint is None:
        return _fail(f"unknown model {name!r}; known: {_known_names()}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    print(f"downloading {checkpoint.repo_id} (about {checkpoint.size_gb:.1f} GB)", file=sys.stderr)
    patterns = list(dict.fromkeys((*checkpoint.files, *OPTIONAL_FILES)))
    try:
        snapshot_download(checkpoint.repo_id, allow_patterns=patterns)
    except GatedRepoError:
        return _fail(_gated_hint(checkpoint))
    except LocalEntryNotFoundError:  # HF_HUB_OFFLINE=1, or the hub cannot be reached
        return _fail(
            f"cannot reach the Hugging Face hub to download {checkpoint.repo_id} "
            "(no network, or HF_HUB_OFFLINE=1); connect and run this again"
        )
    except RepositoryNotFoundError:  # what the hub answers an anonymous request for a gated repo
        return _fail(f"the hub refused {checkpoint.repo_id}; " + _gated_hint(checkpoint))
    except (OSError, ValueError) as exc:  # HTTP errors, a full disk: the first line says which
        return _fail(f"downloading {checkpoint.repo_id} failed: {str(exc).splitlines()[0]}")
    status = cache_status(checkpoint)
    if not status.cached:
        return _fail(
            f"{checkpoint.repo_id} has no {', '.join(status.missing)}, which the loader needs; "
            "the repo's layout may have changed"
        )
    print(f"{checkpoint.name}: {status.path}")
    print(f"serve it: assistant serve --model {checkpoint.repo_id}", file=sys.stderr)
    return 0


def _gated_hint(checkpoint: KnownCheckpoint) -> str:
    return (
        f"accept the licence ({checkpoint.licence}) at {checkpoint.url}, "
        "then log in with `hf auth login` (or set HF_TOKEN) and run this again"
    )


def _known_names() -> str:
    return ", ".join(c.name for c in CHECKPOINTS)


def _fail(message: str) -> int:
    print(f"assistant models: {message}", file=sys.stderr)
    return 1
