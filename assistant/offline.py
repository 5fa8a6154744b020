"""Conversations without a wall clock: a recording of the user in, the assistant's side out.

`run_offline` is what `assistant respond` (and any evaluation of recorded audio) runs: the same
conversation core and the same frame loop as the server, stepped once per 80 ms frame of the
recording in this thread, with frame time as the clock. Output frame i is what the assistant
said while hearing input frame i.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from assistant.conversation import (
    AssistantText,
    AudioOut,
    Conversation,
    ConversationLimits,
    ConversationOptions,
    Event,
)
from assistant.engine import Engine
from assistant.scheduler import OfflineClock, Scheduler
from audio.frames import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE_HZ


@dataclass
class OfflineResult:
    """The assistant's side of one offline conversation."""

    user: np.ndarray  # float32 (n_frames * 1920,) at 24 kHz: the input as the engine heard it
    assistant: np.ndarray  # float32 (n_frames * 1920,) at 24 kHz, sample-aligned with `user`
    events: list[Event] = field(default_factory=list)  # every conversation event but audio, in order

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, AssistantText)).strip()


def frames_for(user: np.ndarray, tail_seconds: float = 0.0) -> np.ndarray:
    """Zero-pad 24 kHz audio to whole frames, append the tail of silence: float32 (n_frames, 1920)."""
    n_frames = math.ceil(user.shape[0] / FRAME_SAMPLES) + math.ceil(
        tail_seconds * SAMPLE_RATE_HZ / FRAME_SAMPLES
    )
    padded = np.zeros(n_frames * FRAME_SAMPLES, dtype=np.float32)
    padded[: user.shape[0]] = user
    return padded.reshape(n_frames, FRAME_SAMPLES)


def run_offline(
    engine: Engine,
    user: np.ndarray,
    *,
    options: ConversationOptions | None = None,
    tail_seconds: float = 0.0,
    on_frame: Callable[[int], None] | None = None,
    recorder=None,
) -> OfflineResult:
    """One conversation over a recording (float32 (n,) at 24 kHz) on a free slot of `engine`.

    recorder: a sink for the conversation's log and audio (`log(record)`, `write(user, assistant)`,
    `close()`), as `assistant serve --record` uses."""
    options = options or ConversationOptions()
    frames = frames_for(np.asarray(user, dtype=np.float32), tail_seconds)
    clock = OfflineClock(FRAME_MS / 1000.0)
    scheduler = Scheduler(engine, clock=clock, grace_ms=0.0)
    slot = scheduler.reserve()
    if slot is None:
        raise RuntimeError("the engine has no free slot")
    assistant = np.zeros_like(frames)
    events: list[Event] = []
    heard = 0

    def emit(event: Event) -> None:
        nonlocal heard
        if isinstance(event, AudioOut):
            assistant[heard] = event.pcm
            heard += 1
        else:
            events.append(event)

    conversation = Conversation(
        "offline",
        SAMPLE_RATE_HZ,
        emit,
        options=options,
        limits=ConversationLimits(idle_timeout_s=None, max_session_s=None),
        slot=slot,
        recorder=recorder,
        clock=clock,
        input_clock=True,
    )
    slot.attach(conversation, options.slot_options())
    try:
        scheduler.apply_slot_changes(raise_errors=True)  # bad sampling options fail here, not silently
    except Exception:
        slot.release()
        scheduler.shutdown()
        raise
    conversation.start()
    try:
        for i, frame in enumerate(frames):
            clock.advance()  # the frame is complete at the end of its 80 ms
            conversation.push_samples(frame)
            scheduler.step_now()
            if on_frame is not None:
                on_frame(i)
            if conversation.ended:
                raise RuntimeError(f"the conversation stopped at frame {i}: {conversation.ended}")
    finally:
        conversation.end("input_ended")  # no-op when it already ended
        scheduler.apply_slot_changes()
        scheduler.shutdown()
    return OfflineResult(frames.reshape(-1), assistant.reshape(-1), events)
