"""Conversations without a wall clock: a recording of the user in, the assistant's side out.

`run_offline` is what `assistant respond` runs, and `run_offline_batch` what `assistant eval`
runs over many recordings at once: the same conversation core and the same frame loop as the
server, stepped once per 80 ms frame of the recording in this thread, with frame time as the
clock. Output frame i is what the assistant said while hearing input frame i.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from assistant.conversation import (
    AssistantText,
    AudioOut,
    Conversation,
    ConversationEvent,
    ConversationLimits,
    ConversationOptions,
    Event,
)
from assistant.engine import Engine
from assistant.images import PreparedImage
from assistant.scheduler import OfflineClock, Scheduler, SlotHandle
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
    images: Mapping[int, PreparedImage | None] | None = None,
) -> OfflineResult:
    """One conversation over a recording (float32 (n,) at 24 kHz) on a free slot of `engine`.

    recorder: a sink for the conversation's log and audio (`log(record)`, `write(user, assistant)`,
    `close()`), as `assistant serve --record` uses. images: frame index -> the image shown to the
    model just before that frame (None removes it); see `run_offline_batch`."""
    return run_offline_batch(
        engine,
        [user],
        options=options,
        tail_seconds=tail_seconds,
        on_frame=on_frame,
        recorders=[recorder],
        images=[images or {}],
    )[0]


@dataclass(eq=False)
class _Run:
    """One recording of a batch: its input frames, the output collected so far, its conversation."""

    frames: np.ndarray  # float32 (n_frames, 1920)
    assistant: np.ndarray  # float32 (n_frames, 1920)
    slot: SlotHandle
    events: list[Event] = field(default_factory=list)
    heard: int = 0
    conversation: Conversation | None = None
    images: Mapping[int, PreparedImage | None] = field(default_factory=dict)

    def apply(self, events: list[ConversationEvent]) -> None:
        """Carry out what the conversation returned: engine requests to the slot, the rest collected."""
        for event in events:
            self.slot.carry_out(event)
            if isinstance(event, AudioOut):
                self.assistant[self.heard] = event.pcm
                self.heard += 1
            elif isinstance(event, Event):  # no CaptionUtterance comes: there is no captioner offline
                self.events.append(event)


def run_offline_batch(
    engine: Engine,
    users: Sequence[np.ndarray],
    *,
    options: ConversationOptions | None = None,
    tail_seconds: float = 0.0,
    on_frame: Callable[[int], None] | None = None,
    recorders: Sequence | None = None,
    images: Sequence[Mapping[int, PreparedImage | None]] | None = None,
) -> list[OfflineResult]:
    """Several recordings at once, one conversation per engine slot, all in the same batched steps.

    Each conversation hears its own recording frame by frame and ends after its last frame, which
    frees its slot while the longer ones go on, so every result is the one `run_offline` would give
    it alone on a backend whose rows are independent. Faster than one at a time wherever a batched
    step costs less than its rows (a GPU). on_frame(i) is called after step i of the batch.

    images: per recording, frame index -> an image (`engine.check_image`) shown to its conversation
    just before that frame, or None to remove it. With no clock to keep it is encoded at once, so
    it counts from that frame on (not before the engine's image start frame).
    """
    if not users:
        return []
    options = options or ConversationOptions()
    recorders = list(recorders) if recorders is not None else [None] * len(users)
    images = list(images) if images is not None else [{}] * len(users)
    if len(recorders) != len(users):
        raise ValueError(f"{len(users)} recordings but {len(recorders)} recorders")
    clock = OfflineClock(FRAME_MS / 1000.0)
    scheduler = Scheduler(engine, clock=clock, grace_ms=0.0)
    slots = [scheduler.reserve() for _ in users]
    if any(slot is None for slot in slots):
        for slot in slots:
            if slot is not None:
                slot.release()
        scheduler.shutdown()
        if len(users) == 1:
            raise RuntimeError("the engine has no free slot")
        raise RuntimeError(f"{len(users)} recordings but the engine has only {engine.batch_size} slots")
    runs = []
    for k, (user, slot, recorder, shown) in enumerate(zip(users, slots, recorders, images, strict=True)):
        frames = frames_for(np.asarray(user, dtype=np.float32), tail_seconds)
        run = _Run(frames, np.zeros_like(frames), slot, images=shown)
        run.conversation = Conversation(
            "offline" if len(users) == 1 else f"offline-{k}",
            SAMPLE_RATE_HZ,
            options=options,
            limits=ConversationLimits(idle_timeout_s=None, max_session_s=None),
            recorder=recorder,
            clock=clock,
            input_clock=True,
        )
        slot.attach(run.conversation, options.slot_options(), run.apply)
        runs.append(run)
    try:
        scheduler.apply_slot_changes(raise_errors=True)  # bad sampling options fail here, not silently
        engine.finish_prompts()  # no frame clock to keep: every prompt is fed before the first frame
    except Exception:
        for slot in slots:
            slot.release()
        scheduler.shutdown()
        raise
    for run in runs:
        run.apply(run.conversation.start())
    try:
        for i in range(max(len(run.frames) for run in runs)):
            clock.advance()  # the frame is complete at the end of its 80 ms
            live = [(k, run) for k, run in enumerate(runs) if i < len(run.frames)]
            for _, run in live:
                run.apply(run.conversation.push_samples(run.frames[i]))
            _show_images(engine, scheduler, [run for _, run in live], i)
            scheduler.step_now()
            if on_frame is not None:
                on_frame(i)
            for k, run in live:
                if run.conversation.ended:
                    which = "" if len(runs) == 1 else f"recording {k}: "
                    raise RuntimeError(
                        f"{which}the conversation stopped at frame {i}: {run.conversation.ended}"
                    )
                if i == len(run.frames) - 1:
                    run.apply(run.conversation.end("input_ended"))  # frees its slot; the longer ones go on
    finally:
        for run in runs:
            run.apply(run.conversation.end("input_ended"))  # nothing when it already ended
        scheduler.apply_slot_changes()
        scheduler.shutdown()
    return [OfflineResult(run.frames.reshape(-1), run.assistant.reshape(-1), run.events) for run in runs]


def _show_images(engine: Engine, scheduler: Scheduler, runs: list[_Run], frame: int) -> None:
    """Hand the conversations the images due at `frame` and encode them now, before its step."""
    due = [run for run in runs if frame in run.images]
    for run in due:
        run.slot.set_image(run.images[frame])
    if due:
        scheduler.apply_slot_changes(raise_errors=True)
        engine.finish_prompts()
