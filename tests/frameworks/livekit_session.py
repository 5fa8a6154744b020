"""LiveKit Agents' own conversation loop (`AgentSession` with an `Agent`) on a realtime model, with a
file for its microphone and a virtual speaker that plays in real time, as a room's would: what
LiveKit does on a barge-in (clear the speaker, cancel and truncate the reply) it does here.
Errors count what the session emits (`error` events) and what LiveKit logs at ERROR."""

from __future__ import annotations

import asyncio
import logging
import time
from importlib.metadata import version

from driver import CHUNK_MS, RATE_HZ, Clock, Report, arguments, timeline
from livekit import rtc
from livekit.agents import Agent, AgentSession
from livekit.agents.voice import io

SAMPLES = RATE_HZ * CHUNK_MS // 1000


class FileMicrophone(io.AudioInput):
    """The timeline in CHUNK_MS frames at the wall clock's pace, then silence."""

    def __init__(self, pcm16: bytes, clock: Clock):
        super().__init__(label="file")
        self.pcm16, self.clock, self.n = pcm16, clock, 0

    async def __anext__(self) -> rtc.AudioFrame:
        await asyncio.sleep(max(0.0, self.n * CHUNK_MS / 1000 - self.clock.now()))
        chunk = self.pcm16[self.n * SAMPLES * 2 : (self.n + 1) * SAMPLES * 2].ljust(SAMPLES * 2, b"\0")
        self.n += 1
        return rtc.AudioFrame(chunk, RATE_HZ, 1, SAMPLES)


class VirtualSpeaker(io.AudioOutput):
    """Plays what it is given in real time; a clear_buffer (a barge-in) stops it where it is."""

    def __init__(self, report: Report, clock: Clock):
        super().__init__(
            label="speaker", capabilities=io.AudioOutputCapabilities(pause=False), sample_rate=RATE_HZ
        )
        self.report, self.clock = report, clock
        self.started: float | None = None
        self.pushed_s = 0.0
        self.done: asyncio.TimerHandle | None = None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self.started is None:
            self.started, self.pushed_s = time.monotonic(), 0.0
            self.on_playback_started(created_at=time.time())
        self.pushed_s += frame.duration
        self.report.audio(self.clock.now(), frame.duration * 1000)

    def flush(self) -> None:
        super().flush()
        if self.started is not None:
            left = max(0.0, self.pushed_s - (time.monotonic() - self.started))
            self.done = asyncio.get_running_loop().call_later(left, self._finish, False)

    def clear_buffer(self) -> None:
        if self.started is not None:
            self.report.interruptions_s.append(self.clock.now())
            if self.done is not None:
                self.done.cancel()
            self._finish(True)

    def _finish(self, interrupted: bool) -> None:
        if self.started is None:
            return
        played = min(self.pushed_s, time.monotonic() - self.started)
        self.started = None
        self.on_playback_finished(playback_position=played, interrupted=interrupted)


class ErrorLog(logging.Handler):
    def __init__(self, report: Report):
        super().__init__(logging.ERROR)
        self.report = report

    def emit(self, record: logging.LogRecord) -> None:
        self.report.errors.append(f"log {record.name}: {record.getMessage()}")


async def converse(framework: str, llm, path: str) -> None:
    """One conversation along the timeline through AgentSession(llm=llm); writes the report."""
    args = arguments()
    report = Report(framework, version("livekit-agents"))
    pcm16, report.clips_s = timeline()
    logging.getLogger("livekit").addHandler(ErrorLog(report))
    clock = Clock()
    session = AgentSession(llm=llm)
    session.input.audio = FileMicrophone(pcm16, clock)
    session.output.audio = VirtualSpeaker(report, clock)

    @session.on("error")
    def _error(ev) -> None:
        report.errors.append(f"session error: {ev.error!r}")

    @session.on("conversation_item_added")
    def _item(ev) -> None:
        if getattr(ev.item, "role", None) == "assistant":
            report.transcript += ev.item.text_content or ""

    @session.on("user_input_transcribed")
    def _heard(ev) -> None:
        if ev.is_final:
            report.user_transcripts.append(ev.transcript)

    await session.start(Agent(instructions="You are a helpful voice assistant. Be brief."), record=False)
    report.connected = True
    await asyncio.sleep(len(pcm16) / (RATE_HZ * 2) + 1.0 - clock.now())
    await session.aclose()
    report.write(args.out)
