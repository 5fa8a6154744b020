"""`assistant eval`: score turn-taking the Full-Duplex-Bench way, on FDB's data or our own scenarios.

    assistant eval fdb DATA_DIR --task pause_handling|smooth_turn_taking|backchannel|user_interruption
    assistant eval duplex

Both run the stages of assistant/eval/pipeline.py over sample folders. output.wav comes from
the engine in-process (batched, faster than real time) or, with --server, from a live server
over the native protocol in real time; that path is a client of the server, which is why the
command lives here and not in `assistant`.

Exit status: 0 when every sample was scored, 1 when some were not (each is reported, the rest are
scored), 2 when nothing could run (bad options, missing data, a model that does not load).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

from assistant.engine_args import add_engine_arguments, engine_kwargs
from assistant.eval import pipeline
from assistant.eval.dataset import FDB_TASKS, TASKS, Sample, SampleError, load_samples, read_sample
from assistant.eval.results import TaskResult, write_json
from assistant.eval.scenarios import KINDS


class UsageError(Exception):
    """Something the user must fix before anything can run; the message says what."""


@dataclass
class _Group:
    """The samples of one task (`eval fdb`) or one scenario kind (`eval duplex`)."""

    task: str
    kind: str | None
    samples: list[Sample]
    skipped: list[SampleError] = field(default_factory=list)  # folders that did not check out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    suites = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    fdb = suites.add_parser(
        "fdb",
        help="score a directory of Full-Duplex-Bench v1 samples",
        description="Score one Full-Duplex-Bench v1 task directory (one folder per sample: input.wav and "
        "the task's JSON). output.wav and output.json are made where missing, then scored.",
    )
    fdb.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="the task's directory of sample folders")
    fdb.add_argument(
        "--task", required=True, choices=sorted(FDB_TASKS), help="which FDB v1 task DATA_DIR holds"
    )
    fdb.add_argument(
        "--gt",
        type=Path,
        help="backchannel: your copy of FDB's icc_gt_distribution.json, for the JSD (else JSD is null)",
    )
    _common_arguments(
        fdb, out_help="where output.wav/output.json go, as OUT/{ID}/ (default: the sample folders)"
    )
    duplex = suites.add_parser(
        "duplex",
        help="score the built-in duplex scenarios (made with espeak-ng and sox)",
        description="Build the scenario set if missing (pauses, turn ends, backchannels, interruptions, "
        "background speakers), then score it as FDB would, plus the stop latency of each overlap.",
    )
    duplex.add_argument(
        "--scenarios", type=Path, help="where the scenario set is cached (default OUT/scenarios)"
    )
    duplex.add_argument("--full", action="store_true", help="6 scenarios per kind instead of 2")
    duplex.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated kinds to run (default all: {','.join(KINDS)})",
    )
    _common_arguments(duplex, out_help="where the scenarios and outputs go (default eval-duplex)")


def _common_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("--out", type=Path, help=out_help)
    add_engine_arguments(parser)  # the engine that makes output.wav in-process (without --server)
    parser.add_argument("--seed", type=int, default=None, help="random seed, for reproducible outputs")
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        help="samples run at once: engine batch rows, or sessions with --server (default 8)",
    )
    parser.add_argument(
        "--server", metavar="URL", help="make output.wav on a live server instead: ws://HOST:PORT/ws"
    )
    parser.add_argument("--token", help="the server's auth token (with --server)")
    parser.add_argument(
        "--instructions",
        help="who the assistant is, e.g. 'You are a patient teacher.' (PersonaPlex-family models)",
    )
    parser.add_argument(
        "--voice", help="the assistant's voice: a preset of the model or a .wav / .pt file (same models)"
    )
    parser.add_argument(
        "--asr",
        default="auto",
        help="faster-whisper model for output.json: a size or a CTranslate2 dir (default: the best one "
        "available offline, tiny.en at least)",
    )
    parser.add_argument("--json", type=Path, help="write the scores here as JSON")
    parser.add_argument("--report", type=Path, metavar="DIR", help="write an HTML report (DIR/index.html)")


# -- the samples -------------------------------------------------------------------------------


def _fdb_samples(args) -> list[_Group]:
    samples, skipped = load_samples(args.data_dir, FDB_TASKS[args.task], args.out)
    return [_Group(args.task, None, samples, skipped)]


def _duplex_samples(args) -> list[_Group]:
    from assistant.eval import scenarios

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    root = args.scenarios or args.out / "scenarios"
    planned, to_make = scenarios.count(root, kinds, full=args.full)
    stage = pipeline.Stage("scenarios", to_make)
    try:
        folders = scenarios.build(root, kinds, full=args.full, on_made=stage.advance)
    finally:
        stage.close(skipped=planned - to_make)
    groups = []
    for kind, kind_folders in folders.items():
        group = _Group(KINDS[kind], kind, [])
        for folder in kind_folders:
            try:
                group.samples.append(read_sample(folder, TASKS[group.task], args.out / kind / folder.name))
            except SampleError as exc:
                group.skipped.append(exc)
        groups.append(group)
    return groups


# -- the stages --------------------------------------------------------------------------------


def _generator(args, pending: bool) -> pipeline.Generator:
    prompts = {"instructions": args.instructions, "voice": args.voice}
    if args.server:
        from client.eval_live import generate_live

        return lambda samples, on_done: generate_live(
            args.server, samples, concurrency=args.batch, token=args.token, options=prompts, on_done=on_done
        )
    if pending:
        try:
            engine_kwargs(args)  # options that cannot apply are refused before any work starts
        except ValueError as exc:
            raise UsageError(str(exc)) from exc

    def in_process(samples, on_done) -> None:
        from assistant.backends import build_engine
        from assistant.conversation import ConversationOptions
        from assistant.eval.generate import generate_in_process

        try:
            engine = build_engine(
                args.backend, batch_size=min(args.batch, len(samples)), **engine_kwargs(args)
            )
            engine.check_prompt(args.instructions, args.voice)
        except (ValueError, OSError) as exc:  # bad checkpoint, device, option or prompt: it says what to fix
            raise UsageError(str(exc)) from exc
        conversation = ConversationOptions(seed=args.seed, **prompts)
        generate_in_process(engine, samples, options=conversation, on_done=on_done)

    return in_process


def summary_lines(tasks: list[TaskResult]) -> list[str]:
    """The run's figures as a table that fits a terminal, then one line per column saying what it
    measures and which way is better (the report's words)."""
    from assistant.eval.report import METRICS

    names = [f"{task.kind} ({task.task})" if task.kind else task.task for task in tasks]
    labels = ["samples", *(f"{label} {arrow}" for _, label, arrow, _ in METRICS), "errors"]
    rows = []
    for task in tasks:
        figures = task.summary()
        values = [figures[key] for key, _, _, _ in METRICS]
        cells = ["-" if v is None else f"{v:.3f}" for v in values]
        rows.append([str(figures["samples"]), *cells, str(len(task.errors))])
    widths = [max(len(label), *(len(row[i]) for row in rows)) for i, label in enumerate(labels)]
    first = max(len("task"), *(len(name) for name in names))
    lines = [
        "task".ljust(first) + "".join(f"  {label:>{w}}" for label, w in zip(labels, widths, strict=True))
    ]
    for name, row in zip(names, rows, strict=True):
        lines.append(
            name.ljust(first) + "".join(f"  {cell:>{w}}" for cell, w in zip(row, widths, strict=True))
        )
    lines.append("")
    lines += [f"{label} {arrow}: {line}" for _, label, arrow, line in METRICS]
    return lines


def run(args: argparse.Namespace) -> int:
    if args.suite == "duplex" and args.out is None:
        args.out = Path("eval-duplex")
    try:
        return _run(args)
    except UsageError as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 2


def _check_eval_extra(args: argparse.Namespace) -> None:
    """The packages of the eval extra, asked for before any work starts rather than when first used."""
    wanted = ("tqdm", "matplotlib") if args.report is not None else ("tqdm",)
    missing = [name for name in wanted if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"{' and '.join(missing)} missing; it comes with the eval extra: pip install 'duplex-assistant[eval]'"
        )


def _run(args: argparse.Namespace) -> int:
    _check_eval_extra(args)
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    try:
        ground_truth = pipeline.load_ground_truth(args.gt) if getattr(args, "gt", None) else None
        groups = _duplex_samples(args) if args.suite == "duplex" else _fdb_samples(args)
    except (ValueError, RuntimeError) as exc:  # no such data dir or kind; espeak-ng or sox missing
        raise UsageError(str(exc)) from exc
    for group in groups:
        for error in group.skipped:
            print(f"eval: skipping sample {error.sample_id}: {error}", file=sys.stderr)

    everything = [s for group in groups for s in group.samples]
    errors: pipeline.Errors = {}
    pending = any(not s.output_wav.is_file() for s in everything)
    pipeline.make_outputs(everything, _generator(args, pending), errors)
    asr_used: list[str] = []

    def load_transcriber():
        from assistant.eval.asr import WhisperTranscriber

        try:
            transcriber = WhisperTranscriber(args.asr)
        except (RuntimeError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
        asr_used.append(transcriber.name)
        return transcriber

    pipeline.make_transcripts(everything, load_transcriber, errors)
    stage = pipeline.Stage("scores", sum(1 for s in everything if s not in errors))
    tasks = []
    for group in groups:
        task = pipeline.score_task(group.task, group.samples, errors, ground_truth, group.kind, stage)
        task.errors.update({e.sample_id: str(e) for e in group.skipped})
        tasks.append(task)
    stage.close()

    for sample, message in errors.items():  # the skipped folders were reported as they were found
        print(f"eval: not scored: {sample.folder}: {message}", file=sys.stderr)
    print("\n".join(summary_lines(tasks)))
    if args.json is not None:
        data = (
            tasks[0].as_json()
            if args.suite == "fdb"
            else {"suite": "duplex", "kinds": {t.kind: t.as_json() for t in tasks}}
        )
        write_json(args.json, data)
        print(f"wrote {args.json}")
    if args.report is not None:
        asr = asr_used[0] if asr_used else "(every output.json was already there)"
        _write_report(args, tasks, pending, asr)
    return 1 if any(task.errors for task in tasks) else 0


def _write_report(args, tasks: list[TaskResult], generated: bool, asr: str) -> None:
    from assistant.eval.report import write_report

    if args.suite == "fdb":
        title, data = f"Full-Duplex-Bench v1: {args.task}", str(args.data_dir)
    else:
        title, data = "Duplex scenarios", str(args.scenarios or args.out / "scenarios")
    source = args.server or f"the {args.backend} backend in-process" + (
        f" ({args.model})" if args.model else ""
    )
    if not generated:
        source = "(every output.wav was already there)"
    meta = {"samples from": data, "output.wav made by": source, "output.json made by": asr}
    print(f"wrote {write_report(args.report, tasks, title, meta)}")
