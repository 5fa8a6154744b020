"""`/ws`: the native protocol adapter (docs/protocol.md) on the shared connection base.

JSON text frames and binary audio frames from the client go through server/protocol.py's pure
decoders into the conversation; every conversation event goes out through its explicit encoder.
With `audio_format: "opus"` the audio is decoded here, before the conversation (so the VAD, the
recording and the captions get PCM as ever), and each 80 ms output frame leaves as four 20 ms
packets. Together they cost about 1 ms of CPU per conversation and frame, the budget for everything
outside the engine (`assistant bench server --audio-format opus` prints it), so they run inline:
deferring the encode would let a `playback.clear` overtake the audio it clears.
"""

from __future__ import annotations

from assistant.conversation import AudioOut, Event, SessionEnded, SessionReady
from audio.frames import FRAME_MS
from audio.opus_packets import PACKET_MS, OpusPacketDecoder, OpusPacketEncoder, OpusPacketError
from server import protocol
from server.connection import Connection
from server.protocol import (
    CLOSE_NORMAL,
    PlaybackPosition,
    ProtocolError,
    SessionEnd,
    SessionStart,
    SessionUpdate,
)


class NativeConnection(Connection):
    """One /ws connection: JSON events and PCM frames <-> a conversation."""

    protocol_name = "native"
    audio_format = "pcm16"
    encoder: OpusPacketEncoder | None = None
    decoder: OpusPacketDecoder | None = None

    # Events from the conversation (event loop thread).
    def emit(self, event: Event) -> None:
        if isinstance(event, AudioOut) and self.encoder is not None:
            for packet in self.encoder.encode(event.pcm):
                self.send(packet)
        elif isinstance(event, SessionReady):
            self.send(protocol.encode_event(event, audio_format=self.audio_format))
            self.announced.set()
        else:
            self.send(protocol.encode_event(event))
        if isinstance(event, SessionEnded):
            self.close(CLOSE_NORMAL, event.reason[:120], flush=True)

    def encode_error(self, code: str, message: str, *, server_side: bool = False) -> str:
        return protocol.error_event(code, message)

    def handle_message(self, message: str | bytes) -> None:
        try:
            if isinstance(message, bytes):
                protocol.check_audio(
                    message, started=self.session is not None, audio_format=self.audio_format
                )
                if self.decoder is None:
                    self.session.push_audio(message)
                    return
                try:
                    self.session.push_samples(self.decoder.decode(message))
                except OpusPacketError as exc:
                    raise ProtocolError("bad_audio", str(exc)) from None
                return
            self.handle_event(protocol.decode_text(message))
        except ProtocolError as exc:
            self.send_error(exc.code, exc.message)

    def handle_event(self, event: protocol.ClientEvent) -> None:
        if isinstance(event, SessionStart):
            if self.session is not None:
                raise ProtocolError(
                    "already_started", f"session {self.session.session_id} is already running"
                )
            self.use_audio_format(event.audio_format)
            try:
                options = self.ctx.default_options().replace(**event.options)
                self.session = self.ctx.open_session(self.slot, event.sample_rate, self.emit, options)
            except ValueError as exc:
                raise ProtocolError("invalid_value", str(exc)) from None
            return
        if self.session is None:
            raise ProtocolError("not_started", f"send session.start before {type(event).__name__}")
        if isinstance(event, SessionUpdate):
            try:
                if event.options.keys() & {"instructions", "voice"}:
                    current = self.session.options
                    self.ctx.check_prompt(
                        event.options.get("instructions", current.instructions),
                        event.options.get("voice", current.voice),
                    )
                self.session.update(**event.options)
            except ValueError as exc:
                raise ProtocolError("invalid_value", str(exc)) from None
        elif isinstance(event, PlaybackPosition):
            self.session.set_played_ms(event.played_ms)
        elif isinstance(event, SessionEnd):
            self.session.end("client_ended")

    def use_audio_format(self, audio_format: str) -> None:
        """Set up the codec before the session starts, so its first frame already goes out encoded."""
        self.audio_format = audio_format
        if audio_format == "opus":
            self.encoder, self.decoder = OpusPacketEncoder(), OpusPacketDecoder()
            # Four packets per frame instead of one PCM message: the same seconds of slack in the outbox.
            self.outbox.max_items = self.ctx.config.max_outbox_items * (1 + FRAME_MS // PACKET_MS)
        else:
            self.encoder = self.decoder = None
