"""`/api/chat`: the Moshi protocol adapter (docs/moshi-protocol.md) on the shared connection base.

Where Kyutai's and NVIDIA's servers hold one conversation behind a lock, each connection here is
one conversation in the batched frame loop, like every other endpoint's. Per connection:

- set-up: the query string (server/protocols/moshi/query.py) becomes the conversation's options; one the
  engine cannot honour (a role prompt for a model without prompts, an unknown voice, a bad number)
  is refused with an error message (0x05) and close 1008, before any handshake;
- handshake: 0x00 goes out once the engine slot is open, so a prompted model has its role and
  voice in by then; the client's messages wait unread until it has gone. It is timed
  `HANDSHAKE_LEAD_S` before a tick: a client that paces its audio from the handshake (Kyutai's
  records 80 ms blocks from then on) completes each frame just before the tick that steps it, not
  just after the one before (docs/architecture.md, frame phase);
- input: 0x01 chunks are one Ogg Opus stream, decoded as they come. The model's first step hears
  the stream's first 80 ms, as on both originals. With a model that takes no prompts (Kyutai's
  server), the codec's encoder then starts over, as Kyutai's does after that frame (its "skip"),
  so the next frame is encoded as a stream's first; NVIDIA's server encodes on without a break.
  A stream that cannot be decoded is refused with 0x05 and close 1007;
- output: every frame of the assistant's voice is Opus-encoded into the stream (0x01), every text
  piece sent as it comes (0x02);
- images (MoshiVis): an image message (0x08), whenever it comes (Kyutai's clients send it first),
  is checked off the event loop (server/images.py) and shown to the model from the query's
  `xa_start` step on, replacing any image before it; one that cannot be shown is answered with an
  error message (0x05, its code first) and the conversation goes on. An image message may be 16 MiB,
  any other 1 MiB;
- anything else a client sends (text frames, other kinds, empty messages, larger messages) is logged
  and skipped, as the originals do (a message too large to read is also answered with 0x05).
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from assistant.conversation import AssistantText, AudioOut, Error, Event, SessionEnded, SessionReady
from assistant.images import ImageError
from audio.frames import SAMPLE_RATE_HZ
from audio.opus_ogg import OpusDecoder, OpusEncoder, OpusStreamError
from server.connection import Connection, Transport
from server.images import ImageInput
from server.protocols.limits import CLOSE_NORMAL, CLOSE_POLICY, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES
from server.protocols.moshi import query as chat_query
from server.protocols.moshi import wire as moshi_wire

log = logging.getLogger("assistant.server")
# How long before a tick the handshake goes out: a client's frame, paced from it, then completes
# this long before the tick that steps it (room for the network's and the event loop's jitter).
HANDSHAKE_LEAD_S = 0.012


class MoshiChatConnection(Connection):
    """One /api/chat websocket <-> one conversation: Ogg Opus both ways, text pieces out."""

    protocol_name = "moshi"

    def __init__(self, ctx, ws: Transport):
        super().__init__(ctx, ws)
        self.decoder = OpusDecoder(SAMPLE_RATE_HZ)
        self.encoder = OpusEncoder(SAMPLE_RATE_HZ)
        self.restart_encoder = not ctx.engine.takes_prompts  # after the first frame, as Kyutai's server
        self.before_handshake: list[bytes] | None = None  # what is due after a handshake not yet sent
        self.skipped: set[str | bytes] = set()  # kinds of messages skipped so far (logged once)
        self.images: ImageInput | None = None
        query = urlsplit(ws.path).query
        try:
            options = ctx.default_options().replace(**chat_query.session_options(query))
            start_frame = chat_query.image_start(query)
            session = self.open_session(SAMPLE_RATE_HZ, options)
        except ValueError as exc:  # QueryError, or what the engine refuses (prompts, voices)
            self.refuse(CLOSE_POLICY, "invalid_value", str(exc))
            return
        if session is None:  # the server filled up since the upgrade: the connection closes with 1013
            return
        self.images = ImageInput(
            self.slot, start_frame=start_frame, accepted=self.image_accepted, refused=self.image_refused
        )
        if unknown := chat_query.unknown_parameters(query):
            log.info("moshi: %s ignores query parameters %s", self.session.session_id, unknown)

    def refuse(self, close_code: int, error_code: str, reason: str) -> None:
        """Say why in an error message (the whole reason), then close with `close_code`."""
        log.info("moshi: refusing a connection (%d): %s", close_code, reason)
        self.send_error(error_code, reason)
        self.close(close_code, moshi_wire.close_reason(reason), flush=True)

    def encode_error(self, code: str, message: str, *, server_side: bool = False) -> bytes:
        return moshi_wire.error_message(message)

    def max_message_bytes(self, message: str | bytes) -> int:
        return MAX_FRAME_BYTES if moshi_wire.is_image(message) else super().max_message_bytes(message)

    def refuse_oversized(self, message: str | bytes, size: int) -> None:
        log.warning("moshi: %s skips a message of %d bytes (too large)", self.session_id, size)
        self.send_error(
            "message_too_large",
            f"message_too_large: a message of {size} bytes was skipped unread; at most "
            f"{MAX_MESSAGE_BYTES} are accepted ({MAX_FRAME_BYTES} for an image)",
        )

    @property
    def session_id(self) -> str:
        return self.session.session_id if self.session else "-"

    def image_accepted(self, _tag, image) -> None:
        log.info("moshi: %s shows the model a %d x %d image", self.session_id, image.width, image.height)

    def image_refused(self, _tag, error: ImageError) -> None:
        log.info("moshi: %s refused an image: %s", self.session_id, error)
        self.send_error(error.code, f"{error.code}: {error}", server_side=error.code == "internal_error")

    # -- conversation events -------------------------------------------------------------------
    def conversation_event(self, event: Event) -> None:
        if isinstance(event, SessionReady):
            self.schedule_handshake()
        elif isinstance(event, AudioOut):
            self.images.on_frame()
            if self.restart_encoder:  # this is the answer to the first frame the model heard
                self.restart_encoder = False
                self.slot.reset_encoder()
            ogg = self.encoder.encode(event.pcm)
            if ogg:
                self.send_after_handshake(moshi_wire.audio_message(ogg))
        elif isinstance(event, AssistantText):
            self.send_after_handshake(moshi_wire.text_message(event.text))
        elif isinstance(event, Error):
            self.send_error(event.code, event.message, server_side=True)
        elif isinstance(event, SessionEnded):
            self.close(CLOSE_NORMAL, moshi_wire.close_reason(event.reason), flush=True)
        # The rest (turns, barge-ins, stats, ...) has no Moshi message; the recording keeps them.

    def schedule_handshake(self) -> None:
        """Send the handshake `HANDSHAKE_LEAD_S` before the next tick that leaves time for it."""
        now = self.slot.clock()
        tick = self.slot.next_tick_after(now + HANDSHAKE_LEAD_S)
        if tick is None:  # no wall clock to meet
            self.send(moshi_wire.HANDSHAKE)
            return
        self.before_handshake = []
        asyncio.get_running_loop().call_later(tick - HANDSHAKE_LEAD_S - now, self.send_handshake)

    def send_handshake(self) -> None:
        held, self.before_handshake = self.before_handshake or [], None  # a session that started silent
        self.send(moshi_wire.HANDSHAKE)
        for message in held:
            self.send(message)

    def send_after_handshake(self, message: bytes) -> None:
        if self.before_handshake is None:
            self.send(message)
        else:
            self.before_handshake.append(message)

    # -- client messages -------------------------------------------------------------------------
    def handle_message(self, message: str | bytes) -> None:
        if moshi_wire.is_image(message):
            self.images.show(moshi_wire.image_payload(message))
            return
        try:
            ogg = moshi_wire.audio_payload(message)
        except moshi_wire.Ignored as exc:
            # One line per kind of message and connection, not one per message of a client that
            # keeps sending them.
            kind = "text" if isinstance(message, str) else message[:1]
            level = logging.DEBUG if kind in self.skipped else logging.WARNING
            self.skipped.add(kind)
            log.log(level, "moshi: %s skips %s", self.session.session_id, exc)
            return
        try:
            pcm = self.decoder.decode(ogg)
        except OpusStreamError as exc:
            log.warning("moshi: %s: %s", self.session.session_id, exc)
            self.refuse(moshi_wire.CLOSE_BAD_DATA, "bad_audio", str(exc))
            return
        if pcm.shape[0]:
            self.apply_events(self.session.push_samples(pcm))

    def finish(self) -> None:
        if self.images is not None:
            self.images.close()
