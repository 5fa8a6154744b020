"""`/v1/realtime`: the OpenAI Realtime API (GA) adapter on the shared connection base.

Per connection it opens a conversation at 24 kHz (`session.created` goes out once its engine slot is
open; the client's events wait until then) and moves data both ways: JSON text frames ->
`RealtimeConversation.receive`; what the conversation returns -> `RealtimeConversation.
conversation_event`; what the state machine returns (server events, actions on the conversation)
is carried out here, after the call. All protocol logic lives in
server/protocols/realtime/state_machine.py; this file only does I/O and pacing.
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
from urllib.parse import parse_qs, urlsplit

from assistant.conversation import AudioOut, Event, SessionEnded, SessionReady
from audio.frames import FRAME_MS, SAMPLE_RATE_HZ
from server.connection import Connection, Transport
from server.images import ImageInput
from server.protocols.limits import CLOSE_NORMAL, MAX_MESSAGE_BYTES
from server.protocols.realtime.client_events import BYTES_PER_MS, RealtimeError
from server.protocols.realtime.records import (
    CheckImage,
    ConfigureInput,
    HoldUntilUserStops,
    PushAudio,
    RealtimeOutput,
    RemoveImage,
    SendEvent,
    SetPrompt,
    SetSilenced,
)
from server.protocols.realtime.state_machine import RealtimeConversation

_FRAME_BYTES = FRAME_MS * BYTES_PER_MS


def requested_model(ws: Transport) -> str | None:
    """The `model` query parameter the client connected with (the SDK always sends one)."""
    query = urlsplit(ws.path).query
    return (parse_qs(query).get("model") or [None])[0]


class RealtimeConnection(Connection):
    """One /v1/realtime websocket <-> one conversation, through a `RealtimeConversation` state machine."""

    protocol_name = "realtime"
    outbox_scale = 4  # a Realtime frame is several messages (audio delta, transcript delta, response events)

    def __init__(self, ctx, ws: Transport):
        super().__init__(ctx, ws)
        self.paced: collections.deque[bytes] = collections.deque()  # item audio fed at real-time speed
        self.paced_bytes = 0  # what `paced` holds, kept as it changes (read on every client event)
        self.feeder: asyncio.Task | None = None
        self.images: ImageInput | None = None  # once the session has its slot
        # The core detects barge-ins at the user's onset (the Realtime API interrupts on speech_started)
        # and holds the engine after one only when the state machine says it interrupted a response
        # (`interrupt_response`, per response): so the core's policy is "model", report and let decide.
        options = ctx.default_options().replace(barge_in="model", min_interrupt_ms=0)
        if self.open_session(SAMPLE_RATE_HZ, options) is None:  # the server filled up since the upgrade
            return  # the connection closes with 1013
        model = requested_model(ws) or ctx.engine.model_name or ctx.engine.name
        takes_prompts = ctx.engine.takes_prompts
        # The protocol's state; self.session is the conversation's.
        self.realtime = RealtimeConversation(
            session_id=self.session.session_id,
            model=model,
            voice=(options.voice or ctx.voices()["default"])
            if takes_prompts
            else ctx.engine.model_name or ctx.engine.name,
            takes_prompts=takes_prompts,
            instructions=options.instructions or "",
            check_prompt=ctx.check_prompt,
            check_prompt_change=self.session.check_prompt_change,
            id_prefix=secrets.token_hex(4),
            captions_model=ctx.captions_model,
            threshold_applies=ctx.config.vad.backend == "silero",
        )
        self.images = ImageInput(
            self.slot,
            accepted=lambda check, _: self.apply(self.realtime.image_accepted(check)),
            refused=lambda check, error: self.apply(self.realtime.image_refused(check, error)),
        )

    # -- state machine outputs -> socket / conversation -----------------------------------------
    def apply(self, outputs: list[RealtimeOutput]) -> None:
        for out in outputs:
            if isinstance(out, SendEvent):
                self.send_event(out.event)
            elif isinstance(out, PushAudio):
                self.push_audio(out.pcm16, out.paced)
            elif isinstance(out, SetSilenced):
                self.apply_events(self.session.hold(out.silent))
            elif isinstance(out, HoldUntilUserStops):
                self.apply_events(self.session.hold_until_user_stops())
            elif isinstance(out, ConfigureInput):
                self.configure(out)
            elif isinstance(out, SetPrompt):
                self.apply_events(self.session.update(instructions=out.instructions, voice=out.voice))
            elif isinstance(out, CheckImage):
                self.images.show(out.image_url, tag=out)
            elif isinstance(out, RemoveImage):
                self.images.remove()

    def send_event(self, event: dict) -> None:
        if event["type"] == "error":
            self.ctx.metrics.inc("errors", label=event["error"]["code"])
        self.send(json.dumps(event))

    def encode_error(self, code: str, message: str, *, server_side: bool = False) -> str:
        error_type = "server_error" if server_side else "invalid_request_error"
        if code == "internal_error":
            code = "server_error"  # the Realtime API's own name for it
        return json.dumps(self.realtime.error(RealtimeError(code, message, error_type=error_type)))

    def configure(self, cfg: ConfigureInput) -> None:
        changes: dict = {"captions": cfg.captions}
        td = cfg.turn_detection
        if td is not None:
            changes["vad"] = {
                "threshold": td.threshold,
                "min_silence_ms": td.silence_duration_ms,
                "prefix_padding_ms": td.prefix_padding_ms,
            }
        self.apply_events(self.session.update(**changes))

    def push_audio(self, pcm16: bytes, paced: bool) -> None:
        if not paced and not self.paced:
            self.apply_events(self.session.push_audio(pcm16))
            return
        # Behind paced item audio, live audio waits its turn so the model hears everything in order.
        for i in range(0, len(pcm16), _FRAME_BYTES):
            self.paced.append(pcm16[i : i + _FRAME_BYTES])
        self.paced_bytes += len(pcm16)
        if self.feeder is None or self.feeder.done():
            self.feeder = asyncio.create_task(self._feed())

    async def _feed(self) -> None:
        # The session keeps only a few frames of backlog, so item audio goes in at the frame rate.
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while self.paced and not self.session.ended:
            chunk = self.paced.popleft()
            self.paced_bytes -= len(chunk)
            self.apply_events(self.session.push_audio(chunk))
            next_at += FRAME_MS / 1000
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    # -- conversation events -------------------------------------------------------------------
    def conversation_event(self, event: Event) -> None:
        if isinstance(event, SessionReady):  # the engine slot is open: session.created
            self.apply(self.realtime.start())
            return
        self.apply(self.realtime.conversation_event(event))
        if isinstance(event, AudioOut):
            self.images.on_frame()  # after this frame's events: the next frame is the first it changes
        if isinstance(event, SessionEnded):
            self.close(CLOSE_NORMAL, event.reason[:120])

    # -- client messages -------------------------------------------------------------------------
    def handle_message(self, message: str | bytes) -> None:
        self.realtime.audio_backlog_ms = self.paced_bytes / BYTES_PER_MS
        self.apply(self.realtime.receive(message))

    def refuse_oversized(self, message: str | bytes, size: int) -> None:
        head = message[:1000]
        if isinstance(head, str) and ('"input_image"' in head or '"data:image/' in head):
            self.send_error(
                "image_too_large",
                f"an event of {size} bytes was dropped unread; an event is at most {MAX_MESSAGE_BYTES} "
                "bytes (send the image at 448 x 448, all the model sees)",
            )
        else:
            super().refuse_oversized(message, size)

    def finish(self) -> None:
        if self.images is not None:
            self.images.close()
        if self.feeder is not None:
            self.feeder.cancel()
