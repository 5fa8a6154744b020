"""`/v1/realtime`: the OpenAI Realtime API (GA) adapter, a thin shell around the session core.

`handle_realtime(ctx, ws)` is what server/app.py routes to. Per connection it takes an engine slot
(close 1013 when full, as /ws), opens a Session at 24 kHz, and moves data both ways:
JSON text frames -> `Conversation.receive` -> actions on the Session / server events out;
Session events (audio frames, text pieces, VAD turns, captions, end) -> `Conversation` -> events out.
All protocol logic lives in server/realtime_protocol.py; this file only does I/O and pacing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import secrets
import time
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from server.connection import close_connection
from server.protocol import CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TRY_AGAIN_LATER, RateLimiter
from server.realtime_protocol import (
    BYTES_PER_MS,
    FRAME_MS,
    SAMPLE_RATE_HZ,
    ConfigureInput,
    Conversation,
    PushAudio,
    RealtimeError,
    SetSilenced,
)
from server.session import (
    AssistantText,
    AudioOut,
    Error,
    Event,
    InputSpeechStarted,
    InputSpeechStopped,
    Outbox,
    Session,
    SessionEnded,
    SessionOptions,
    SlowClient,
    UserTranscript,
)

log = logging.getLogger("assistant.realtime")

_FRAME_BYTES = FRAME_MS * BYTES_PER_MS


def requested_model(ws: ServerConnection) -> str | None:
    """The `model` query parameter the client connected with (the SDK always sends one)."""
    query = urlsplit(ws.request.path).query if ws.request else ""
    return (parse_qs(query).get("model") or [None])[0]


def _end_error(reason: str) -> RealtimeError:
    code = "session_expired" if reason.startswith("max_duration") else "session_ended"
    return RealtimeError(code, f"the session is over: {reason}")


class RealtimeConnection:
    """One /v1/realtime websocket <-> one Session, through a `Conversation` state machine."""

    def __init__(self, ctx, ws: ServerConnection, slot):
        self.ctx = ctx
        self.ws = ws
        config = ctx.config
        # A Realtime frame is several messages (audio delta, transcript delta, response events), not one.
        self.outbox = Outbox(ws.send, max_items=config.max_outbox_items * 4, max_lag_s=config.max_send_lag_s)
        self.writer = asyncio.create_task(self.outbox.run())
        self.limiter = RateLimiter(config.messages_per_s, config.message_burst, time.monotonic())
        self.refused_in_a_row = 0
        self.closing: asyncio.Task | None = None
        self.conv: Conversation | None = None
        self.paced: collections.deque[bytes] = collections.deque()  # item audio fed at real-time speed
        self.feeder: asyncio.Task | None = None
        # The Realtime adapter owns force_silence (manual turns, interruptions), so the session's own
        # barge-in policy stays "model" and never fights it.
        self.session: Session = ctx.open_session(slot, SAMPLE_RATE_HZ, self.emit, SessionOptions(barge_in="model"))
        model = requested_model(ws) or ctx.engine.model_name or ctx.engine.name
        self.conv = Conversation(
            session_id=self.session.session_id,
            model=model,
            voice=ctx.engine.model_name or ctx.engine.name,
            id_prefix=secrets.token_hex(4),
            captions_model=ctx.captions_model,
            threshold_applies=ctx.config.vad.backend == "silero",
            hangover_frames=ctx.config.limits.assistant_hangover_frames,
        )
        self.apply(self.conv.start())

    # -- conversation outputs -> socket / session ------------------------------------------------
    def apply(self, outputs: list) -> None:
        for out in outputs:
            if isinstance(out, dict):
                self.send(out)
            elif isinstance(out, PushAudio):
                self.push_audio(out.pcm16, out.paced)
            elif isinstance(out, SetSilenced):
                self.session.force_silence(out.silent)
            elif isinstance(out, ConfigureInput):
                self.configure(out)

    def send(self, event: dict) -> None:
        if event["type"] == "error":
            self.ctx.metrics.inc("errors", label=event["error"]["code"])
        if self.closing:
            return
        try:
            self.outbox.put(json.dumps(event))
        except SlowClient as exc:
            self.ctx.metrics.inc("slow_clients")
            log.warning("disconnecting slow realtime client: %s", exc)
            self.close(CLOSE_POLICY, str(exc))

    def configure(self, cfg: ConfigureInput) -> None:
        changes: dict = {"captions": cfg.captions}
        td = cfg.turn_detection
        if td is not None:
            changes["vad"] = {"threshold": td.threshold, "min_silence_ms": td.silence_duration_ms,
                              "prefix_padding_ms": td.prefix_padding_ms}
        self.session.update(**changes)

    def push_audio(self, pcm16: bytes, paced: bool) -> None:
        if not paced and not self.paced:
            self.session.push_audio(pcm16)
            return
        # Behind paced item audio, live audio waits its turn so the model hears everything in order.
        for i in range(0, len(pcm16), _FRAME_BYTES):
            self.paced.append(pcm16[i:i + _FRAME_BYTES])
        if self.feeder is None or self.feeder.done():
            self.feeder = asyncio.create_task(self._feed())

    async def _feed(self) -> None:
        # The session keeps only a few frames of backlog, so item audio goes in at the frame rate.
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while self.paced and not self.session.ended:
            self.session.push_audio(self.paced.popleft())
            next_at += FRAME_MS / 1000
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    # -- session events (event loop thread) ------------------------------------------------------
    def emit(self, event: Event) -> None:
        conv = self.conv
        if conv is None:
            return  # SessionReady during open_session: session.created is sent by Conversation.start
        if isinstance(event, AudioOut):
            self.apply(conv.output_audio(event.pcm16, event.speaking))
        elif isinstance(event, AssistantText):
            self.apply(conv.output_text(event.text))
        elif isinstance(event, InputSpeechStarted):
            self.apply(conv.user_speech_started(event.at_ms))
        elif isinstance(event, InputSpeechStopped):
            self.apply(conv.user_speech_stopped(event.at_ms))
        elif isinstance(event, UserTranscript):
            self.apply(conv.user_transcript(event.text, event.start_ms, event.end_ms))
        elif isinstance(event, Error):
            self.send(conv.error(RealtimeError(event.code, event.message, error_type="server_error")))
        elif isinstance(event, SessionEnded):
            if event.reason not in ("client_disconnected", "client_ended"):
                self.send(conv.error(_end_error(event.reason)))
            self.close(CLOSE_NORMAL, event.reason[:120])
        # SessionReady/SessionUpdated/Stats/PlaybackClear/BargeIn and the assistant's stretch events have no
        # Realtime counterpart: responses come from the speaking flag, and speech_started tells the client
        # to stop playback.

    # -- client messages -------------------------------------------------------------------------
    def handle_message(self, message: str | bytes) -> None:
        if not self.limiter.allow(time.monotonic()):
            self.refused_in_a_row += 1
            if self.refused_in_a_row == 1:
                self.send(self.conv.error(RealtimeError(
                    "rate_limited", f"more than {self.ctx.config.messages_per_s:g} events/s; slow down (send "
                    "audio in chunks of 20 ms or more)")))
            if self.refused_in_a_row >= self.ctx.config.flood_close_after:
                self.close(CLOSE_POLICY, "event flood: too many messages, closing")
            return
        self.refused_in_a_row = 0
        try:
            outputs = self.conv.receive(message)
        except Exception:  # a bug must cost one event, not the conversation
            log.exception("realtime: failed to handle a client event")
            outputs = [self.conv.error(RealtimeError("server_error", "the server failed to handle this event",
                                                     error_type="server_error"))]
        self.apply(outputs)

    def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = asyncio.create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        self.session.end(reason if code != CLOSE_NORMAL else self.session.ended or reason)
        await close_connection(
            self.ws, self.outbox, self.writer, code, reason, flush=True, timeout_s=self.ctx.config.drain_timeout_s
        )

    async def run(self) -> None:
        try:
            while self.closing is None:
                self.handle_message(await self.ws.recv())
        except ConnectionClosed:
            pass
        finally:
            self.session.end("client_disconnected")
            self.ctx.forget(self.session)
            if self.feeder is not None:
                self.feeder.cancel()
            if self.closing is not None:
                with contextlib.suppress(Exception):
                    await self.closing
            self.outbox.close()
            self.writer.cancel()


async def handle_realtime(ctx, ws: ServerConnection) -> None:
    """Serve one /v1/realtime connection (auth and origin were checked at the handshake)."""
    slot = ctx.reserve()
    if slot is None:
        cap = ctx.scheduler.capacity
        reason = "server is shutting down" if ctx.draining else f"server full: all {cap} sessions are taken; try later"
        await ws.close(CLOSE_TRY_AGAIN_LATER, reason)
        return
    try:
        conn = RealtimeConnection(ctx, ws, slot)
    except Exception:
        slot.release()
        raise
    await conn.run()
