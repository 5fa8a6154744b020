"""`/v1/live/sessions`: the OpenAI Live API (full duplex) adapter on the shared connection base.

A connection takes an engine slot at the handshake (1013 when the server is full) and opens its
conversation at `session.start`, at the sample rate of the audio format the client chose (the core
resamples to and from the model's 24 kHz). JSON text frames go through `LiveConversation.receive`;
conversation events (audio frames, speech stretches, text pieces, captions, barge-ins, the end) go
through the matching `LiveConversation` methods; what comes back is sent or carried out. All
protocol logic lives in server/protocols/live/state_machine.py; this file only does I/O.
"""

from __future__ import annotations

import json
import secrets
import time

from websockets.asyncio.server import ServerConnection

from assistant.conversation import (
    AssistantSpeechStarted,
    AssistantSpeechStopped,
    AssistantText,
    AudioOut,
    BargeIn,
    Error,
    Event,
    SessionEnded,
    UserTranscriptDelta,
)
from server.connection import Connection
from server.protocols.limits import CLOSE_NORMAL
from server.protocols.live.state_machine import (
    CloseSession,
    LiveConversation,
    LiveError,
    OpenSession,
    PushAudio,
    SetPrompt,
)


class LiveConnection(Connection):
    """One /v1/live/sessions websocket <-> one conversation, through a `LiveConversation` state machine."""

    protocol_name = "live"
    outbox_scale = 2  # a frame is an audio delta and maybe a transcript delta
    not_started_code = "session_not_started"

    def __init__(self, ctx, ws: ServerConnection, slot):
        super().__init__(ctx, ws, slot)
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
            context_frames=engine.describe().get("context_frames"),
            max_session_s=ctx.config.limits.max_session_s,
            barge_in=ctx.config.barge_in,
        )

    # -- state machine outputs -> socket / session -----------------------------------------------
    def apply(self, outputs: list) -> None:
        for out in outputs:
            if isinstance(out, dict):
                self.send_event(out)
            elif isinstance(out, PushAudio):
                self.session.push_audio(out.pcm16)
            elif isinstance(out, OpenSession):
                self.open(out)
            elif isinstance(out, SetPrompt):
                self.session.update(instructions=out.instructions, voice=out.voice)
            elif isinstance(out, CloseSession):
                if self.session is not None:
                    self.session.end("client_ended")  # closes the socket when SessionEnded comes back
                else:
                    self.close(CLOSE_NORMAL, "close_requested")

    def open(self, start: OpenSession) -> None:
        options = self.ctx.default_options().replace(
            instructions=start.instructions, voice=start.voice, captions=start.captions
        )  # the state machine resolved the server's default prompt already
        try:
            self.session = self.ctx.open_session(self.slot, start.sample_rate_hz, self.emit, options)
        except ValueError as exc:
            self.apply(self.live.start_refused(str(exc)))
            return
        self.apply(self.live.started(self.session.session_id, time.time()))

    def send_event(self, event: dict) -> None:
        if event["type"] == "error":
            self.ctx.metrics.inc("errors", label=event["error"]["code"])
        self.send(json.dumps(event))

    def encode_error(self, code: str, message: str, *, server_side: bool = False) -> str:
        if code == "internal_error":
            code = "server_error"  # the OpenAI APIs' own name for it
        error_type = "server_error" if server_side else "invalid_request_error"
        return json.dumps(self.live.error(LiveError(code, message, error_type=error_type)))

    # -- conversation events (event loop thread) -------------------------------------------------
    def emit(self, event: Event) -> None:
        live = self.live
        if isinstance(event, AudioOut):
            self.apply(live.output_audio(event.pcm16, event.speaking, event.at_ms))
        elif isinstance(event, AssistantSpeechStarted):
            live.assistant_started()
        elif isinstance(event, AssistantSpeechStopped):
            live.assistant_stopped()
        elif isinstance(event, AssistantText):
            self.apply(live.output_text(event.text, event.at_ms))
        elif isinstance(event, UserTranscriptDelta):  # the deltas are the transcript: no final event
            self.apply(live.user_transcript(event.text, event.start_ms, event.end_ms))
        elif isinstance(event, BargeIn):
            self.apply(live.barge_in(event.at_ms))
        elif isinstance(event, Error):
            self.send_event(live.error(LiveError(event.code, event.message, error_type="server_error")))
        elif isinstance(event, SessionEnded):
            if event.reason != "client_disconnected":
                self.apply(live.ended(event.reason))
            self.close(CLOSE_NORMAL, event.reason[:120])
        # SessionReady, SessionUpdated, Stats, PlaybackClear and the VAD's turns have no Live counterpart:
        # there are no turns, and session.started / the barge_in notice come from the state machine.

    # -- client messages -------------------------------------------------------------------------
    def handle_message(self, message: str | bytes) -> None:
        self.apply(self.live.receive(message))
