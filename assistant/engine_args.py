"""The engine's command-line arguments, defined once for every command that builds an engine.

`serve`, `respond`, `talk --local`, `eval` and `bench server|engine|prefill` all take
`--backend --model --device --dtype --compile --quantize --context-policy` from here: the same names, help and
defaults. What differs is what a command is for: a benchmark defaults to a model with random
weights (no download), and `bench server` to the `silence` backend (the server's own cost).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from assistant.backends import BACKENDS
from assistant.engine import CONTEXT_POLICIES

DEFAULT_MODEL = "kyutai/moshiko-pytorch-bf16"
DTYPES = ("bfloat16", "float16", "float32")
DTYPE_ALIASES = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float": "float32",
}
MOSHI_ONLY = ("model", "device", "dtype", "compile", "quantize", "context_policy")


def dtype_name(value: str) -> str:
    """A --dtype value in its one spelling (bfloat16, float16, float32); bf16, fp16, fp32 are aliases."""
    name = value.strip().lower()
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {value!r}; use one of {', '.join(DTYPES)} (or bf16, fp16, fp32)"
        )
    return name


def add_engine_arguments(
    parser, *, backend: str | None = "moshi", model: str | None = None, auto: bool = False
) -> None:
    """Add the engine options to `parser` (or an argument group).

    backend: the command's default backend, None for a command of the moshi engine alone (no
    --backend; "auto" for serve); model: a benchmark's default model (random weights), None for
    `$ASSISTANT_MODEL, else DEFAULT_MODEL`; auto: offer `--backend auto` (serve).
    """
    if backend is not None:
        auto_help = (
            "; auto: moshi on a cached checkpoint when a CUDA GPU can run it in real time, else scripted,"
            " saying why"
            if auto
            else ""
        )
        parser.add_argument(
            "--backend",
            choices=(*BACKENDS, "auto") if auto else BACKENDS,
            default=backend,
            help=f"engine: moshi (the speech model), scripted or silence (no weights){auto_help}"
            f" (default: {backend})",
        )
    model_default = model or f"$ASSISTANT_MODEL, else {DEFAULT_MODEL}"
    parser.add_argument(
        "--model",
        default=None,
        help="moshi backend: a checkpoint dir, a Hugging Face repo id, or a model of random weights"
        f" (tiny, 7b-random, tiny-personaplex, ...) (default: {model_default})",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="moshi backend: torch device, cuda or cpu (default: cuda when available)",
    )
    parser.add_argument(
        "--dtype",
        type=dtype_name,
        choices=DTYPES,
        default=None,
        help="moshi backend: weights and activations; bf16, fp16, fp32 also accepted"
        " (default: bfloat16 on CUDA, float32 on CPU)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="moshi backend: capture the frame step as CUDA graphs per batch bucket"
        " (default: $ASSISTANT_COMPILE, else on with CUDA)",
    )
    parser.add_argument(
        "--quantize",
        choices=("none", "int8"),
        default=None,
        help="moshi backend: int8 weight-only transformer linears (default: $ASSISTANT_QUANTIZE, else none)",
    )
    parser.add_argument(
        "--context-policy",
        choices=CONTEXT_POLICIES,
        default=None,
        help="moshi backend: what a conversation longer than the model's context window forgets; pin:"
        " the conversation's oldest frames, the role and voice prompt stays (PersonaPlex models);"
        " slide: the oldest frames whatever they are, the prompt first (default: pin)",
    )
    parser.set_defaults(_default_model=model)


def model_of(args: argparse.Namespace) -> str:
    """The --model a command runs: the one given, else the command's default."""
    return args.model or args._default_model or os.environ.get("ASSISTANT_MODEL") or DEFAULT_MODEL


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """`build_engine`'s keyword arguments for the parsed engine options (`backend` aside).

    A moshi-only option given with another backend is refused rather than silently ignored.
    """
    backend = getattr(args, "backend", "moshi")
    if backend != "moshi":
        given = [f"--{name.replace('_', '-')}" for name in MOSHI_ONLY if getattr(args, name) is not None]
        if given:
            raise ValueError(f"only --backend moshi takes {', '.join(given)} (this is --backend {backend})")
        return {}
    return {
        "model": model_of(args),
        "device": args.device,
        "dtype": args.dtype,
        "compile": args.compile,
        "quantize": args.quantize,
        "context_policy": args.context_policy,
    }
