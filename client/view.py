"""What `assistant talk` shows: the conversation state fed with server events (pure), and the
two displays of it (plain time-stamped lines, or a live terminal panel)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client.native import ServerEvent

# How long a reply's line waits for the caption of what the user said before it (captions take
# a second or two; one the server dropped must not hold the conversation's lines for ever).
CAPTION_WAIT_S = 4.0


@dataclass
class Turn:
    """One caption line: who spoke and what, and when on the session's input timeline (`at_ms`,
    which orders the turns: a user's caption arrives after the reply to it has begun). For the
    assistant, `interrupted` says the user cut it off and `cut` is the text never heard."""

    role: str
    pieces: list[str] = field(default_factory=list)
    cut: str = ""
    at_ms: float = 0.0
    interrupted: bool = False

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def line(self) -> str:
        """The turn as a plain line; an interrupted reply ends in "[cut: what was never heard]" or "[cut]"."""
        text = self.text.strip()
        if not self.interrupted:
            return f"{self.role}: {text}"
        cut = f"[cut: {self.cut}]" if self.cut else "[cut]"
        return f"{self.role}: {text} {cut}" if text else f"{self.role}: {cut}"

    def drop_cut_overlap(self) -> None:
        """Remove trailing pieces that the cut text repeats (heard in part, so the server counts them cut)."""
        cut = self.cut.strip()
        for k in range(len(self.pieces), 0, -1):
            tail = "".join(self.pieces[-k:]).strip()
            if tail and cut.startswith(tail):
                del self.pieces[-k:]
                return


@dataclass
class TalkView:
    """Conversation state for display, fed with server events; knows nothing about terminals.

    Assistant text is revealed as it is played: a piece tagged at_ms (output timeline) shows once
    the playout's stream position reaches at_ms. `turns` are in the order they began. `lines`
    collects plain-text lines for output without a terminal, in that order too: a reply's line
    waits (up to CAPTION_WAIT_S) for the caption of every utterance that ended before it began.
    """

    state: str = "listening"  # listening | speaking | interrupted | ended
    turns: list[Turn] = field(default_factory=list)
    mic_db: float = -120.0
    stats: dict[str, Any] = field(default_factory=dict)
    queued_ms: float = 0.0
    underruns: int = 0
    lines: list[str] = field(default_factory=list)
    captions: bool = False  # the session makes user captions (session.ready says)
    clock: Callable[[], float] = time.monotonic
    _pending: list[tuple[float, str]] = field(default_factory=list)
    _speaking_turn: Turn | None = None
    _closing: bool = False  # the assistant stopped; its turn ends when its pending text is heard
    _last_gap: Any = None
    # Utterances whose caption has not come yet: (end on the input timeline, when it ended by `clock`).
    _uncaptioned: list[tuple[float, float]] = field(default_factory=list)
    # Lines held back behind a reply that waits for an earlier caption: (input-timeline ms or None, line).
    _held: list[tuple[float | None, str]] = field(default_factory=list)

    def on_mic(self, block: np.ndarray) -> None:
        rms = float(np.sqrt(np.mean(np.square(block, dtype=np.float64)))) if block.size else 0.0
        self.mic_db = 20 * math.log10(max(rms, 1e-6))

    def on_event(self, event: ServerEvent) -> None:
        kind = event.type
        if kind == "session.ready":
            self.captions = bool((event.get("options") or {}).get("captions"))
        elif kind == "assistant.speech_started":
            if self.state != "speaking":
                self._say("-- assistant speaking")
            self.state = "speaking"
            if self._closing:
                self._finish_turn(reveal_all=True)  # a new stretch began before the last one was heard out
            self._open_turn(float(event.get("input_ms", event.get("at_ms", 0.0))))
        elif kind == "assistant.text":
            self._pending.append((float(event.get("at_ms", 0.0)), str(event.get("text", ""))))
            self._open_turn(float(event.get("at_ms", 0.0)))
        elif kind == "assistant.speech_stopped":
            if self.state == "speaking":
                self.state = "listening"
            # The stretch's last words are still in the playout buffer: finish once they are heard.
            self._closing = self._speaking_turn is not None
        elif kind == "barge_in":
            self._on_barge_in(str(event.get("cut_text") or "").strip())
        elif kind == "playback.clear":
            self._pending.clear()  # queued audio was dropped: its text will never be heard
        elif kind == "input.speech_stopped":
            if self.state == "interrupted":
                self.state = "listening"
            if self.captions:
                self._uncaptioned.append((float(event.get("at_ms", 0.0)), self.clock()))
        elif kind == "user.transcript":
            self._on_transcript(event)
        elif kind == "stats":
            self.stats = dict(event.data)
            gap = self.stats.get("response_gap_ms")
            if gap is not None and gap != self._last_gap:
                self._last_gap = gap
                self._say(f"-- latency: {self.latency_text()}")
        elif kind == "error":
            self._say(f"-- server error {event.get('code')}: {event.get('message')}")
        elif kind == "session.image.updated":
            image = event.get("image")
            shown = f"a {image['width']} x {image['height']} image" if image else "no image"
            self._say(f"-- the assistant sees {shown}")
        elif kind == "session.ended":
            self.state = "ended"
            self._finish_turn(reveal_all=True)
            self._uncaptioned.clear()  # no caption comes after the end
            self._say(f"-- session ended ({event.get('reason', 'unknown')})")
        self._release()

    def on_played(self, stream_position_ms: float) -> None:
        """Reveal assistant text whose audio has reached the listener."""
        while self._pending and self._pending[0][0] <= stream_position_ms and self._speaking_turn is not None:
            self._speaking_turn.pieces.append(self._pending.pop(0)[1])
        if self._closing and not self._pending:
            self._finish_turn(reveal_all=False)
        self._release()

    def _on_barge_in(self, cut_text: str) -> None:
        self.state = "interrupted"
        self._pending.clear()  # what was not yet heard is dropped with the playout buffer
        turn = self._speaking_turn or next((t for t in reversed(self.turns) if t.role == "assistant"), None)
        if turn is not None and not turn.interrupted:
            turn.interrupted = True
            turn.cut = cut_text
            turn.drop_cut_overlap()
            if self._speaking_turn is None:  # its line went out already: say it again, marked
                self._say(turn.line(), turn.at_ms)
        elif cut_text:
            orphan = Turn("assistant", cut=cut_text, interrupted=True)
            self._say(orphan.line())
        self._finish_turn(reveal_all=False)
        self._say("-- interrupted")

    def _on_transcript(self, event: ServerEvent) -> None:
        text = str(event.get("text", "")).strip()
        end_ms = float(event.get("end_ms", event.get("start_ms", 0.0)) or 0.0)
        self._uncaptioned = [u for u in self._uncaptioned if u[0] > end_ms + 1]
        if not text:
            return
        turn = Turn("user", [text], at_ms=float(event.get("start_ms", 0.0) or 0.0))
        self._insert(turn)
        # The caption goes before any held line of a reply that began after the utterance did.
        at = next((i for i, (key, _) in enumerate(self._held) if key is not None and key > turn.at_ms), None)
        if at is None:
            self._say(turn.line())
        else:
            self._held.insert(at, (turn.at_ms, turn.line()))

    def _insert(self, turn: Turn) -> None:
        """Add a turn in the order the turns began."""
        at = next((i for i, t in enumerate(self.turns) if t.at_ms > turn.at_ms), len(self.turns))
        self.turns.insert(at, turn)

    def _open_turn(self, at_ms: float) -> None:
        if self._speaking_turn is None:
            self._speaking_turn = Turn("assistant", at_ms=at_ms)
            self._insert(self._speaking_turn)

    def _finish_turn(self, reveal_all: bool) -> None:
        turn = self._speaking_turn
        self._closing = False
        if turn is None:
            return
        if reveal_all:
            turn.pieces.extend(text for _, text in self._pending)
        self._pending.clear()
        self._speaking_turn = None
        if turn.text.strip() or turn.interrupted:
            self._say(turn.line(), turn.at_ms)

    def _say(self, line: str, at_ms: float | None = None) -> None:
        """Queue a line; one of a turn (`at_ms`) waits behind captions still due before it, and
        every line waits behind one that waits."""
        self._held.append((at_ms, line))
        self._release()

    def _release(self) -> None:
        now = self.clock()  # a caption that has not come within CAPTION_WAIT_S is not waited for
        self._uncaptioned = [u for u in self._uncaptioned if now - u[1] < CAPTION_WAIT_S]
        while self._held and not self._waits(self._held[0][0]):
            self.lines.append(self._held.pop(0)[1])

    def _waits(self, at_ms: float | None) -> bool:
        """Whether a line of a turn that began at `at_ms` waits for the caption of an earlier utterance."""
        return at_ms is not None and any(end_ms <= at_ms for end_ms, _ in self._uncaptioned)

    def latency_text(self) -> str:
        parts = []
        for key, label in (
            ("response_gap_ms", "response gap"),
            ("server_overhead_ms", "server"),
            ("step_ms", "step"),
        ):
            value = self.stats.get(key)
            if value is not None:
                parts.append(f"{label} {float(value):.0f} ms")
        parts.append(f"buffer {self.queued_ms:.0f} ms")
        return ", ".join(parts)

    def take_lines(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


class PlainDisplay:
    """Plain lines with a time stamp, for logs and pipes (stdout is not a terminal)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.t0 = time.monotonic()

    def say(self, line: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.2f}s] {line}", file=self.stream, flush=True)

    def update(self, view: TalkView) -> None:
        for line in view.take_lines():
            self.say(line)

    def close(self, view: TalkView) -> None:
        self.update(view)


