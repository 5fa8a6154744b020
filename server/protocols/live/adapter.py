"""`/v1/live/sessions`: the OpenAI Live API (full duplex) adapter on the shared connection base.

A connection is refused at the handshake when the server is full (1013), and takes an engine slot
and opens its conversation at `session.start` (`session.started` goes out once the engine slot is
open; the client's events wait until then), at the sample rate of the audio format the client chose (the core
resamples to and from the model's 24 kHz). JSON text frames go through `LiveConversation.receive`,
what the conversation returns through `LiveConversation.conversation_event`; what comes back is
sent or carried out, after the call. All protocol logic lives in
server/protocols/live/state_machine.py; this file only does I/O.
"""

from __future__ import annotations

import json
import secrets
import time

from assistant.conversation import Event, SessionEnded, SessionReady
from server.connection import Connection, Transport
from server.protocols.limits import CLOSE_NORMAL
from server.protocols.live.client_events import LiveError
from server.protocols.live.state_machine import CloseSession, LiveConversation, LiveOutput, OpenSession
from server.protocols.realtime.records import PushAudio, SendEvent, SetPrompt


class LiveConnection(Connection):
    """One /v1/live/sessions websocket <-> one conversation, through a `LiveConversation` state machine."""

    protocol_name = "live"
    outbox_scale = 2  # a frame is an audio delta and maybe a transcript delta
    not_started_code = "session_not_started"

    def __init__(self, ctx, ws: Transport):
        super().__init__(ctx, ws)
        engine = ctx.engine
        name = engine.model_name or engine.name
        self.live = LiveConversation(
            id_prefix=secrets.token_hex(4),
            engine_name=name,
            default_voice=ctx.voices()["default"] if engine.takes_prompts else None,
            takes_prompts=engine.takes_prompts,
            check_prompt=ctx.check_prompt,  # a client names the model's voices, never a file
            default_instructions=ctx.config.instructions or "",
            captions=ctx.captions_model is not None,
            context_fill=self.context_fill,
            max_session_s=ctx.config.limits.max_session_s,
            barge_in=ctx.config.barge_in,
            check_prompt_change=self.check_prompt_change,
        )

    def context_fill(self) -> float | None:
        """How full the model's context is for this session (the engine's count, prompt included)."""
        return self.slot.context_fill() if self.slot is not None else None

    def check_prompt_change(self) -> None:
        if self.session is not None:  # before session.start the prompt is set, not changed
            self.session.check_prompt_change()

    # -- state machine outputs -> socket / session -----------------------------------------------
    def apply(self, outputs: list[LiveOutput]) -> None:
        for out in outputs:
            if isinstance(out, SendEvent):
                self.send_event(out.event)
            elif isinstance(out, PushAudio):
                self.apply_events(self.session.push_audio(out.pcm16))
            elif isinstance(out, OpenSession):
                self.open(out)
            elif isinstance(out, SetPrompt):
                self.apply_events(self.session.update(instructions=out.instructions, voice=out.voice))
            elif isinstance(out, CloseSession):
                if self.session is not None:
                    self.apply_events(self.session.end("client_ended"))  # SessionEnded closes the socket
                else:
                    self.close(CLOSE_NORMAL, "close_requested")

    def open(self, start: OpenSession) -> None:
        options = self.ctx.default_options().replace(
            instructions=start.instructions, voice=start.voice, captions=start.captions
        )  # the state machine resolved the server's default prompt already
        try:
            session = self.open_session(start.sample_rate_hz, options)
        except ValueError as exc:
            self.apply(self.live.start_refused(str(exc)))
            return
        if session is None:  # the server filled up meanwhile: the connection closes with 1013
            return
        # session.started goes out from the frame loop once the engine slot is open

    def send_event(self, event: dict) -> None:
        if event["type"] == "error":
            self.ctx.metrics.inc("errors", label=event["error"]["code"])
        self.send(json.dumps(event))

    def encode_error(self, code: str, message: str, *, server_side: bool = False) -> str:
        if code == "internal_error":
            code = "server_error"  # the OpenAI APIs' own name for it
        error_type = "server_error" if server_side else "invalid_request_error"
        return json.dumps(self.live.error(LiveError(code, message, error_type=error_type)))

    # -- conversation events -------------------------------------------------------------------
    def conversation_event(self, event: Event) -> None:
        if isinstance(event, SessionReady):  # the engine slot is open: session.started
            self.apply(self.live.started(self.session.session_id, time.time()))
            return
        self.apply(self.live.conversation_event(event))
        if isinstance(event, SessionEnded):
            self.close(CLOSE_NORMAL, event.reason[:120])

    # -- client messages -------------------------------------------------------------------------
    def handle_message(self, message: str | bytes) -> None:
        self.apply(self.live.receive(message))
