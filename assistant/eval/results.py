"""Scores per sample and per task, and the JSON they are written as.

A task's JSON is `{"task", "samples", "tor", "latency_s", "frequency", "jsd", "stop_latency_s",
"held_floor", "per_sample": {ID: {...}}, "errors": {ID: message}}`; a field that does not apply
to the task (or had nothing to average) is null. Task figures are FDB's: TOR is the mean over
samples, latency the mean over samples that took the turn, frequency and JSD means over samples;
the overlap figures (v1.5 timing) are over every overlap of the task's samples.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.eval.dataset import Sample
from assistant.eval.score import Overlap, Segment, Word, mean_or_none


@dataclass
class SampleResult:
    """What one sample scored, and the timeline it was scored from (for the report's plot)."""

    sample: Sample
    words: list[Word]
    user_segments: list[Segment]  # speech in input.wav
    assistant_segments: list[Segment]  # speech in output.wav
    overlaps: list[Overlap]
    tor: int | None = None
    latency_s: float | None = None
    backchannels: list[Segment] | None = None  # backchannel task: the segments counted
    frequency: float | None = None
    jsd: float | None = None
    note: str | None = None  # a score left out, and why (e.g. no ground truth for this ID)

    def as_json(self) -> dict[str, Any]:
        return {
            "tor": self.tor,
            "latency_s": _round(self.latency_s),
            "words": len(self.words),
            "backchannels": None if self.backchannels is None else len(self.backchannels),
            "frequency": _round(self.frequency),
            "jsd": _round(self.jsd),
            "overlaps": [
                {
                    "user_onset_s": _round(o.user_onset_s),
                    "stop_latency_s": _round(o.stop_latency_s),
                    "held_floor": o.held_floor,
                }
                for o in self.overlaps
            ],
            "note": self.note,
        }


@dataclass
class TaskResult:
    """One task's (or one scenario kind's) samples, scored, and the ones that could not be."""

    task: str
    results: list[SampleResult] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # sample ID -> what went wrong
    kind: str | None = None  # the scenario kind, for `assistant eval duplex`

    def summary(self) -> dict[str, Any]:
        """The task's figures (no per-sample detail)."""
        scored = [r for r in self.results if r.tor is not None]
        overlaps = [o for r in self.results for o in r.overlaps]
        return {
            "task": self.task,
            "samples": len(self.results),
            "tor": _round(mean_or_none([r.tor for r in scored])),
            "latency_s": _round(mean_or_none([r.latency_s for r in scored if r.tor == 1])),
            "frequency": _round(mean_or_none([r.frequency for r in self.results])),
            "jsd": _round(mean_or_none([r.jsd for r in self.results])),
            "stop_latency_s": _round(mean_or_none([o.stop_latency_s for o in overlaps])),
            "held_floor": _round(mean_or_none([float(o.held_floor) for o in overlaps])),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "per_sample": {r.sample.id: r.as_json() for r in self.results},
            "errors": dict(self.errors),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a result file atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
