"""One sample's timeline for the report: an SVG that scales with the page.

Rows: the user's speech and the assistant's (Silero VAD), the assistant's words (ASR) under its
row, the task's marks (pause, end of turn, interruption, overlap event) and each overlap's stop.
The legend sits above the axes, never on the data; the x axis runs to the end of whatever is
drawn, so no bar or word runs into the frame; word labels go in up to WORD_ROWS rows, each word in
the first row where it does not touch its neighbour, and a word with no room is left out (counted).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from assistant.eval.results import SampleResult
from assistant.eval.score import Word

FIGURE_IN = (8.0, 2.4)  # width, height: drawn at 100% of the page, never narrower than the CSS min-width
AXES_LEFT, AXES_RIGHT = 0.12, 0.98  # of the figure's width: room for the row labels on the left
AXES_WIDTH_IN = FIGURE_IN[0] * (AXES_RIGHT - AXES_LEFT)  # what the seconds are spread over
FONT_PT = 9.0
LABEL_SLACK = 1.15  # a browser drawing the SVG's text with another font may set it a little wider
WORD_ROWS = 3
RIGHT_MARGIN = 0.02  # of the span, so the last bar ends visibly inside the axes
_USER, _ASSISTANT, _MARK, _STOP = "#4c78a8", "#f58518", "#54a24b", "#e45756"


@dataclass(frozen=True)
class PlacedWord:
    word: Word
    row: int  # 0: just under the assistant's row


def x_span(result: SampleResult) -> float:
    """Where the x axis ends: after the input, both sides' speech and every word's label, plus a margin."""
    ends = [result.sample.duration_s]
    ends += [end for _, end in result.assistant_segments] + [end for _, end in result.user_segments]
    ends += [w.end for w in result.words if w.end is not None]
    span = max(ends) * (1 + RIGHT_MARGIN)
    for _ in range(3):  # a label's width in seconds grows with the span: settle on one that holds them all
        labels = [w.start + label_width_s(w.text, span) for w in result.words if w.start is not None]
        span = max([span, *labels])
    return span


def label_width_s(text: str, span_s: float) -> float:
    """How many seconds of the axis a word's label (and a space after it) covers at FONT_PT."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    width_pt, _, _ = TextToPath().get_text_width_height_descent(
        f"{text} ", FontProperties(size=FONT_PT), False
    )
    return width_pt * LABEL_SLACK / 72 * span_s / AXES_WIDTH_IN


def place_words(words: list[Word], span_s: float) -> tuple[list[PlacedWord], int]:
    """Words in rows where no two labels overlap: (the placed words, how many were left out)."""
    row_free_at = [float("-inf")] * WORD_ROWS
    placed, left_out = [], 0
    for word in sorted((w for w in words if w.start is not None), key=lambda w: w.start):
        row = next((r for r in range(WORD_ROWS) if row_free_at[r] <= word.start), None)
        if row is None:
            left_out += 1
            continue
        row_free_at[row] = word.start + label_width_s(word.text, span_s)
        placed.append(PlacedWord(word, row))
    return placed, left_out


def timeline_figure(result: SampleResult):
    """The matplotlib Figure (no pyplot: no global state, no display) and how many words were left out."""
    from matplotlib.figure import Figure

    sample = result.sample
    span_s = x_span(result)
    placed, left_out = place_words(result.words, span_s)
    fig = Figure(figsize=FIGURE_IN)
    fig.subplots_adjust(left=AXES_LEFT, right=AXES_RIGHT)
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
    for p in placed:
        y = -0.45 - 0.3 * p.row
        ax.text(p.word.start, y, p.word.text, fontsize=FONT_PT, va="top", ha="left", gid="word")
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
    ax.set_xlim(0, span_s)
    rows = 1 + max((p.row for p in placed), default=0)
    ax.set_ylim(-0.45 - 0.3 * rows - 0.05, 1.45)
    ax.set_yticks([0, 1], ["assistant", "user"], fontsize=FONT_PT + 1)
    ax.tick_params(axis="x", labelsize=FONT_PT)
    ax.set_xlabel("seconds", fontsize=FONT_PT)
    ax.legend(
        loc="lower left",
        bbox_to_anchor=(0, 1.02),
        ncol=4,
        fontsize=FONT_PT,
        frameon=False,
        borderaxespad=0,
        handlelength=1.5,
    )
    return fig, left_out


def timeline_svg(result: SampleResult) -> tuple[bytes, int]:
    """The timeline as SVG (text kept as text, so it stays sharp at any size) and the words left out."""
    import matplotlib

    fig, left_out = timeline_figure(result)
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight")
    return buffer.getvalue(), left_out
