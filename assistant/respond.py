"""`assistant respond`: answer a WAV file offline, fed frame by frame as the user's side of a live call.

The input (any sample rate, mixed to mono, resampled to 24 kHz) plus `--tail-seconds` of silence
goes through the conversation core and the frame loop one 80 ms frame at a time, exactly as in a
live conversation (assistant/offline.py), only without waiting for the wall clock. The output
WAV holds the assistant's channel, sample-aligned with the input: output frame i is what the
model said while hearing input frame i. `--stereo` writes the user on the left, the assistant on
the right.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from assistant.conversation import ConversationOptions
from assistant.engine_args import add_engine_arguments, engine_kwargs
from assistant.offline import frames_for, run_offline
from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ

__all__ = ["add_arguments", "frames_for", "read_user_audio", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser)
    parser.add_argument(
        "--input", required=True, type=Path, help="the user's speech, a WAV file at any sample rate"
    )
    parser.add_argument(
        "--output", required=True, type=Path, help="where to write the assistant's 24 kHz WAV"
    )
    parser.add_argument("--text-output", type=Path, help="also write the assistant's text here")
    parser.add_argument(
        "--events-output",
        type=Path,
        help="also write the conversation's event log here, one JSON object a line (user "
        "turns, barge-ins with cut text, assistant stretches, text, latencies)",
    )
    parser.add_argument("--stereo", action="store_true", help="write user (left) and assistant (right)")
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="audio sampling temperature (default 0.8); 0 = greedy, for text too unless "
        "--text-temperature is given",
    )
    parser.add_argument(
        "--text-temperature", type=float, default=None, help="text sampling temperature (default 0.7)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a reproducible answer")
    parser.add_argument(
        "--instructions",
        help="role prompt, e.g. 'You are a patient teacher.' (PersonaPlex-family models)",
    )
    parser.add_argument(
        "--voice",
        help="voice: a preset of the model (e.g. NATF2) or a .wav / .pt file (PersonaPlex-family models)",
    )
    parser.add_argument(
        "--image",
        type=Path,
        help="a JPEG, PNG or WebP the model sees during the call (MoshiVis-family models)",
    )
    parser.add_argument(
        "--image-at",
        type=float,
        default=0.0,
        help="seconds into the input at which the image is shown (default 0: before the call; it "
        "counts from 1.28 s at the earliest, as in Kyutai's MoshiVis client)",
    )
    parser.add_argument(
        "--tail-seconds",
        type=float,
        default=5.0,
        help="seconds of silence fed after the input so the assistant can answer (default 5)",
    )


def read_user_audio(path: Path, rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Any WAV -> float32 mono at `rate_hz` (default 24 kHz, the engine's), read at its own rate and
    resampled once, straight to `rate_hz` (not at all when they are equal)."""
    import soundfile as sf

    from audio.resample import SUPPORTED_RATES, resample

    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate in SUPPORTED_RATES and rate_hz in SUPPORTED_RATES:
        return resample(mono, rate, rate_hz)
    import soxr

    return soxr.resample(mono, rate, rate_hz, quality="HQ").astype(np.float32)


class EventLog:
    """The conversation's own event log as JSON lines (the records `assistant serve --record` keeps)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, record: dict) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def write(self, user: np.ndarray, assistant: np.ndarray) -> None:
        pass  # the audio goes to --output

    def close(self) -> None:
        self._file.close()


def conversation_options(args: argparse.Namespace) -> ConversationOptions:
    text_temperature = args.text_temperature
    if text_temperature is None and args.temperature == 0:
        text_temperature = 0.0  # --temperature 0 means a fully greedy answer
    return ConversationOptions(
        seed=args.seed,
        temperature=args.temperature,
        text_temperature=text_temperature,
        instructions=getattr(args, "instructions", None),
        voice=getattr(args, "voice", None),
    )


def run(args: argparse.Namespace) -> int:
    import soundfile as sf

    from assistant.backends import build_engine

    if not args.input.is_file():
        print(f"respond: input file {args.input} does not exist", file=sys.stderr)
        return 2
    if args.tail_seconds < 0:
        print(f"respond: --tail-seconds must be >= 0, got {args.tail_seconds}", file=sys.stderr)
        return 2
    try:
        user = read_user_audio(args.input)
    except (RuntimeError, ValueError) as exc:  # soundfile raises these for unreadable files
        print(f"respond: cannot read {args.input} as audio: {exc}", file=sys.stderr)
        return 2
    try:
        options = conversation_options(args)
        engine = build_engine(args.backend, batch_size=1, **engine_kwargs(args))
        engine.check_prompt(options.instructions, options.voice)
        images = _images(engine, args)
    except (ValueError, OSError) as exc:  # bad checkpoint, device or option: the message says what to fix
        print(f"respond: {exc}", file=sys.stderr)
        return 2

    n_frames = len(frames_for(user, args.tail_seconds))
    started = time.perf_counter()
    with _progress(n_frames) as advance:
        try:
            result = run_offline(
                engine,
                user,
                options=options,
                tail_seconds=args.tail_seconds,
                on_frame=lambda i: advance(),
                recorder=EventLog(args.events_output) if args.events_output else None,
                images=images,
            )
        except (ValueError, RuntimeError) as exc:  # a refused option, or the engine failed mid-way
            print(f"respond: {exc}", file=sys.stderr)
            return 2
    elapsed = time.perf_counter() - started

    data = np.stack([result.user, result.assistant], axis=1) if args.stereo else result.assistant
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(args.output), data, SAMPLE_RATE_HZ, subtype="PCM_16")
    text = result.text
    if args.text_output is not None:
        args.text_output.write_text(text + "\n")
    audio_seconds = n_frames * FRAME_SAMPLES / SAMPLE_RATE_HZ
    print(f"text: {text}")
    print(
        f"wrote {args.output} ({audio_seconds:.2f} s); real-time factor {elapsed / audio_seconds:.3f} "
        f"({elapsed:.2f} s of compute for {audio_seconds:.2f} s of audio)"
    )
    return 0


def _images(engine, args: argparse.Namespace) -> dict:
    """--image / --image-at as run_offline's images: {frame index: the prepared image}."""
    if args.image is None:
        if args.image_at:
            raise ValueError("--image-at needs --image")
        return {}
    if not args.image_at >= 0:
        raise ValueError(f"--image-at must be >= 0 seconds, got {args.image_at}")
    image = engine.check_image(args.image.read_bytes())  # ImageError is a ValueError: a clear message
    return {round(args.image_at * SAMPLE_RATE_HZ / FRAME_SAMPLES): image}


class _progress:
    """A rich progress bar on a terminal; nothing when output is redirected (logs, tests)."""

    def __init__(self, total: int):
        self.total = total
        self._bar = None

    def __enter__(self):
        if not sys.stdout.isatty():
            return lambda: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("responding"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} frames"),
            TimeRemainingColumn(),
        )
        self._bar.__enter__()
        task = self._bar.add_task("respond", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False
