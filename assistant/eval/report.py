"""The HTML report: one self-contained page (plots are inline PNGs) that opens anywhere, offline.

It shows the run's figures beside FDB's published v1 table, then every sample's timeline: the
user's speech and the assistant's (Silero VAD), the assistant's words (ASR), the task's marks
(pause, end of turn, interruption, overlap event) and each overlap's stop.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

from assistant.eval.results import SampleResult, TaskResult

REPORT_FILE = "index.html"

FDB_SOURCE = (
    "Full-Duplex-Bench v1 results as published in its README (github.com/DanielLin94144/Full-Duplex-Bench); "
    'the benchmark: Lin et al., "Full-Duplex-Bench", arXiv:2503.04721.'
)
FDB_COLUMNS = (
    "model",
    "pause TOR synthetic ↓",
    "pause TOR Candor ↓",
    "backchannel TOR",
    "backchannel freq",
    "backchannel JSD ↓",
    "turn-taking TOR",
    "turn-taking latency s ↓",
    "interruption TOR",
    "interruption GPT judge",
    "interruption latency s ↓",
)
FDB_V1_PUBLISHED = (
    ("PersonaPlex", 0.584, 0.662, 0.327, 0.025, 0.649, 0.992, 0.070, 1.000, 4.210, 0.400),
    ("dGSLM", 0.934, 0.935, 0.691, 0.015, 0.934, 0.975, 0.352, 0.917, 0.201, 2.531),
    ("Moshi", 0.985, 0.980, 1.000, 0.001, 0.957, 0.941, 0.265, 1.000, 0.765, 0.257),
    ("Freeze-Omni", 0.642, 0.481, 0.636, 0.001, 0.997, 0.336, 0.953, 0.867, 3.615, 1.409),
    ("Gemini Live 2.0", 0.255, 0.310, 0.091, 0.012, 0.896, 0.655, 1.301, 0.891, 3.376, 1.183),
    ("GPT-Realtime", 0.010, 0.120, 0.000, 0.007, 0.980, 1.000, 1.470, 0.970, 3.850, 1.500),
)
SUMMARY_COLUMNS = (
    ("samples", "samples"),
    ("tor", "TOR"),
    ("latency_s", "latency s"),
    ("frequency", "backchannels / s"),
    ("jsd", "JSD"),
    ("stop_latency_s", "stop latency s"),
    ("held_floor", "held floor"),
)
SAMPLE_FIGURES = (
    ("tor", "TOR"),
    ("latency_s", "latency s"),
    ("words", "words"),
    ("backchannels", "backchannels"),
    ("frequency", "backchannels / s"),
    ("jsd", "JSD"),
)
_USER, _ASSISTANT, _MARK, _STOP = "#4c78a8", "#f58518", "#54a24b", "#e45756"

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.sample { border-top: 1px solid #ddd; padding: 0.5em 0; }
.sample img { max-width: 100%; display: block; }
.error { color: #b00020; }
.note, .meta { color: #555; }
"""


