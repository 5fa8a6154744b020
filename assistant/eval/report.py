"""The HTML report: one page (charts are inline SVGs) with each sample's audio beside it, offline.

It shows the run's figures, each explained in a line with the direction that is better, beside
FDB's published v1 table, then every sample: its figures, players for what the user said and what
the assistant answered, and its timeline (assistant/eval/timeline.py). It reads on a phone: wide
tables and charts scroll sideways in their own box, never the page.
"""

from __future__ import annotations

import base64
import html
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from assistant.eval.results import SampleResult, TaskResult
from assistant.eval.timeline import timeline_svg

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
# The figures of a run, each with the direction that is better and one line on what it measures.
METRICS = (
    (
        "tor",
        "TOR",
        "↓↑",
        "takeover rate: the share of samples where the assistant took the turn (words spanning at least "
        "1 s, or more than 3); ↓ better at a pause or a backchannel, ↑ at a turn end or an interruption",
    ),
    (
        "latency_s",
        "latency s",
        "↓",
        "from the end of the user's turn (or interruption) to the assistant's first word, over the samples "
        "where it took the turn",
    ),
    (
        "frequency",
        "backchannels / s",
        "↑",
        "the assistant's backchannels (short mm-hmms) per second of input",
    ),
    (
        "jsd",
        "JSD",
        "↓",
        "how far the timing of those backchannels is from human listeners' (Jensen-Shannon divergence)",
    ),
    (
        "stop_latency_s",
        "stop latency s",
        "↓",
        "from the user starting to talk over the assistant to the assistant falling silent",
    ),
    (
        "held_floor",
        "held floor",
        "↓",
        "the share of those overlaps where the assistant kept talking after the user had finished",
    ),
)
# Tasks where taking the turn is the right thing to do; elsewhere a lower TOR is better.
TOR_BETTER_HIGH = ("smooth_turn_taking", "user_interruption")
SAMPLE_FIGURES = (
    ("tor", "TOR"),
    ("latency_s", "latency s"),
    ("words", "words"),
    ("backchannels", "backchannels"),
    ("frequency", "backchannels / s"),
    ("jsd", "JSD"),
)
AUDIO_DIR = "audio"

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; padding: 1em; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.better { color: #555; font-weight: normal; white-space: nowrap; }
ul.metrics { margin: 0.8em 0 1.5em; padding-left: 1.2em; color: #444; }
ul.metrics b { color: #222; }
.sample { border-top: 1px solid #ddd; padding: 0.5em 0 1em; }
.chart { overflow-x: auto; }
.chart img { display: block; width: 100%; min-width: 680px; height: auto; }
.audio { display: flex; flex-wrap: wrap; gap: 0.5em 1.5em; margin: 0.5em 0; }
.audio label { display: flex; flex-direction: column; font-size: 0.9em; color: #444; flex: 1 1 16em; }
.audio audio { width: 100%; max-width: 28em; }
.error { color: #b00020; }
.note, .meta { color: #555; }
.meta { padding-left: 1.2em; overflow-wrap: anywhere; }
"""


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _name(task: TaskResult) -> str:
    return f"{task.kind} ({task.task})" if task.kind else task.task


def _summary_table(tasks: Sequence[TaskResult]) -> str:
    head = "".join(
        f'<th>{html.escape(label)} <span class="better">{arrow}</span></th>' for _, label, arrow, _ in METRICS
    )
    rows = []
    for task in tasks:
        figures = task.summary()
        cells = []
        for key, _, _, _ in METRICS:
            cell = _cell(figures[key])
            if key == "tor" and figures[key] is not None:  # which way is better depends on the task
                cell += f' <span class="better">{"↑" if task.task in TOR_BETTER_HIGH else "↓"} better</span>'
            cells.append(f"<td>{cell}</td>")
        rows.append(
            f"<tr><td>{html.escape(_name(task))}</td><td>{figures['samples']}</td>{''.join(cells)}"
            f"<td>{len(task.errors)}</td></tr>"
        )
    table = f"<table><tr><th>task</th><th>samples</th>{head}<th>errors</th></tr>{''.join(rows)}</table>"
    return f'<div class="scroll">{table}</div>'


def _metrics_list() -> str:
    """One line per figure: what it measures, and which way is better."""
    items = "".join(
        f"<li><b>{html.escape(label)} {arrow}</b> {html.escape(line)}</li>"
        for _, label, arrow, line in METRICS
    )
    return f'<ul class="metrics" data-testid="metrics">{items}</ul>'


def _published_table() -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in FDB_COLUMNS)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in FDB_V1_PUBLISHED
    )
    return f'<div class="scroll"><table data-testid="published"><tr>{head}</tr>{rows}</table></div>'


def audio_names(task: TaskResult, result: SampleResult) -> tuple[str, str]:
    """Where a sample's input and output sit beside the page: audio/{task}-{id}-input.wav and -output.wav."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{task.kind or task.task}-{result.sample.id}")
    return f"{AUDIO_DIR}/{stem}-input.wav", f"{AUDIO_DIR}/{stem}-output.wav"


def _players(task: TaskResult, result: SampleResult) -> str:
    heard, said = (html.escape(name) for name in audio_names(task, result))
    return (
        f'<div class="audio"><label>user (input.wav)<audio controls preload="metadata" src="{heard}"></audio>'
        f'</label><label>assistant (output.wav)<audio controls preload="metadata" src="{said}"></audio>'
        "</label></div>"
    )


def _sample_section(task: TaskResult, result: SampleResult) -> str:
    figures = result.as_json()
    shown = [f"{label} {_cell(figures[key])}" for key, label in SAMPLE_FIGURES if figures[key] is not None]
    stops = [_cell(o.stop_latency_s) if not o.held_floor else "held" for o in result.overlaps]
    if stops:
        shown.append("stops " + ", ".join(stops))
    svg, left_out = timeline_svg(result)
    if left_out:
        shown.append(f"{left_out} word{'s' if left_out != 1 else ''} too close together to label")
    note = f'<p class="note">{html.escape(result.note)}</p>' if result.note else ""
    title = html.escape(f"{_name(task)} / {result.sample.id}")
    chart = base64.b64encode(svg).decode("ascii")
    return (
        f'<div class="sample"><h3>{title}</h3><p>{" · ".join(shown)}</p>{note}{_players(task, result)}'
        f'<div class="chart"><img alt="timeline of {title}" src="data:image/svg+xml;base64,{chart}"></div></div>'
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
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<ul class="meta">{meta_rows}</ul>
<h2>This run</h2>
{_summary_table(tasks)}
{_metrics_list()}
<p class="note">The interruption task's relevance score is FDB's GPT judge, which needs an external API: not
computed here.</p>
<h2>Published Full-Duplex-Bench v1</h2>
{_published_table()}
<p class="note">{html.escape(FDB_SOURCE)}</p>
{errors_html}
<h2>Samples</h2>
{samples}
</body></html>
"""


def write_report(directory: Path, tasks: Sequence[TaskResult], title: str, meta: dict[str, str]) -> Path:
    """Write DIR/index.html, with each sample's input.wav and output.wav copied beside it (DIR/audio/)
    for its players; returns the page's path."""
    (directory / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    for task in tasks:
        for result in task.results:
            sources = (result.sample.input_wav, result.sample.output_wav)
            for source, name in zip(sources, audio_names(task, result), strict=True):
                shutil.copyfile(source, directory / name)
    path = directory / REPORT_FILE
    path.write_text(render(tasks, title, meta), encoding="utf-8")
    return path
