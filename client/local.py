"""`assistant talk --local`: the engine in this process, behind the same interface as NativeClient.

Nothing here is a second conversation: the user's audio goes into the same conversation core
(assistant/conversation) and the same frame loop (assistant/scheduler.py) as on the server, and
the core's events are carried out as the server does (engine requests to the slot) and encoded
with the native protocol's own encoder, so the view sees exactly what a server would send. The
only difference is the clock: the frame loop ticks whenever the microphone (or file) has
completed a frame, since the sound device already runs in real time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np

from assistant.conversation import (
    Conversation,
    ConversationEvent,
    ConversationLimits,
    ConversationOptions,
    Event,
    SessionEnded,
)
from assistant.images import ImageError
from assistant.scheduler import Scheduler
from client.errors import TalkError
from client.native import ServerEvent, decode_message
from server.protocols.native.wire import encode_event, image_updated_event


class LocalConversation:
    """One conversation with an in-process engine; `send_audio`/`receive`/`end` like NativeClient."""

    def __init__(
        self,
        engine,
        sample_rate: int,
        barge_in: str = "model",
        instructions: str | None = None,
        voice: str | None = None,
    ):
        try:
            engine.check_prompt(instructions, voice)
        except ValueError as exc:
            raise TalkError(str(exc)) from exc
        self.engine = engine
        self.sample_rate = sample_rate
        self.session_id = "local"
        self.scheduler = Scheduler(engine, grace_ms=0.0, collect_garbage=True)
        self.slot = slot = self.scheduler.reserve()
        if slot is None:
            raise TalkError("the local engine has no free slot")
        self._out: asyncio.Queue[ServerEvent | np.ndarray | None] = asyncio.Queue()
        self._frame_ready = asyncio.Event()
        self.error: str | None = None  # why the frame loop stopped, if the engine failed
        options = ConversationOptions(barge_in=barge_in, instructions=instructions, voice=voice)
        self.conversation = Conversation(
            self.session_id,
            sample_rate,
            options=options,
            limits=ConversationLimits(idle_timeout_s=None, max_session_s=None),
            input_clock=True,
        )
        slot.attach(self.conversation, options.slot_options(), self._apply)
        self._apply(self.conversation.start())
        self._loop_task = asyncio.get_running_loop().create_task(self._frame_loop())

    def _apply(self, events: list[ConversationEvent]) -> None:
        """Carry out what the conversation returned: engine requests to the slot, the rest to the view."""
        for event in events:
            self.slot.carry_out(event)
            if not isinstance(event, Event):
                continue  # no CaptionUtterance comes: this conversation has no captioner
            self._out.put_nowait(decode_message(encode_event(event)))
            if isinstance(event, SessionEnded):
                # internal_error: the frame loop could not hand this conversation its frame.
                if event.reason == "internal_error":
                    self.error = "the conversation failed to take the engine's output (see the log)"
                self._out.put_nowait(None)  # nothing follows session.ended

    async def send_audio(self, pcm: np.ndarray) -> None:
        """Microphone samples: float32 (n,) in [-1, 1] at the device rate."""
        self._apply(self.conversation.push_samples(np.asarray(pcm, dtype=np.float32)))
        if self.conversation.frames_queued() >= 1:
            self._frame_ready.set()

    async def send_position(self, played_ms: float) -> None:
        self.conversation.set_played_ms(played_ms)

    async def show_image(self, data: bytes | None) -> None:
        """Show the model an image file (None: no image), checked in a worker thread; the answer
        comes as the server's would: session.image.updated once it is queued, or an error."""
        image = None
        if data is not None:
            try:
                image = await asyncio.get_running_loop().run_in_executor(None, self.slot.check_image, data)
            except ImageError as exc:
                self._out.put_nowait(ServerEvent("error", {"code": exc.code, "message": str(exc)}))
                return
        self.slot.set_image(image)
        self._out.put_nowait(decode_message(image_updated_event(image)))

    async def _frame_loop(self) -> None:
        try:
            while not self.conversation.ended:
                await self._frame_ready.wait()
                self._frame_ready.clear()
                while self.conversation.frames_queued() >= 1 and not self.conversation.ended:
                    await self.scheduler.tick()
        except Exception as exc:
            # Surface the failure to the receiver and end its stream; the conversation cannot go on.
            self.error = f"{type(exc).__name__}: {exc}"
            self._out.put_nowait(ServerEvent("error", {"code": "engine", "message": self.error}))
            self._out.put_nowait(None)
            raise

    async def receive(self) -> AsyncIterator[ServerEvent | np.ndarray]:
        while (item := await self._out.get()) is not None:
            yield item

    async def end(self, timeout: float = 2.0) -> None:
        self._apply(self.conversation.end("client_ended"))
        self._frame_ready.set()
        with contextlib.suppress(Exception):  # a failed engine was already reported as an error event
            await asyncio.wait_for(asyncio.shield(self._loop_task), timeout)
        self._loop_task.cancel()
        # A step still running in the worker thread finishes before the slot is closed.
        await asyncio.get_running_loop().run_in_executor(None, self.scheduler.shutdown)
        self.scheduler.apply_slot_changes()  # close the engine slot
        self._out.put_nowait(None)


def build_local(args: argparse.Namespace, sample_rate: int) -> LocalConversation:
    from assistant.backends import build_engine
    from assistant.engine_args import engine_kwargs

    try:
        engine = build_engine(args.backend, batch_size=1, **engine_kwargs(args))
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise TalkError(f"cannot build the {args.backend} engine: {exc}") from exc
    return LocalConversation(
        engine,
        sample_rate,
        barge_in=args.barge_in or "model",
        instructions=getattr(args, "instructions", None),
        voice=getattr(args, "voice", None),
    )
