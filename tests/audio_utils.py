"""Helpers for audio tests: the repository's test speech (tests/data/speech) as float32, and WER."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import soundfile as sf

SPEECH_DIR = Path(__file__).resolve().parent / "data" / "speech"


def speech_dir() -> Path:
    """tests/data/speech: the test speech the repository carries (see its README.md)."""
    return SPEECH_DIR


def load_wav(name: str) -> tuple[np.ndarray, int]:
    """Load tests/data/speech/<name> as float32 mono samples; returns (samples, sample_rate_hz)."""
    x, rate = sf.read(speech_dir() / name, dtype="float32", always_2d=True)
    return x[:, 0].copy(), rate


def reference_texts() -> dict[str, str]:
    """The spoken text of each test speech file, from the table in tests/data/speech/README.md."""
    readme = (speech_dir() / "README.md").read_text(encoding="utf-8")
    return dict(re.findall(r'^\|\s*(\w+)\.wav\s*\|\s*"([^"]+)"', readme, flags=re.MULTILINE))


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER with jiwer, ignoring case and punctuation."""
    import jiwer

    normalise = jiwer.Compose(
        [
            jiwer.ToLowerCase(),
            jiwer.RemovePunctuation(),
            jiwer.RemoveMultipleSpaces(),
            jiwer.Strip(),
            jiwer.ReduceToListOfListOfWords(),
        ]
    )
    return jiwer.wer(references, hypotheses, reference_transform=normalise, hypothesis_transform=normalise)
