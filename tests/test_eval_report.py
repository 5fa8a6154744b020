"""The report's timeline as drawn (assistant/eval/timeline.py): the legend above the data, word
labels that never overlap or leave the axes, bars that end inside them, and words left out only
when there is truly no room."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from assistant.eval.dataset import TASKS, Mark, Sample
from assistant.eval.results import SampleResult
from assistant.eval.score import Overlap, Word
from assistant.eval.timeline import timeline_figure

REPLY = "Sure, happy to help. I am the scripted assistant, and I am listening to every word you say.".split()


def result_with(words: list[Word], duration_s: float = 6.0, assistant_to_s: float = 6.0) -> SampleResult:
    sample = Sample(
        id="0",
        task=TASKS["user_interruption"],
        folder=Path("/nowhere"),
        out_dir=Path("/nowhere"),
        duration_s=duration_s,
        event_s=3.0,
        marks=(Mark("interruption", 2.5, 3.0),),
    )
    return SampleResult(
        sample,
        words,
        user_segments=[(0.4, 2.2), (2.5, 3.0)],
        assistant_segments=[(2.4, 2.7), (3.3, assistant_to_s)],
        overlaps=[Overlap(2.5, 2.7, False)],
    )


def drawn(result: SampleResult):
    fig, left_out = timeline_figure(result)
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    labels = [t for t in ax.texts if t.get_gid() == "word"]
    return (
        ax,
        ax.get_window_extent(renderer),
        [t.get_window_extent(renderer) for t in labels],
        labels,
        left_out,
    )


@pytest.mark.parametrize("seconds_per_word", [0.3, 0.2, 0.04], ids=["speech", "fast", "crowded"])
def test_word_labels_never_overlap_or_leave_the_axes(seconds_per_word):
    words = [
        Word(w, 3.3 + i * seconds_per_word, 3.3 + (i + 0.8) * seconds_per_word) for i, w in enumerate(REPLY)
    ]
    ax, axes_box, boxes, labels, left_out = drawn(result_with(words))
    assert len(labels) + left_out == len(REPLY)
    for i, a in enumerate(boxes):
        assert axes_box.x0 <= a.x0 and a.x1 <= axes_box.x1 and axes_box.y0 <= a.y0, labels[i].get_text()
        for j in range(i + 1, len(boxes)):
            assert not a.overlaps(boxes[j]), (labels[i].get_text(), labels[j].get_text())
    if seconds_per_word >= 0.3:
        assert left_out == 0, "speech at a talking pace (about 3 words a second) is labelled whole"
    elif seconds_per_word >= 0.2:
        assert left_out <= len(REPLY) // 10, "fast speech loses a word here and there"
    else:
        assert left_out > 0, "words with no room are left out, not drawn over each other"


def test_the_legend_sits_above_the_data_and_the_bars_end_inside_the_axes():
    words = [Word(w, 3.3 + i * 0.3, 3.5 + i * 0.3) for i, w in enumerate(REPLY)]
    # The assistant talks to the very end of the input, and its last word runs past it.
    ax, axes_box, _, _, _ = drawn(result_with(words, duration_s=6.0, assistant_to_s=6.0))
    legend_box = ax.get_legend().get_window_extent(ax.figure.canvas.get_renderer())
    assert legend_box.y0 >= axes_box.y1, "the legend never covers the data"
    right = ax.get_xlim()[1]
    assert right > 6.0 and right > words[-1].end, "the last bar and word end inside the frame"
