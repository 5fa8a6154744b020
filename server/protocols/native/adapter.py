"""`/ws`: the native protocol adapter (docs/protocol.md) on the shared connection base.

JSON text frames and binary audio frames from the client go through server/protocols/native/wire.py's pure
decoders into the conversation; every conversation event goes out through its explicit encoder.
With `audio_format: "opus"` the audio is decoded here, before the conversation (so the VAD, the
recording and the captions get PCM as ever), and each 80 ms output frame leaves as four 20 ms
packets. Together they cost about 1 ms of CPU per conversation and frame, the budget for everything
outside the engine (`assistant bench server --audio-format opus` prints it), so they run inline:
deferring the encode would let a `playback.clear` overtake the audio it clears.
"""

from __future__ import annotations

from assistant.conversation import AudioOut, Event, PromptChangeLimited, SessionEnded, SessionReady
from audio.frames import FRAME_MS
from audio.opus_packets import PACKET_MS, OpusPacketDecoder, OpusPacketEncoder, OpusPacketError
from server.connection import Connection
from server.protocols.limits import CLOSE_NORMAL
from server.protocols.native import wire
from server.protocols.native.client_events import (
    ClientEvent,
    PlaybackPosition,
    SessionEnd,
    SessionStart,
    SessionUpdate,
)
from server.protocols.native.wire import ProtocolError


class NativeConnection(Connection):
    """One /ws connection: JSON events and PCM frames <-> a conversation."""

    protocol_name = "native"
    audio_format = "pcm16"
    encoder: OpusPacketEncoder | None = None
    decoder: OpusPacketDecoder | None = None

    def conversation_event(self, event: Event) -> None:
        if isinstance(event, AudioOut) and self.encoder is not None:
            for packet in self.encoder.encode(event.pcm):
                self.send(packet)
        elif isinstance(event, SessionReady):
            self.send(wire.encode_event(event, audio_format=self.audio_format))
        else:
            self.send(wire.encode_event(event))
        if isinstance(event, SessionEnded):
            self.close(CLOSE_NORMAL, event.reason[:120], flush=True)

    def encode_error(self, code: str, message: str, *, server_side: bool = False) -> str:
        return wire.error_event(code, message)

    def handle_message(self, message: str | bytes) -> None:
        try:
            if isinstance(message, bytes):
                wire.check_audio(message, started=self.session is not None, audio_format=self.audio_format)
                if self.decoder is None:
                    self.apply_events(self.session.push_audio(message))
                    return
                try:
                    pcm = self.decoder.decode(message)
                except OpusPacketError as exc:
                    raise ProtocolError("bad_audio", str(exc)) from None
                self.apply_events(self.session.push_samples(pcm))
                return
            self.handle_event(wire.decode_text(message))
        except ProtocolError as exc:
            self.send_error(exc.code, exc.message)

    def handle_event(self, event: ClientEvent) -> None:
        if isinstance(event, SessionStart):
            if self.session is not None:
                raise ProtocolError(
                    "already_started", f"session {self.session.session_id} is already running"
                )
            self.use_audio_format(event.audio_format)
            try:
                options = self.ctx.default_options().replace(**event.options())
                session = self.open_session(event.sample_rate, options)
            except ValueError as exc:
                raise ProtocolError("invalid_value", str(exc)) from None
            if session is not None:  # None: the server filled up meanwhile, and the connection closes
                self.apply_events(session.start())
            return
        if self.session is None:
            raise ProtocolError("not_started", f"send session.start before {type(event).__name__}")
        if isinstance(event, SessionUpdate):
            options = event.options()
            try:
                events = self.session.update(**options)  # checks a new prompt with the engine too
            except PromptChangeLimited as exc:
                raise ProtocolError(exc.code, str(exc)) from None
            except ValueError as exc:
                raise ProtocolError("invalid_value", str(exc)) from None
            self.apply_events(events)
        elif isinstance(event, PlaybackPosition):
            self.session.set_played_ms(event.played_ms)
        elif isinstance(event, SessionEnd):
            self.apply_events(self.session.end("client_ended"))

    def use_audio_format(self, audio_format: str) -> None:
        """Set up the codec before the session starts, so its first frame already goes out encoded."""
        self.audio_format = audio_format
        if audio_format == "opus":
            self.encoder, self.decoder = OpusPacketEncoder(), OpusPacketDecoder()
            # Four packets per frame instead of one PCM message: the same seconds of slack in the outbox.
            self.outbox.max_items = self.ctx.config.max_outbox_items * (1 + FRAME_MS // PACKET_MS)
        else:
            self.encoder = self.decoder = None
