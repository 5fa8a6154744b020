"""Helpers for the real-browser tests: headless Debian Chromium with a WAV file as the microphone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

CHROMIUM = Path("/usr/bin/chromium")
AUDIO_DIR = Path(__file__).resolve().parent / "data" / "speech"
# Chromium's fake capture device runs at 44.1 kHz whatever the file says.
FAKE_MIC_RATE_HZ = 44_100


def chromium_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install -e '.[dev]')"
    return None


def fake_mic_wav(source: Path, dest: Path, lead_silence_s: float = 0.5, tail_silence_s: float = 0.0) -> Path:
    """Write `source` as a 16-bit PCM mono WAV at 44.1 kHz with silence around it.

    Chromium only plays 16-bit PCM files (24-bit ones capture zeros) and starts capturing at a
    point that varies by tens of ms, so the speech starts after a short silence.
    """
    pcm, rate = sf.read(source, dtype="float32", always_2d=True)
    mono = pcm.mean(axis=1)
    if rate != FAKE_MIC_RATE_HZ:
        mono = soxr.resample(mono, rate, FAKE_MIC_RATE_HZ)
    lead = np.zeros(round(lead_silence_s * FAKE_MIC_RATE_HZ), dtype=np.float32)
    tail = np.zeros(round(tail_silence_s * FAKE_MIC_RATE_HZ), dtype=np.float32)
    sf.write(dest, np.concatenate([lead, mono, tail]), FAKE_MIC_RATE_HZ, subtype="PCM_16")
    return dest


def chromium_args(fake_mic: Path) -> list[str]:
    """Launch flags: headless, no network side traffic, auto-granted fake microphone playing `fake_mic`."""
    return [
        "--no-sandbox",
        "--headless",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_mic}%noloop",
    ]
