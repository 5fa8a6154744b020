"""`/ws`: the native protocol adapter (docs/protocol.md) on the shared connection base.

JSON text frames and PCM16 binary frames from the client go through server/protocol.py's pure
decoders into the conversation; every conversation event goes out through its explicit encoder.
"""

from __future__ import annotations

from assistant.conversation import Event, SessionEnded
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

    # Events from the conversation (event loop thread).
    def emit(self, event: Event) -> None:
        self.send(protocol.encode_event(event))
        if isinstance(event, SessionEnded):
            self.close(CLOSE_NORMAL, event.reason[:120], flush=True)

    def encode_error(self, code: str, message: str, *, server_side: bool = False) -> str:
        return protocol.error_event(code, message)

    def handle_message(self, message: str | bytes) -> None:
        try:
            if isinstance(message, bytes):
                protocol.check_audio(message, started=self.session is not None)
                self.session.push_audio(message)
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
