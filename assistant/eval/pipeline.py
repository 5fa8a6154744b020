"""The three stages over a set of samples, each skipped per sample when its file already exists.

1. output.wav: the pending samples go to a generator (in-process or a live server) in one call,
   so it can batch them; 2. output.json: ASR, the model loaded only if a sample needs it;
3. scores, always recomputed (cheap) from the two files. A sample that fails a stage is
dropped from the later ones with its error, and the others go on.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from assistant.eval import score
from assistant.eval.asr import Transcriber, from_output_json, to_output_json, transcribe
from assistant.eval.dataset import Sample
from assistant.eval.results import SampleResult, TaskResult, write_json
from assistant.eval.segments import FDB_RESOLUTION_DECIMALS, speech_segments
from assistant.respond import read_user_audio
from audio.vad import CLASSIFIER_RATE_HZ

# generate(samples, on_done): write output.wav of each sample, then on_done(sample, error or None).
Generator = Callable[[list[Sample], Callable[[Sample, "str | None"], None]], None]
Errors = dict[Sample, str]


class Stage:
    """A progress bar over a stage's samples (tqdm, on a terminal only) and a one-line summary after."""

    def __init__(self, name: str, total: int):
        from tqdm import tqdm

        self.name = name
        self.done = 0
        self.failed = 0
        self._bar = tqdm(total=total, desc=name, unit="sample", file=sys.stderr, disable=None)

    def advance(self, failed: bool = False) -> None:
        self.done += 1
        self.failed += failed
        self._bar.update(1)

    def close(self, skipped: int | None = None) -> None:
        """skipped: samples whose file was already there (None: a stage that always runs)."""
        self._bar.close()
        there = "" if skipped is None else f", {skipped} already there"
        print(f"{self.name}: {self.done - self.failed} made{there}, {self.failed} failed")


def read_16k(path: Path) -> np.ndarray:
    """Any WAV -> float32 mono at 16 kHz, the rate of Silero VAD and Whisper: read at its own rate
    and resampled once (a round trip through 24 kHz moves segment edges)."""
    return read_user_audio(path, CLASSIFIER_RATE_HZ)


def make_outputs(samples: Sequence[Sample], generate: Generator, errors: Errors) -> None:
    """Stage 1: output.wav for every sample that has none."""
    pending = [s for s in samples if s not in errors and not s.output_wav.is_file()]
    stage = Stage("output.wav", len(pending))

    def on_done(sample: Sample, error: str | None) -> None:
        if error is not None:
            errors[sample] = error
        stage.advance(failed=error is not None)

    try:
        if pending:
            generate(pending, on_done)
    finally:
        stage.close(skipped=len(samples) - len(pending))


def make_transcripts(
    samples: Sequence[Sample],
    load_transcriber: Callable[[], Transcriber],
    errors: Errors,
) -> None:
    """Stage 2: output.json for every sample that has none (the interruption task cropped at its end)."""
    pending = [s for s in samples if s not in errors and not s.output_json.is_file()]
    stage = Stage("output.json", len(pending))
    try:
        transcriber = load_transcriber() if pending else None
        for sample in pending:
            try:
                pcm = read_16k(sample.output_wav)
            except (RuntimeError, ValueError) as exc:
                errors[sample] = f"{sample.output_wav}: cannot read it as audio ({exc})"
                stage.advance(failed=True)
                continue
            try:
                words = transcribe(transcriber, pcm, sample.asr_from_s)
            except RuntimeError as exc:  # CTranslate2's failures: this sample only
                errors[sample] = f"transcribing {sample.output_wav} failed: {exc}"
                stage.advance(failed=True)
                continue
            write_json(sample.output_json, to_output_json(words))
            stage.advance()
    finally:
        stage.close(skipped=len(samples) - len(pending))


def score_sample(sample: Sample, ground_truth: dict[str, list[float]] | None = None) -> SampleResult:
    """Stage 3 for one sample, from its input.wav, output.wav and output.json. Raises ValueError
    with the file at fault."""
    try:
        words = from_output_json(json.loads(sample.output_json.read_text(encoding="utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{sample.output_json}: {exc}") from exc
    try:
        output = read_16k(sample.output_wav)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{sample.output_wav}: cannot read it as audio ({exc})") from exc
    try:
        user = read_16k(sample.input_wav)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{sample.input_wav}: cannot read it as audio ({exc})") from exc
    user_segments = speech_segments(user)
    assistant_segments = speech_segments(output)
    result = SampleResult(
        sample, words, user_segments, assistant_segments, score.overlaps(user_segments, assistant_segments)
    )
    task = sample.task
    try:
        if task.name == "backchannel":
            fdb_segments = [
                (round(s, FDB_RESOLUTION_DECIMALS), round(e, FDB_RESOLUTION_DECIMALS))
                for s, e in assistant_segments
            ]
            duration_s = output.shape[0] / CLASSIFIER_RATE_HZ
            found = score.backchannels(fdb_segments, words, duration_s)
            result.tor, result.backchannels, result.frequency = found.tor, found.segments, found.frequency
            if ground_truth is not None:
                if sample.id in ground_truth:
                    result.jsd = score.backchannel_jsd(found.segments, duration_s, ground_truth[sample.id])
                else:
                    result.note = f"the ground truth has no distribution for sample {sample.id}: no JSD"
        elif task.takeover_scored:
            result.tor = score.takeover(words, last_end_may_be_missing=task.name == "pause_handling")
            if task.event_from is not None and result.tor == 1:
                result.latency_s = score.response_latency(words, sample.event_s)
    except ValueError as exc:
        raise ValueError(f"{sample.output_json}: {exc}") from exc
    return result


def score_task(
    task: str,
    samples: Sequence[Sample],
    errors: Errors,
    ground_truth: dict[str, list[float]] | None = None,
    kind: str | None = None,
    stage: Stage | None = None,
) -> TaskResult:
    """Stage 3: every sample of one task that got through stages 1 and 2."""
    result = TaskResult(task, kind=kind)
    for sample in samples:
        if sample in errors:
            result.errors[sample.id] = errors[sample]
            continue
        try:
            result.results.append(score_sample(sample, ground_truth))
        except ValueError as exc:
            errors[sample] = result.errors[sample.id] = str(exc)
        if stage is not None:
            stage.advance(failed=sample in errors)
    return result


def load_ground_truth(path: Path) -> dict[str, list[float]]:
    """The user's own copy of FDB's icc_gt_distribution.json: {ID: [probabilities]}. Raises ValueError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--gt {path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v) for v in data.values()
    ):
        raise ValueError(
            f"--gt {path}: expected FDB's icc_gt_distribution.json, {{ID: [numbers summing to 1]}}"
        )
    return {str(k): [float(x) for x in v] for k, v in data.items()}