class LiveDisplay:
    """A rich Live panel: state, mic level, latency and the last captions, redrawn ~10 times a second.

    The session's title (server, session, devices) is printed once above the panel, in full;
    the panel's own title stays short, so a narrow terminal never cuts a URL or a path in it.
    """

    PANEL_TITLE = "assistant talk"

    STATE_STYLE = {"listening": "green", "speaking": "cyan", "interrupted": "bold red", "ended": "dim"}

    def __init__(self, title: str):
        from rich.console import Console
        from rich.live import Live

        self.title = title
        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=10, transient=False)
        self._ending: list[str] = []  # how the session ended, kept for the summary under the panel
        self.live.start()

    def say(self, line: str) -> None:
        self.live.console.print(line, highlight=False, markup=False, overflow="fold")

    def render(self, view: TalkView):
        from rich.panel import Panel
        from rich.text import Text

        level = max(0.0, min(1.0, (view.mic_db + 60) / 60))
        header = Text()
        header.append(f" {view.state.upper():<12}", style=self.STATE_STYLE.get(view.state, ""))
        header.append("mic ")
        header.append("#" * round(level * 20), style="green")
        header.append("." * (20 - round(level * 20)), style="dim")
        header.append(f" {view.mic_db:6.1f} dB\n")
        header.append(f"latency: {view.latency_text()}, underruns {view.underruns}", style="dim")
        body = Text()
        for turn in view.turns[-12:]:
            style = "bold" if turn.role == "user" else ""
            body.append(f"{turn.role:>9}: ", style="dim")
            body.append(turn.text.strip(), style=style)
            if turn.interrupted and turn.cut:  # what was never heard, struck through as on the page
                body.append(" [cut: ", style="red")
                body.append(turn.cut, style="strike red")
                body.append("]", style="red")
            elif turn.interrupted:
                body.append(" [cut]", style="red")
            body.append("\n")
        body.append(header)
        return Panel(body, title=self.PANEL_TITLE, subtitle="Ctrl-C to end")

    def update(self, view: TalkView) -> None:
        # The panel shows the same information; only the end of the session is kept for close().
        self._ending += [line for line in view.take_lines() if line.startswith("-- session ended")]
        self.live.update(self.render(view))

    def close(self, view: TalkView) -> None:
        lines = self._ending + view.take_lines()  # the end of session summary stays on screen under the panel
        self.live.update(self.render(view))
        self.live.stop()
        for line in lines:
            if line.startswith("--"):
                self.console.print(line, highlight=False, markup=False)
