"""What `assistant talk` shows: the conversation state fed with server events (pure), and the
two displays of it (plain time-stamped lines, or a live terminal panel)."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client.native import ServerEvent


@dataclass
class Turn:
    """One caption line: who spoke and what; for the assistant, `cut` is what was never heard."""

    role: str
    pieces: list[str] = field(default_factory=list)
    cut: str = ""

    @property
    def text(self) -> str:
        return "".join(self.pieces)

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
    the playout's stream position reaches at_ms. `lines` collects plain-text lines for output
    without a terminal.
    """

    state: str = "listening"  # listening | speaking | interrupted
    turns: list[Turn] = field(default_factory=list)
    mic_db: float = -120.0
    stats: dict[str, Any] = field(default_factory=dict)
    queued_ms: float = 0.0
    underruns: int = 0
    lines: list[str] = field(default_factory=list)
    _pending: list[tuple[float, str]] = field(default_factory=list)
    _speaking_turn: Turn | None = None
    _closing: bool = False  # the assistant stopped; its turn ends when its pending text is heard
    _last_gap: Any = None

    def on_mic(self, block: np.ndarray) -> None:
        rms = float(np.sqrt(np.mean(np.square(block, dtype=np.float64)))) if block.size else 0.0
        self.mic_db = 20 * math.log10(max(rms, 1e-6))

    def on_event(self, event: ServerEvent) -> None:
        kind = event.type
        if kind == "assistant.speech_started":
            if self.state != "speaking":
                self.lines.append("-- assistant speaking")
            self.state = "speaking"
            if self._closing:
                self._finish_turn(reveal_all=True)  # a new stretch began before the last one was heard out
            self._open_turn()
        elif kind == "assistant.text":
            self._pending.append((float(event.get("at_ms", 0.0)), str(event.get("text", ""))))
            self._open_turn()
        elif kind == "assistant.speech_stopped":
            if self.state == "speaking":
                self.state = "listening"
            # The stretch's last words are still in the playout buffer: finish once they are heard.
            self._closing = self._speaking_turn is not None
        elif kind == "barge_in":
            self.state = "interrupted"
            cut_text = str(event.get("cut_text") or "").strip()
            self._pending.clear()  # what was not yet heard is dropped with the playout buffer
            turn = self._speaking_turn or (
                self.turns[-1] if self.turns and self.turns[-1].role == "assistant" else None
            )
            if turn is not None:
                turn.cut = cut_text
                turn.drop_cut_overlap()
                if self._speaking_turn is None:
                    self._emit_turn(turn)
            self._finish_turn(reveal_all=False)
            if turn is None and cut_text:
                self.lines.append(f"assistant: [cut: {cut_text}]")
            self.lines.append("-- interrupted")
        elif kind == "playback.clear":
            self._pending.clear()  # queued audio was dropped: its text will never be heard
        elif kind == "input.speech_stopped" and self.state == "interrupted":
            self.state = "listening"
        elif kind == "user.transcript":
            text = str(event.get("text", "")).strip()
            if text:
                self.turns.append(Turn("user", [text]))
                self.lines.append(f"user: {text}")
        elif kind == "stats":
            self.stats = dict(event.data)
            gap = self.stats.get("response_gap_ms")
            if gap is not None and gap != self._last_gap:
                self._last_gap = gap
                self.lines.append(f"-- latency: {self.latency_text()}")
        elif kind == "error":
            self.lines.append(f"-- server error {event.get('code')}: {event.get('message')}")
        elif kind == "session.image.updated":
            image = event.get("image")
            shown = f"a {image['width']} x {image['height']} image" if image else "no image"
            self.lines.append(f"-- the assistant sees {shown}")
        elif kind == "session.ended":
            self._finish_turn(reveal_all=True)
            self.lines.append(f"-- session ended ({event.get('reason', 'unknown')})")

    def on_played(self, stream_position_ms: float) -> None:
        """Reveal assistant text whose audio has reached the listener."""
        while self._pending and self._pending[0][0] <= stream_position_ms and self._speaking_turn is not None:
            self._speaking_turn.pieces.append(self._pending.pop(0)[1])
        if self._closing and not self._pending:
            self._finish_turn(reveal_all=False)

    def _open_turn(self) -> None:
        if self._speaking_turn is None:
            self._speaking_turn = Turn("assistant")
            self.turns.append(self._speaking_turn)

    def _finish_turn(self, reveal_all: bool) -> None:
        turn = self._speaking_turn
        self._closing = False
        if turn is None:
            return
        if reveal_all:
            turn.pieces.extend(text for _, text in self._pending)
        self._pending.clear()
        self._speaking_turn = None
        self._emit_turn(turn)

    def _emit_turn(self, turn: Turn) -> None:
        text = turn.text.strip()
        cut = f" [cut: {turn.cut}]" if turn.cut else ""
        if text or cut:
            self.lines.append(f"assistant: {text}{cut}")

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
    """A rich Live panel: state, mic level, latency and the last captions, redrawn ~10 times a second."""

    STATE_STYLE = {"listening": "green", "speaking": "cyan", "interrupted": "bold red"}

    def __init__(self, title: str):
        from rich.console import Console
        from rich.live import Live

        self.title = title
        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=10, transient=False)
        self._ending: list[str] = []  # how the session ended, kept for the summary under the panel
        self.live.start()

    def say(self, line: str) -> None:
        self.live.console.print(line, highlight=False, markup=False)

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
            if turn.cut:
                body.append(f" {turn.cut}", style="strike red")
            body.append("\n")
        body.append(header)
        return Panel(body, title=self.title, subtitle="Ctrl-C to end")

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
