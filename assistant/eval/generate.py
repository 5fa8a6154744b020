"""output.wav in-process: every sample's input through the conversation core, batched on one engine.

FDB wants the assistant's side time-synchronous with the input: same length, and each sound where
a listener would have heard it. Output frame i is computed once input frame i is complete, so a
listener hears it one frame (80 ms) later; FDB's own Moshi client writes its output after one
frame of zeros for the same reason. Both this path and the live one (client/eval_live.py) place
audio that way (`heard_output`), so their timings agree.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from assistant.conversation import ConversationOptions
from assistant.engine import Engine
from assistant.eval.dataset import Sample
from assistant.offline import run_offline_batch
from assistant.respond import read_user_audio
from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ


def read_input(sample: Sample) -> np.ndarray:
    """The sample's input.wav as the engine hears it: float32 (n,) mono at 24 kHz."""
    return read_user_audio(sample.input_wav)


def heard_output(assistant_24k: np.ndarray, n_samples: int) -> np.ndarray:
    """The assistant's frames in output order -> what a listener heard, aligned with an input of
    n_samples: one frame of silence first, then the audio, cut or padded to the input's length."""
    heard = np.zeros(n_samples, dtype=np.float32)
    audio = np.asarray(assistant_24k, dtype=np.float32)[: max(0, n_samples - FRAME_SAMPLES)]
    heard[FRAME_SAMPLES : FRAME_SAMPLES + audio.shape[0]] = audio
    return heard


def write_wav(path: Path, pcm: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ) -> None:
    """Write 16-bit mono, atomically: an interrupted run leaves no half file that resume would skip."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    sf.write(str(partial), np.clip(pcm, -1.0, 1.0), sample_rate_hz, subtype="PCM_16", format="WAV")
    os.replace(partial, path)


def generate_in_process(
    engine: Engine,
    samples: Sequence[Sample],
    *,
    options: ConversationOptions | None = None,
    on_done: Callable[[Sample, str | None], None] = lambda sample, error: None,
) -> None:
    """Write output.wav for every sample, engine.batch_size conversations at a time.

    on_done(sample, error) follows each sample: error None when its output.wav was written, else
    what went wrong (a batch whose engine fails reports it for each of its samples).
    """
    batch = engine.batch_size
    for first in range(0, len(samples), batch):
        group = list(samples[first : first + batch])
        inputs = []
        for sample in group:
            try:
                inputs.append(read_input(sample))
            except (RuntimeError, ValueError) as exc:  # soundfile's errors for an unreadable file
                inputs.append(None)
                on_done(sample, f"{sample.input_wav}: cannot read it as audio ({exc})")
        readable = [(s, x) for s, x in zip(group, inputs, strict=True) if x is not None]
        if not readable:
            continue
        try:
            results = run_offline_batch(engine, [x for _, x in readable], options=options)
        except (RuntimeError, ValueError) as exc:  # the engine refused an option or failed mid-way
            for sample, _ in readable:
                on_done(sample, f"generating {sample.output_wav} failed: {exc}")
            continue
        for (sample, user), result in zip(readable, results, strict=True):
            write_wav(sample.output_wav, heard_output(result.assistant, user.shape[0]))
            on_done(sample, None)
