"""`/ws`: the native protocol adapter (docs/protocol.md) on the shared connection base.

JSON text frames and binary audio frames from the client go through server/protocols/native/wire.py's pure
decoders into the conversation; every conversation event goes out through its explicit encoder.
With `audio_format: "opus"` the audio is decoded here, before the conversation (so the VAD, the
recording and the captions get PCM as ever), and each 80 ms output frame leaves as four 20 ms
packets. Together they cost about 1 ms of CPU per conversation and frame, the budget for everything
outside the engine, so they run on the codec workers (server/codec_lanes.py), and so does the VAD's
signal half on the decoded audio (`Conversation.vad_front`); one lane each way:
every message of an Opus session goes through its lane, in order, so a `playback.clear` never
overtakes the audio it clears and a `session.end` never the audio sent before it.
`session.image` goes to server/images.py, which checks the image off the event loop; its answer,
`session.image.updated` once the model sees the image (or none), or an `error`, comes back here.
"""

from __future__ import annotations

import logging

import numpy as np

from assistant.conversation import AudioOut, Event, PromptChangeLimited, SessionEnded, SessionReady
from assistant.images import ImageError
from audio.frames import FRAME_MS
from audio.opus_packets import PACKET_MS, OpusPacketDecoder, OpusPacketEncoder, OpusPacketError
from audio.vad import VadAnalysis, VadFrontEnd
from server.codec_lanes import CodecLane
from server.connection import Connection
from server.images import ImageInput
from server.protocols.limits import CLOSE_NORMAL, MAX_MESSAGE_BYTES
from server.protocols.native import wire
from server.protocols.native.client_events import (
    ClientEvent,
    PlaybackPosition,
    SessionEnd,
    SessionImage,
    SessionStart,
    SessionUpdate,
)
from server.protocols.native.wire import ProtocolError

log = logging.getLogger("assistant.server")


def _decoded(pcm: np.ndarray, front: VadFrontEnd | None) -> tuple[np.ndarray, VadAnalysis | None]:
    """A decoded packet and, while on the codec worker, the VAD's analysis of it: the event loop is
    left with the turn logic (the resampling and classifying took half its time per Opus session)."""
    return pcm, None if front is None else front.analyse(pcm)


class NativeConnection(Connection):
    """One /ws connection: JSON events and PCM frames <-> a conversation."""

    protocol_name = "native"
    audio_format = "pcm16"
    encoder: OpusPacketEncoder | None = None
    decoder: OpusPacketDecoder | None = None
    incoming: CodecLane | None = None  # an Opus session's lanes (client -> conversation, and back)
    outgoing: CodecLane | None = None

    images: ImageInput | None = None  # once the session has its slot

    def conversation_event(self, event: Event) -> None:
        if isinstance(event, AudioOut) and self.encoder is not None:
            pcm, encode = event.pcm.copy(), self.encoder.encode
            self.outgoing.submit(lambda: encode(pcm), self.send_packets)
        elif isinstance(event, SessionReady):
            self.send_in_order(wire.encode_event(event, audio_format=self.audio_format))
        else:
            self.send_in_order(wire.encode_event(event))
        if isinstance(event, AudioOut):
            self.images.on_frame()  # after this frame's audio: the next frame is the first it changes
        if isinstance(event, SessionEnded):
            reason = event.reason[:120]
            if self.outgoing is None:
                self.close(CLOSE_NORMAL, reason, flush=True)
            else:
                self.outgoing.submit(None, lambda _: self.close(CLOSE_NORMAL, reason, flush=True))

    def send_in_order(self, message: str | bytes) -> None:
        """Send now, or behind the audio the Opus lane is still encoding."""
        if self.outgoing is None:
            self.send(message)
        else:
            self.outgoing.submit(None, lambda _: self.send(message))

    def send_packets(self, packets: list[bytes] | Exception) -> None:
        if isinstance(packets, Exception):
            log.error("native: %s: encoding a frame failed: %s", self.session.session_id, packets)
            return
        for packet in packets:
            self.send(packet)

    def encode_error(self, code: str, message: str, *, server_side: bool = False) -> str:
        return wire.error_event(code, message)

    def refuse_image(self, _tag, error: ImageError) -> None:
        self.send_error(error.code, str(error), server_side=error.code == "internal_error")

    def refuse_oversized(self, message: str | bytes, size: int) -> None:
        if isinstance(message, str) and '"session.image"' in message[:200]:
            self.send_error(
                "image_too_large",
                f"a session.image of {size} bytes was dropped unread; a message is at most "
                f"{MAX_MESSAGE_BYTES} bytes (send the image at 448 x 448, all the model sees)",
            )
        else:
            super().refuse_oversized(message, size)

    def handle_message(self, message: str | bytes) -> None:
        if self.incoming is not None:  # an Opus session: everything in order behind the decoding
            if isinstance(message, bytes):
                try:
                    wire.check_audio(
                        message, started=self.session is not None, audio_format=self.audio_format
                    )
                except ProtocolError as exc:
                    code, text = exc.code, exc.message
                    self.incoming.submit(None, lambda _: self.send_error(code, text))
                    return
                decode, front, at = self.decoder.decode, self.session.vad_front, self.session.clock()
                self.incoming.submit(
                    lambda: _decoded(decode(message), front), lambda decoded: self.push_decoded(decoded, at)
                )
            else:
                self.incoming.submit(None, lambda _: self.handle_text(message))
            return
        try:
            if isinstance(message, bytes):
                wire.check_audio(message, started=self.session is not None, audio_format=self.audio_format)
                self.apply_events(self.session.push_audio(message))
                return
            self.handle_event(wire.decode_text(message))
        except ProtocolError as exc:
            self.send_error(exc.code, exc.message)

    def handle_text(self, message: str) -> None:
        try:
            self.handle_event(wire.decode_text(message))
        except ProtocolError as exc:
            self.send_error(exc.code, exc.message)

    def push_decoded(self, decoded, arrived_at: float) -> None:
        if isinstance(decoded, OpusPacketError):
            self.send_error("bad_audio", str(decoded))
        elif isinstance(decoded, Exception):
            raise decoded
        else:
            self.apply_events(self.session.push_samples(*decoded, arrived_at=arrived_at))

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
            if session is None:  # the server filled up meanwhile, and the connection closes
                return
            self.images = ImageInput(
                self.slot,
                shown=lambda _, image: self.send(wire.image_updated_event(image)),
                removed=lambda _: self.send(wire.image_updated_event(None)),
                refused=self.refuse_image,
            )
            return  # session.ready goes out from the frame loop once the engine slot is open
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
        elif isinstance(event, SessionImage):
            if event.data is None:
                self.images.remove()
            else:
                self.images.show(event.data)

    def use_audio_format(self, audio_format: str) -> None:
        """Set up the codec before the session starts, so its first frame already goes out encoded."""
        self.audio_format = audio_format
        if audio_format == "opus":
            self.encoder, self.decoder = OpusPacketEncoder(), OpusPacketDecoder()
            self.incoming, self.outgoing = self.ctx.codecs.lane(), self.ctx.codecs.lane()
            # Four packets per frame instead of one PCM message: the same seconds of slack in the outbox.
            self.outbox.max_items = self.ctx.config.max_outbox_items * (1 + FRAME_MS // PACKET_MS)
        else:
            self.encoder = self.decoder = None

    async def received(self) -> None:
        if self.incoming is not None:
            await self.incoming.idle()

    def finish(self) -> None:
        if self.images is not None:
            self.images.close()
