"""`assistant bench echo`: the echo canceller's CPU cost per 10 ms frame and its ERLE in a simulated room.

Prints figures; never fails on speed. The far end (what the speakers play) is speech from
tests/data/speech, the room (bench/room.py) distorts, delays, filters and attenuates it into a quiet
mic (-100 dBFS of noise, so the figure is the canceller's and not the noise floor's), and from the
9th second on the near-end talker speaks over it (double talk). Per rate and echo delay: ERLE
after the first second of echo with the delay told to the canceller (`talk --echo-delay-ms`) and
not told (AEC3 finding it alone), how loud the near-end speech came through, and the CPU time of
the reference and the mic frame together.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from audio.echo import EchoCanceller
from audio.resample import SUPPORTED_RATES, resample
from bench.room import RoomConfig, SimulatedRoom, erle_db, run_through_room, speech_level_db

SPEECH_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "speech"  # in a checkout
BLOCK_MS = 20  # `assistant talk`'s default device block
DOUBLE_TALK_S = 9.0
QUIET_MIC_DBFS = -100.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--audio-dir",
        type=Path,
        default=SPEECH_DIR,
        help="folder with q1.wav, q2.wav, interrupt.wav (default: the checkout's tests/data/speech)",
    )
    parser.add_argument(
        "--rates", default="16000,24000,48000", help="device rates, comma-separated (default: %(default)s)"
    )
    parser.add_argument(
        "--delays", default="40,120,300,700", help="echo delays in ms, comma-separated (default: %(default)s)"
    )


def load_signals(audio_dir: Path, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(far end, near end), float32 (n,) each at `rate`: speech played for 14 s, a talker over it from 9 s."""

    def read(name: str) -> np.ndarray:
        pcm, file_rate = sf.read(audio_dir / name, dtype="float32")
        return resample(pcm, file_rate, rate)

    far = np.concatenate([read("q1.wav"), read("q2.wav"), read("q1.wav"), read("q2.wav")])
    far = 0.7 * far[: 14 * rate]
    near = np.zeros_like(far)
    talk = read("interrupt.wav")
    start = int(DOUBLE_TALK_S * rate)
    near[start : start + talk.shape[0]] = talk[: far.shape[0] - start]
    return far, near


def run_room(
    far: np.ndarray, near: np.ndarray, rate: int, room_delay_ms: float, told_delay_ms: float
) -> dict[str, float]:
    """One pass through the room and a fresh canceller: ERLE, near-end level, CPU ms per 10 ms."""
    room = SimulatedRoom(rate, RoomConfig(delay_ms=room_delay_ms, noise_dbfs=QUIET_MIC_DBFS))
    result = run_through_room(
        EchoCanceller(rate, delay_ms=told_delay_ms), room, far, near, rate * BLOCK_MS // 1000
    )
    talk = slice(int(DOUBLE_TALK_S * rate), result.cleaned.shape[0])
    return {
        "erle_db": erle_db(result.mic, result.cleaned, result.echo, near, rate),
        "speech_db": speech_level_db(result.cleaned[talk], near[talk], rate),
        "cpu_ms": result.cpu_ms_per_10ms,
    }


def run(args: argparse.Namespace) -> int:
    rates = [int(r) for r in args.rates.split(",")]
    delays = [float(d) for d in args.delays.split(",")]
    bad = [r for r in rates if r not in SUPPORTED_RATES]
    if bad:
        print(f"unsupported rate(s) {bad}; use some of {SUPPORTED_RATES}")
        return 2
    if not (args.audio_dir / "q1.wav").is_file():
        print(f"no q1.wav in {args.audio_dir}; pass --audio-dir (a checkout has them in tests/data/speech)")
        return 2
    print(
        "echo canceller: WebRTC AEC3 (livekit), 20 ms device blocks; room: echo -6 dB, distorted, reflections"
    )
    print(
        f"{'rate Hz':>8} {'delay ms':>8} {'ERLE told':>10} {'ERLE alone':>11} "
        f"{'near-end dB':>12} {'CPU ms/10ms':>12}"
    )
    for rate in rates:
        far, near = load_signals(args.audio_dir, rate)
        for delay in delays:
            told = run_room(far, near, rate, delay, told_delay_ms=delay)
            alone = run_room(far, near, rate, delay, told_delay_ms=0.0)
            print(
                f"{rate:>8} {delay:>8.0f} {told['erle_db']:>9.1f}  {alone['erle_db']:>10.1f} "
                f"{told['speech_db']:>12.1f} {(told['cpu_ms'] + alone['cpu_ms']) / 2:>12.3f}"
            )
    print(
        "ERLE: echo energy removed after the first second (goal >= 20 dB); near-end: the talker's level "
        "after the canceller during double talk (0 = untouched)"
    )
    return 0
