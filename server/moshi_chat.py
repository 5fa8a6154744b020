"""`/api/chat`: the Moshi protocol adapter (docs/moshi-protocol.md) on the shared connection base.

Where Kyutai's and NVIDIA's servers hold one conversation behind a lock, each connection here is
one conversation in the batched frame loop, like every other endpoint's. Per connection:

- set-up: the query string (server/moshi_protocol.py) becomes the conversation's options; one the
  engine cannot honour (a role prompt for a model without prompts, an unknown voice, a bad number)
  is refused with an error message (0x05) and close 1008, before any handshake;
- handshake: 0x00 goes out once the engine slot is open, so a prompted model has its role and
  voice in by then; the client's messages wait unread until it has gone;
- input: 0x01 chunks are one Ogg Opus stream, decoded as they come. The model's first step hears
  the stream's first 80 ms, as on both originals. With a model that takes no prompts (Kyutai's
  server), the codec's encoder then starts over, as Kyutai's does after that frame (its "skip"),
  so the next frame is encoded as a stream's first; NVIDIA's server encodes on without a break.
  A stream that cannot be decoded is refused with 0x05 and close 1007;
- output: every frame of the assistant's voice is Opus-encoded into the stream (0x01), every text
  piece sent as it comes (0x02);
- anything else a client sends (text frames, other kinds, empty messages) is logged and skipped, as
  the originals do.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection

from assistant.conversation import AssistantText, AudioOut, Error, Event, SessionEnded, SessionReady
from audio.frames import SAMPLE_RATE_HZ
from audio.opus import OpusDecoder, OpusEncoder, OpusStreamError
from server import moshi_protocol as moshi
from server.connection import Connection
from server.protocol import CLOSE_NORMAL, CLOSE_POLICY

log = logging.getLogger("assistant.server")


class MoshiChatConnection(Connection):
    """One /api/chat websocket <-> one conversation: Ogg Opus both ways, text pieces out."""

    protocol_name = "moshi"

    def __init__(self, ctx, ws: ServerConnection, slot):
        super().__init__(ctx, ws, slot)
        self.decoder = OpusDecoder(SAMPLE_RATE_HZ)
        self.encoder = OpusEncoder(SAMPLE_RATE_HZ)
        self.restart_encoder = not ctx.engine.takes_prompts  # after the first frame, as Kyutai's server
        self.skipped: set[str | bytes] = set()  # kinds of messages skipped so far (logged once)
        query = urlsplit(ws.request.path).query if ws.request else ""
        try:
            options = ctx.default_options().replace(**moshi.session_options(query))
            self.session = ctx.open_session(slot, SAMPLE_RATE_HZ, self.emit, options)
        except ValueError as exc:  # QueryError, or what the engine refuses (prompts, voices)
            self.refuse(CLOSE_POLICY, "invalid_value", str(exc))
            return
        if unknown := moshi.unknown_parameters(query):
            log.info("moshi: %s ignores query parameters %s", self.session.session_id, unknown)

    def refuse(self, close_code: int, error_code: str, reason: str) -> None:
        """Say why in an error message (the whole reason), then close with `close_code`."""
        log.info("moshi: refusing a connection (%d): %s", close_code, reason)
        self.send_error(error_code, reason)
        self.close(close_code, moshi.close_reason(reason), flush=True)

    def encode_error(self, code: str, message: str, *, server_side: bool = False) -> bytes:
        return moshi.error_message(message)

    # -- conversation events (event loop thread) -------------------------------------------------
    def emit(self, event: Event) -> None:
        if isinstance(event, SessionReady):
            self.send(moshi.HANDSHAKE)
            self.announced.set()
        elif isinstance(event, AudioOut):
            if self.restart_encoder:  # this is the answer to the first frame the model heard
                self.restart_encoder = False
                self.slot.reset_encoder()
            ogg = self.encoder.encode(event.pcm)
            if ogg:
                self.send(moshi.audio_message(ogg))
        elif isinstance(event, AssistantText):
            self.send(moshi.text_message(event.text))
        elif isinstance(event, Error):
            self.send_error(event.code, event.message, server_side=True)
        elif isinstance(event, SessionEnded):
            self.close(CLOSE_NORMAL, moshi.close_reason(event.reason), flush=True)
        # The rest (turns, barge-ins, stats, ...) has no Moshi message; the recording keeps them.

    # -- client messages -------------------------------------------------------------------------
    def handle_message(self, message: str | bytes) -> None:
        try:
            ogg = moshi.audio_payload(message)
        except moshi.Ignored as exc:
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
            self.refuse(moshi.CLOSE_BAD_DATA, "bad_audio", str(exc))
            return
        if pcm.shape[0]:
            self.session.push_samples(pcm)
