"""`assistant` command line: one subcommand per module.

Each module named here defines `add_arguments(parser)` and `run(args) -> int | None`.
Modules are imported only when their subcommand runs, so `assistant --help` stays fast; that
lazy import is also the only place where `assistant` reaches `server` (serve), the clients (talk,
eval) and the benchmarks (`bench/` of a checkout, which the wheel does not ship).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from pathlib import Path

COMMANDS = {
    "serve": ("server.app", "run the real-time server (websocket, web page, metrics)"),
    "respond": ("assistant.respond", "answer a WAV file offline, frame by frame"),
    "talk": ("client.talk", "talk to the assistant with a microphone and speakers or headphones"),
    "eval": ("client.eval", "score turn-taking: Full-Duplex-Bench v1 tasks and built-in duplex scenarios"),
    "models": ("assistant.models", "list the known checkpoints, which are cached here; download one"),
}

BENCHMARKS = {
    "codec": ("bench.codec", "streaming Mimi encode/decode speed"),
    "vad": ("bench.vad", "VAD CPU cost per 80 ms frame and turn accuracy, both backends"),
    "echo": (
        "bench.echo",
        "echo canceller (talk on speakers): CPU per 10 ms frame, ERLE in a simulated room",
    ),
    "engine": ("bench.engine", "engine step speed, split by part"),
    "server": ("bench.server", "server CPU cost, frame-clock jitter and capacity"),
    "live": ("bench.live", "OpenAI Live API: reply and barge-in latency, protocol CPU per frame"),
    "captions": ("bench.captions", "user captions: end of utterance -> final transcript, interims"),
    "reliability": ("bench.reliability", "hostile input, churn, kill -9 and drain figures (loopback)"),
    "protocol": ("bench.protocol", "CPU per client event of each websocket protocol: decode and validate"),
    "prefill": ("bench.prefill", "role/voice prompt cost, and the frame clock while sessions join"),
    "latency": ("bench.latency", "reaction time: output change after an input change, step vs waiting"),
}


CHECKOUT = Path(__file__).resolve().parents[1]


def _import(module: str):
    """The command's module; a benchmark is found in the checkout this package runs from."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != "bench":
            raise
    if not (CHECKOUT / "bench" / "__init__.py").is_file():
        raise SystemExit(
            "assistant bench: the benchmarks run from a checkout of the repository (its bench/ folder,"
            " which the installed package does not include): `python -m assistant bench ...` there"
        )
    sys.path.insert(0, str(CHECKOUT))  # an editable install maps only the shipped packages
    return importlib.import_module(module)


def _add_module_parser(subparsers, name: str, module: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(_module=module)
    _import(module).add_arguments(parser)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assistant", description="Full-duplex speech-to-speech assistant")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        if name == wanted:
            _add_module_parser(subparsers, name, module, help_text)
        else:
            subparsers.add_parser(name, help=help_text)
    bench = subparsers.add_parser("bench", help="benchmarks (print figures, never fail on speed)")
    bench_sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    rest = [a for a in argv if not a.startswith("-")]
    wanted_bench = rest[1] if len(rest) > 1 and rest[0] == "bench" else None
    for name, (module, help_text) in BENCHMARKS.items():
        if name == wanted_bench:
            _add_module_parser(bench_sub, name, module, help_text)
        else:
            bench_sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    module = getattr(args, "_module", None)
    if module is None:
        parser.print_help()
        return 0 if not argv else 2
    try:
        result = _import(module).run(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows up here for output shorter than a buffer
    except BrokenPipeError:
        # Whoever read stdout has stopped (`assistant models --json | head`): end quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush goes nowhere
        return 0
    finally:
        free_before_exit()
    return int(result or 0)


def free_before_exit() -> None:
    """Free what a command left in reference cycles (or set aside with gc.freeze) while the
    interpreter still runs: at teardown such objects are never freed, and native extensions built
    with nanobind (soxr's resamplers) then print a "leaked instances" report on stderr."""
    gc.unfreeze()
    gc.collect()


if __name__ == "__main__":
    sys.exit(main())
