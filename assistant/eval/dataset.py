"""Sample folders in Full-Duplex-Bench's layout: what each task needs, read and checked up front.

One folder per sample, `{ID}/input.wav` plus the task's JSON (FDB v1: `pause.json`,
`turn_taking.json`, `interrupt.json`; v1.5's `metadata.json` for the overlap scenarios). A
folder that does not fit gives a `SampleError` naming the file and what was expected, and the
other samples go on. Outputs (`output.wav`, `output.json`) go beside the input, FDB's own
convention, or into `OUT/{ID}/` so FDB's data can stay read-only and several systems be scored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INPUT_WAV = "input.wav"
OUTPUT_WAV = "output.wav"
OUTPUT_JSON = "output.json"


class SampleError(Exception):
    """A sample that cannot be evaluated; the message names the file and what was wrong."""

    def __init__(self, sample_id: str, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.sample_id = sample_id
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class Mark:
    """A labelled span of the input for the timeline plot (start == end: an instant)."""

    label: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Task:
    """An FDB task: the JSON each sample folder holds beside input.wav, and what is read from it.

    event_from: which end of the file's first [start, end] latency is timed from ("start": the
        turn-taking file's t0, the end of the user's turn; "end": the end of the interruption);
        None: the task has no latency.
    asr_from_event: transcribe only the output after that instant (the interruption task).
    """

    name: str
    file: str | None
    mark_label: str = ""
    event_from: str | None = None
    asr_from_event: bool = False
    digit_ids_only: bool = False  # FDB scans only all-digit folder names for this task
    takeover_scored: bool = True


FDB_TASKS = {
    "pause_handling": Task("pause_handling", "pause.json", mark_label="pause"),
    "smooth_turn_taking": Task(
        "smooth_turn_taking", "turn_taking.json", mark_label="turn end", event_from="start"
    ),
    "backchannel": Task("backchannel", None, digit_ids_only=True),
    "user_interruption": Task(
        "user_interruption",
        "interrupt.json",
        mark_label="interruption",
        event_from="end",
        asr_from_event=True,
    ),
}
# FDB v1.5's overlap tasks, read from metadata.json: scored by the timing of the overlap only.
OVERLAP_TASKS = {
    "user_backchannel": Task(
        "user_backchannel", "metadata.json", mark_label="backchannel", takeover_scored=False
    ),
    "background_speech": Task(
        "background_speech", "metadata.json", mark_label="other speaker", takeover_scored=False
    ),
}
TASKS = {**FDB_TASKS, **OVERLAP_TASKS}


@dataclass(frozen=True)
class Sample:
    """One sample folder, checked: its input's length and the task's times, in seconds."""

    id: str
    task: Task
    folder: Path
    out_dir: Path
    duration_s: float
    event_s: float | None  # the end of the user's turn or interruption, where latency starts
    marks: tuple[Mark, ...]

    @property
    def input_wav(self) -> Path:
        return self.folder / INPUT_WAV

    @property
    def output_wav(self) -> Path:
        return self.out_dir / OUTPUT_WAV

    @property
    def output_json(self) -> Path:
        return self.out_dir / OUTPUT_JSON

    @property
    def asr_from_s(self) -> float:
        """Where transcription of the output starts (FDB crops the interruption task at its end)."""
        return self.event_s if self.task.asr_from_event and self.event_s is not None else 0.0


def sample_folders(data_dir: Path, task: Task) -> list[Path]:
    """The sample folders of a task directory, in ID order (numeric IDs by number)."""
    folders = [p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if task.digit_ids_only:
        folders = [p for p in folders if p.name.isdigit()]
    return sorted(folders, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def load_samples(
    data_dir: Path, task: Task, out_dir: Path | None = None
) -> tuple[list[Sample], list[SampleError]]:
    """Every sample folder of `data_dir`: the ones that check out, and an error for each that does not.

    Raises ValueError when data_dir is no task directory at all (missing, or no sample folders).
    """
    if not data_dir.is_dir():
        raise ValueError(f"data directory {data_dir} does not exist")
    folders = sample_folders(data_dir, task)
    if not folders:
        wanted = f"input.wav and {task.file}" if task.file else "input.wav"
        raise ValueError(
            f"{data_dir} has no sample folders; expected one folder per sample ({{ID}}/ holding {wanted}), "
            f"as in Full-Duplex-Bench's {task.name} data"
        )
    samples, errors = [], []
    for folder in folders:
        try:
            samples.append(read_sample(folder, task, (out_dir / folder.name) if out_dir else folder))
        except SampleError as exc:
            errors.append(exc)
    return samples, errors


def read_sample(folder: Path, task: Task, out_dir: Path) -> Sample:
    """Check one sample folder and read its times. Raises SampleError."""
    sample_id = folder.name
    duration_s = _input_duration(sample_id, folder / INPUT_WAV)
    event_s, marks = None, ()
    if task.file is not None:
        path = folder / task.file
        items = _read_json(sample_id, path)
        spans = _spans(sample_id, path, task, items, duration_s)
        if task.event_from == "start":  # only t0 of turn_taking.json means anything: the turn's end
            event_s = spans[0][0]
            marks = (Mark(task.mark_label, event_s, event_s),)
        else:
            event_s = spans[0][1] if task.event_from == "end" else None
            marks = tuple(Mark(task.mark_label, s, e) for s, e in spans)
    return Sample(sample_id, task, folder, out_dir, duration_s, event_s, marks)


def _input_duration(sample_id: str, path: Path) -> float:
    import soundfile as sf

    if not path.is_file():
        raise SampleError(sample_id, path, "missing; every sample folder needs the user's side as input.wav")
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise SampleError(sample_id, path, f"is not a readable WAV file ({exc})") from exc
    if info.frames == 0:
        raise SampleError(sample_id, path, "holds no audio")
    return info.frames / info.samplerate


def _read_json(sample_id: str, path: Path) -> Any:
    if not path.is_file():
        raise SampleError(sample_id, path, "missing; this task needs it beside input.wav")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SampleError(sample_id, path, f"is not valid JSON ({exc})") from exc


def _spans(
    sample_id: str, path: Path, task: Task, items: Any, duration_s: float
) -> list[tuple[float, float]]:
    """The [start, end] pairs of a task JSON: a list of {"timestamp": [s, e]} (metadata.json: one
    object with "timestamps": [s, e])."""
    if task.file == "metadata.json":
        if not isinstance(items, dict) or "timestamps" not in items:
            raise SampleError(sample_id, path, 'expected an object with "timestamps": [start, end]')
        pairs = [items["timestamps"]]
    else:
        if not isinstance(items, list) or not items:
            raise SampleError(sample_id, path, 'expected a non-empty list of {"timestamp": [start, end]}')
        if not all(isinstance(item, dict) and "timestamp" in item for item in items):
            raise SampleError(sample_id, path, 'every item needs a "timestamp": [start, end]')
        pairs = [item["timestamp"] for item in items]
    spans = []
    for pair in pairs:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in pair
            )
        ):
            raise SampleError(sample_id, path, f"timestamp {pair!r} is not [start, end] in seconds")
        start, end = float(pair[0]), float(pair[1])
        if not 0.0 <= start <= end:
            raise SampleError(sample_id, path, f"timestamp [{start}, {end}] is not 0 <= start <= end")
        if start > duration_s:
            raise SampleError(
                sample_id,
                path,
                f"timestamp [{start}, {end}] starts after input.wav ends ({duration_s:.2f} s)",
            )
        spans.append((start, end))
    return spans
