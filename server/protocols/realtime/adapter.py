"""`/v1/realtime`: the OpenAI Realtime API (GA) adapter on the shared connection base.

Per connection it opens a conversation at 24 kHz and moves data both ways:
JSON text frames -> `RealtimeConversation.receive` -> actions on the conversation / server events out;
conversation events (audio frames, text pieces, VAD turns, captions, end) -> `RealtimeConversation`
-> events out. All protocol logic lives in server/protocols/realtime/state_machine.py; this file only does I/O
and pacing.
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection

from assistant.conversation import (
    AssistantSpeechStarted,
    AssistantSpeechStopped,
    AssistantText,
    AudioOut,
    BargeIn,
    Error,
    Event,
    InputSpeechStarted,
    InputSpeechStopped,
    SessionEnded,
    UserTranscript,
    UserTranscriptDelta,
)
from server.connection import Connection
from server.protocols.limits import CLOSE_NORMAL
from server.protocols.realtime.state_machine import (
    BYTES_PER_MS,
    FRAME_MS,
    SAMPLE_RATE_HZ,
    ConfigureInput,
    PushAudio,
    RealtimeConversation,
    RealtimeError,
    SetPrompt,
    SetSilenced,
)

_FRAME_BYTES = FRAME_MS * BYTES_PER_MS


def requested_model(ws: ServerConnection) -> str | None:
    """The `model` query parameter the client connected with (the SDK always sends one)."""
    query = urlsplit(ws.request.path).query if ws.request else ""
    return (parse_qs(query).get("model") or [None])[0]


def _end_error(reason: str) -> RealtimeError:
    code = "session_expired" if reason.startswith("max_duration") else "session_ended"
    return RealtimeError(code, f"the session is over: {reason}")


class RealtimeConnection(Connection):
    """One /v1/realtime websocket <-> one conversation, through a `RealtimeConversation` state machine."""

    protocol_name = "realtime"
    outbox_scale = 4  # a Realtime frame is several messages (audio delta, transcript delta, response events)

    def __init__(self, ctx, ws: ServerConnection, slot):
        super().__init__(ctx, ws, slot)
        self.realtime: RealtimeConversation | None = None  # the protocol state; self.session: the core's
        self.paced: collections.deque[bytes] = collections.deque()  # item audio fed at real-time speed
        self.paced_bytes = 0  # what `paced` holds, kept as it changes (read on every client event)
        self.feeder: asyncio.Task | None = None
        # The core detects barge-ins (at the user's onset: the Realtime API interrupts on speech_started);
        # the Realtime state machine owns force_silence (manual turns, the hold after an interruption),
        # so the core's own policy stays "model" and never fights it.
        options = ctx.default_options().replace(barge_in="model", min_interrupt_ms=0)
        self.session = ctx.open_session(slot, SAMPLE_RATE_HZ, self.emit, options)
        model = requested_model(ws) or ctx.engine.model_name or ctx.engine.name
        takes_prompts = ctx.engine.takes_prompts
        self.realtime = RealtimeConversation(
            session_id=self.session.session_id,
            model=model,
            voice=(options.voice or ctx.voices()["default"])
            if takes_prompts
            else ctx.engine.model_name or ctx.engine.name,
            takes_prompts=takes_prompts,
            instructions=options.instructions or "",
            check_prompt=ctx.check_prompt,
            id_prefix=secrets.token_hex(4),
            captions_model=ctx.captions_model,
            threshold_applies=ctx.config.vad.backend == "silero",
        )
        self.apply(self.realtime.start())

    # -- conversation outputs -> socket / session ------------------------------------------------
    def apply(self, outputs: list) -> None:
        for out in outputs:
            if isinstance(out, dict):
                self.send_event(out)
            elif isinstance(out, PushAudio):
                self.push_audio(out.pcm16, out.paced)
            elif isinstance(out, SetSilenced):
                self.session.force_silence(out.silent)
            elif isinstance(out, ConfigureInput):
                self.configure(out)
            elif isinstance(out, SetPrompt):
                self.session.update(instructions=out.instructions, voice=out.voice)

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
        self.session.update(**changes)

    def push_audio(self, pcm16: bytes, paced: bool) -> None:
        if not paced and not self.paced:
            self.session.push_audio(pcm16)
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
            self.session.push_audio(chunk)
            next_at += FRAME_MS / 1000
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    # -- session events (event loop thread) ------------------------------------------------------
    def emit(self, event: Event) -> None:
        realtime = self.realtime
        if realtime is None:
            return  # SessionReady during open_session: session.created is sent by Conversation.start
        if isinstance(event, AudioOut):
            self.apply(realtime.output_audio(event.pcm16, event.speaking))
        elif isinstance(event, AssistantSpeechStarted):
            self.apply(realtime.assistant_started())
        elif isinstance(event, AssistantSpeechStopped):
            self.apply(realtime.assistant_stopped())
        elif isinstance(event, BargeIn):
            self.apply(realtime.barge_in(event.at_ms))
        elif isinstance(event, AssistantText):
            self.apply(realtime.output_text(event.text))
        elif isinstance(event, InputSpeechStarted):
            self.apply(realtime.user_speech_started(event.at_ms))
        elif isinstance(event, InputSpeechStopped):
            self.apply(realtime.user_speech_stopped(event.at_ms))
        elif isinstance(event, UserTranscriptDelta):
            self.apply(realtime.user_transcript_delta(event.text, event.start_ms))
        elif isinstance(event, UserTranscript):
            self.apply(realtime.user_transcript(event.text, event.start_ms, event.end_ms))
        elif isinstance(event, Error):
            self.send_event(
                realtime.error(RealtimeError(event.code, event.message, error_type="server_error"))
            )
        elif isinstance(event, SessionEnded):
            if event.reason not in ("client_disconnected", "client_ended"):
                self.send_event(realtime.error(_end_error(event.reason)))
            self.close(CLOSE_NORMAL, event.reason[:120])
        # SessionReady/SessionUpdated/Stats/PlaybackClear have no Realtime counterpart: speech_started and
        # response.done (cancelled) tell the client to stop playback.

    # -- client messages -------------------------------------------------------------------------
    def handle_message(self, message: str | bytes) -> None:
        self.realtime.audio_backlog_ms = self.paced_bytes / BYTES_PER_MS
        self.apply(self.realtime.receive(message))

    def finish(self) -> None:
        if self.feeder is not None:
            self.feeder.cancel()
