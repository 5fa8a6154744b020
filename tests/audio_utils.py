"""Shared helpers for audio tests: find the shared test speech and load it as float32."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"


def shared_audio_dir() -> Path:
    """The shared/audio folder next to the repo; skips the calling test if it is absent."""
    if not (SHARED_AUDIO / "conversation.wav").is_file():
        pytest.skip(
            f"shared test speech not found at {SHARED_AUDIO} (expected ../shared/audio next to the repo)"
        )
    return SHARED_AUDIO


def load_wav(name: str) -> tuple[np.ndarray, int]:
    """Load shared/audio/<name> as float32 mono samples; returns (samples, sample_rate_hz)."""
    x, rate = sf.read(shared_audio_dir() / name, dtype="float32", always_2d=True)
    return x[:, 0].copy(), rate


def reference_texts() -> dict[str, str]:
    """The spoken text of each shared test file, from the table in shared/audio/README.md."""
    readme = (shared_audio_dir() / "README.md").read_text(encoding="utf-8")
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