def timeline_png(result: SampleResult) -> bytes:
    """One sample's timeline as a PNG: user and assistant speech, words, task marks, stops."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display needed

    sample = result.sample
    fig = Figure(figsize=(11, 2.3), dpi=80)
    ax = fig.subplots()
    ax.broken_barh(
        [(s, e - s) for s, e in result.user_segments], (0.65, 0.7), color=_USER, label="user speech"
    )
    ax.broken_barh(
        [(s, e - s) for s, e in result.assistant_segments],
        (-0.35, 0.7),
        color=_ASSISTANT,
        label="assistant speech",
    )
    for i, word in enumerate(result.words):
        if word.start is not None:
            ax.text(word.start, -0.55 - 0.22 * (i % 2), word.text, fontsize=7, va="top", clip_on=True)
    for n, mark in enumerate(sample.marks):
        label = mark.label if n == 0 else None
        if mark.end_s > mark.start_s:
            ax.axvspan(mark.start_s, mark.end_s, color=_MARK, alpha=0.2, label=label)
        else:
            ax.axvline(mark.start_s, color=_MARK, linestyle="--", label=label)
    for n, overlap in enumerate(result.overlaps):
        style = ":" if overlap.held_floor else "-"
        label = "overlap (dotted: held the floor)" if n == 0 else None
        ax.plot(
            [overlap.user_onset_s, overlap.overlap_end_s], [0.5, 0.5], style, color=_STOP, lw=2.5, label=label
        )
    ax.set_xlim(0, sample.duration_s)
    ax.set_ylim(-1.1, 2.0)  # room above the user's row for the legend
    ax.set_yticks([0, 1], ["assistant", "user"])
    ax.set_xlabel("seconds")
    ax.legend(loc="upper right", fontsize=7, ncol=4, framealpha=0.8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _name(task: TaskResult) -> str:
    return f"{task.kind} ({task.task})" if task.kind else task.task


def _summary_table(tasks: Sequence[TaskResult]) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in SUMMARY_COLUMNS)
    rows = []
    for task in tasks:
        figures = task.summary()
        cells = "".join(f"<td>{_cell(figures[key])}</td>" for key, _ in SUMMARY_COLUMNS)
        rows.append(f"<tr><td>{html.escape(_name(task))}</td>{cells}<td>{len(task.errors)}</td></tr>")
    return f"<table><tr><th>task</th>{head}<th>errors</th></tr>{''.join(rows)}</table>"


def _published_table() -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in FDB_COLUMNS)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in FDB_V1_PUBLISHED
    )
    return f'<table data-testid="published">{"<tr>" + head + "</tr>"}{rows}</table>'


def _sample_section(task: TaskResult, result: SampleResult) -> str:
    figures = result.as_json()
    shown = [f"{label} {_cell(figures[key])}" for key, label in SAMPLE_FIGURES if figures[key] is not None]
    stops = [_cell(o.stop_latency_s) if not o.held_floor else "held" for o in result.overlaps]
    if stops:
        shown.append("stops " + ", ".join(stops))
    png = base64.b64encode(timeline_png(result)).decode("ascii")
    note = f'<p class="note">{html.escape(result.note)}</p>' if result.note else ""
    title = f"{_name(task)} / {result.sample.id}"
    return (
        f'<div class="sample"><h3>{html.escape(title)}</h3><p>{" · ".join(shown)}</p>{note}'
        f'<img alt="timeline of {html.escape(title)}" src="data:image/png;base64,{png}"></div>'
    )


def render(tasks: Sequence[TaskResult], title: str, meta: dict[str, str]) -> str:
    """The whole page as HTML text."""
    meta_rows = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in meta.items())
    errors = [
        f'<li class="error">{html.escape(_name(task))} / {html.escape(sample_id)}: {html.escape(message)}</li>'
        for task in tasks
        for sample_id, message in task.errors.items()
    ]
    errors_html = f"<h2>Samples not scored</h2><ul>{''.join(errors)}</ul>" if errors else ""
    samples = "".join(_sample_section(task, r) for task in tasks for r in task.results)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<ul class="meta">{meta_rows}</ul>
<h2>This run</h2>
{_summary_table(tasks)}
<p class="note">TOR: takeover rate (FDB v1: words spanning at least 1 s, or more than 3 words). Latency: from the
end of the user's turn (or interruption) to the first word, over samples that took the turn. Stop latency: from
the user starting to talk over the assistant to the assistant falling silent (FDB v1.5's overlap timing); held
floor: the share of those overlaps where the assistant kept talking after the user had finished. The
interruption task's relevance score is FDB's GPT judge, which needs an external API: not computed here.</p>
<h2>Published Full-Duplex-Bench v1</h2>
{_published_table()}
<p class="note">{html.escape(FDB_SOURCE)}</p>
{errors_html}
<h2>Samples</h2>
{samples}
</body></html>
"""


def write_report(directory: Path, tasks: Sequence[TaskResult], title: str, meta: dict[str, str]) -> Path:
    """Write DIR/index.html; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REPORT_FILE
    path.write_text(render(tasks, title, meta), encoding="utf-8")
    return path
