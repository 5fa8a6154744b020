"""Helpers for the OpenAI Live API tests: an inbox that validates every server event against the
official SDK's models as it arrives, and the benchmark's real-time microphone (bench/live.py).

    inbox = LiveInbox(conn.recv_bytes)            # the SDK's raw receive, or a websocket's recv
    mic = Mic(lambda b64: conn.session.input_audio.append(audio=b64), rate_hz=24000)
    start = mic.say(pcm16)                         # stream position of the clip's first sample
    event = await inbox.next("session.output_audio.delta")
    mic.sent_time_of(start + n)                    # when sample n of the clip went out
"""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
import pydantic
from audio_utils import speech_dir
from openai.types.live import ServerEvent

from bench.live import Mic, load_clip, voiced_span

__all__ = ["LiveInbox", "Mic", "audio_of", "load_pcm16", "voiced_span"]
SERVER_EVENT = pydantic.TypeAdapter(ServerEvent)


def load_pcm16(name: str, rate_hz: int = 24_000) -> np.ndarray:
    """tests/data/speech/<name> as int16 samples at rate_hz."""
    return load_clip(speech_dir() / name, rate_hz)


class LiveInbox:
    """Every server event received, validated by the SDK's `ServerEvent` models, with arrival times.

    `recv` is the connection's raw receive (the SDK's `recv_bytes`, or a websocket's `recv`); a
    message that does not validate fails the test at once.
    """

    def __init__(self, recv):
        self.recv = recv
        self.events: list = []
        self.times: list[float] = []
        self._returned: set[int] = set()

    async def _pull(self, timeout: float) -> None:
        raw = await asyncio.wait_for(self.recv(), timeout)
        self.events.append(SERVER_EVENT.validate_json(raw))
        self.times.append(time.monotonic())

    async def next(self, *types: str, timeout: float = 15.0):
        """The first event of one of `types` not returned yet (in arrival order), waiting for it if needed."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.type in types and i not in self._returned:
                    self._returned.add(i)
                    return event
            try:
                await self._pull(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                got = [e.type for e in self.events[-30:]]
                raise AssertionError(f"no {types} within {timeout} s; last events: {got}") from None

    async def drain(self, seconds: float) -> None:
        """Receive whatever comes for `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                await self._pull(left)
            except TimeoutError:
                return

    def of(self, type_: str, after: float = 0.0) -> list:
        return [e for e, t in zip(self.events, self.times, strict=True) if e.type == type_ and t >= after]

    def time_of(self, event) -> float:
        return self.times[next(i for i, e in enumerate(self.events) if e is event)]


def audio_of(deltas: list) -> bytes:
    return b"".join(base64.b64decode(d.delta) for d in deltas)
