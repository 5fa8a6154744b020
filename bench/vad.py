"""`assistant bench vad`: CPU cost per 80 ms frame and turn accuracy of each VAD backend.

Prints figures; never fails on speed. Costs are this thread's CPU time per push of one 80 ms frame
(1920 samples at 24 kHz), the way the server feeds one VAD per session.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ
from audio.resample import resample
from audio.vad import BACKENDS, SileroClassifier, StreamingVad, VadConfig, silero_model_path

DEFAULT_WAV = Path(__file__).resolve().parents[1] / "tests" / "data" / "speech" / "conversation.wav"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wav", type=Path, default=DEFAULT_WAV, help="24 kHz mono speech (default: %(default)s)"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="times the file is streamed, for steadier figures (default: 5)"
    )
    parser.add_argument(
        "--no-jit", action="store_true", help="skip the TorchScript Silero comparison (imports torch)"
    )


def energy_turns(x: np.ndarray, rate: int, merge_ms: int = 500) -> list[tuple[int, int]]:
    """Reference turns by energy: 10 ms windows above -40 dBFS, gaps shorter than merge_ms joined."""
    win = rate // 100
    n = len(x) // win
    rms = np.sqrt((x[: n * win].reshape(n, win).astype(np.float64) ** 2).mean(axis=1))
    turns: list[list[int]] = []
    for i in np.flatnonzero(rms > 0.01):
        if turns and (i - turns[-1][1]) * 10 < merge_ms:
            turns[-1][1] = i + 1
        else:
            turns.append([i, i + 1])
    return [(a * win, b * win) for a, b in turns]


def _cost(backend: str, x: np.ndarray, repeat: int) -> tuple[np.ndarray, float]:
    vad = StreamingVad(VadConfig(backend=backend), sample_rate_hz=SAMPLE_RATE_HZ)
    n = len(x) // FRAME_SAMPLES
    cpu_ms = []
    wall0 = time.perf_counter()
    for _ in range(repeat):
        for i in range(n):
            t0 = time.thread_time_ns()
            vad.push(x[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
            cpu_ms.append((time.thread_time_ns() - t0) / 1e6)
    return np.array(cpu_ms), (time.perf_counter() - wall0) * 1000 / (repeat * n)


def _jit_cost(x16: np.ndarray) -> float:
    """CPU ms per 80 ms for the package's TorchScript Silero model at one torch thread."""
    import torch

    torch.set_num_threads(1)
    model = torch.jit.load(str(silero_model_path().with_name("silero_vad.jit"))).eval()
    chunks = len(x16) // SileroClassifier.frame_samples
    t0 = time.thread_time_ns()
    with torch.inference_mode():
        for i in range(chunks):
            model(torch.from_numpy(x16[i * 512 : (i + 1) * 512]), 16000)
    seconds = chunks * 512 / 16000
    return (time.thread_time_ns() - t0) / 1e6 / (seconds / 0.08)


def run(args: argparse.Namespace) -> int:
    if not args.wav.is_file():
        print(f"no such WAV: {args.wav}; pass --wav PATH (24 kHz mono speech)")
        return 2
    x, rate = sf.read(args.wav, dtype="float32", always_2d=True)
    x = x[:, 0]
    if rate != SAMPLE_RATE_HZ:
        x = resample(x, rate, SAMPLE_RATE_HZ)
    truth = energy_turns(x, SAMPLE_RATE_HZ)
    print(f"{args.wav.name}: {len(x) / SAMPLE_RATE_HZ:.1f} s x {args.repeat}, one push per 80 ms frame")
    print(f"reference turns (energy): {[(round(a / 24), round(b / 24)) for a, b in truth]} ms")
    print(f"{'backend':<14}{'cpu ms/frame':>13}{'p99':>8}{'max':>8}{'wall ms':>9}   onset / end error (ms)")
    for backend in BACKENDS:
        cpu, wall = _cost(backend, x, args.repeat)
        events = StreamingVad(VadConfig(backend=backend)).push(
            np.concatenate([x, np.zeros(SAMPLE_RATE_HZ, np.float32)])
        )
        pairs = [(events[i].sample, events[i + 1].sample) for i in range(0, len(events) - 1, 2)]
        if len(pairs) == len(truth):
            errors = ", ".join(
                f"{(a - ta) / 24:+.0f} / {(b - tb) / 24:+.0f}"
                for (a, b), (ta, tb) in zip(pairs, truth, strict=True)
            )
        else:
            errors = f"{len(pairs)} turns found, {len(truth)} expected"
        print(
            f"{backend:<14}{cpu.mean():>13.3f}{np.percentile(cpu, 99):>8.3f}{cpu.max():>8.3f}{wall:>9.3f}   {errors}"
        )
    if not args.no_jit:
        print(
            f"{'silero (jit)':<14}{_jit_cost(resample(x, SAMPLE_RATE_HZ, 16000)):>13.3f}   model only, torch threads 1"
        )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
