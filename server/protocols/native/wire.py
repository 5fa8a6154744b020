"""The native websocket protocol (docs/protocol.md) as pure encode/decode functions.

Nothing here touches a socket: `decode_text` turns one text frame into a typed client event
(server/protocols/native/client_events.py; or raises `ProtocolError` with the wire error code), `check_audio` validates one binary frame,
and `encode_event` turns a conversation event (assistant/conversation/events.py) into the frame
to send, field by field, so the wire format only changes here. The asyncio shell
(server/protocols/native/adapter.py) only moves bytes between the socket and these functions; clients
(client/native.py) use the same definitions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from assistant.conversation import events as ev
from assistant.images import PreparedImage
from server.protocols.json_frames import InvalidJson, load_object
from server.protocols.native.client_events import CLIENT_EVENTS, ClientEvent
from server.protocols.schema import any_event, refusal

ERROR_CODES = (
    "invalid_json",
    "unknown_event",
    "missing_field",
    "invalid_value",
    "not_started",
    "already_started",
    "unsupported_sample_rate",
    "rate_limited",
    "bad_audio",
    "message_too_large",  # dropped unread (over 1 MiB); the session goes on
    # session.image: assistant/images.py's codes
    "corrupt_image",
    "unsupported_image_type",
    "image_too_large",
    "image_dimensions_too_large",
    "images_not_supported",
    "internal_error",  # the server failed to handle a message; the session goes on
)


class ProtocolError(Exception):
    """A client message was refused; `code` is one of ERROR_CODES, `message` says what to fix."""

    def __init__(self, code: str, message: str):
        assert code in ERROR_CODES, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# -- client -> server events ------------------------------------------------------------------

MAX_OPUS_PACKET_BYTES = 1275  # RFC 6716's largest packet; audio/opus_packets.py refuses the same


_ANY_EVENT = any_event(tuple(CLIENT_EVENTS.values()))


def decode_text(text: str | bytes) -> ClientEvent:
    """Decode one JSON text frame into a client event; raise ProtocolError if it is not one."""
    try:  # a well-formed event in one pass: the common case
        return _ANY_EVENT.validate_json(text)
    except ValidationError:
        pass  # find out what is wrong, and say it
    try:
        msg = load_object(text)
    except InvalidJson as exc:
        raise ProtocolError("invalid_json", f"text frames must be JSON objects: {exc}") from None
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("missing_field", "every event needs a string 'type'")
    schema = CLIENT_EVENTS.get(kind)
    if schema is None:
        raise ProtocolError(
            "unknown_event", f"unknown event type {kind[:60]!r}; expected {', '.join(CLIENT_EVENTS)}"
        )
    try:
        return schema.model_validate(msg)
    except ValidationError as exc:
        refused = refusal(exc, schema, unknown_code="invalid_value")
        raise ProtocolError(refused.code, refused.message) from None


def check_audio(data: bytes, *, started: bool, audio_format: str = "pcm16") -> None:
    """Validate one binary (audio) frame; raise ProtocolError if the session cannot take it."""
    if not started:
        raise ProtocolError("not_started", "send session.start before any audio")
    if audio_format == "opus":
        if not 0 < len(data) <= MAX_OPUS_PACKET_BYTES:
            raise ProtocolError(
                "bad_audio",
                f"audio_format opus takes one Opus packet per binary message (1 to {MAX_OPUS_PACKET_BYTES} "
                f"bytes), got {len(data)} bytes",
            )
        return
    if len(data) % 2:
        raise ProtocolError(
            "bad_audio", f"audio must be 16-bit PCM (an even number of bytes), got {len(data)} bytes"
        )


# -- server -> client events ------------------------------------------------------------------


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


# One encoder per event: the wire names and fields of docs/protocol.md, spelled out.
_ENCODERS: dict[type, Callable[[Any], dict[str, Any]]] = {
    ev.SessionReady: lambda e: {
        "session_id": e.session_id,
        "sample_rate": e.sample_rate,
        "frame_ms": e.frame_ms,
        "options": e.options,
    },
    ev.SessionUpdated: lambda e: {"options": e.options},
    ev.InputSpeechStarted: lambda e: {"at_ms": e.at_ms},
    ev.InputSpeechStopped: lambda e: {"at_ms": e.at_ms},
    ev.AssistantSpeechStarted: lambda e: {"at_ms": e.at_ms, "input_ms": e.input_ms},
    ev.AssistantSpeechStopped: lambda e: {"at_ms": e.at_ms, "input_ms": e.input_ms},
    ev.AssistantText: lambda e: {"text": e.text, "at_ms": e.at_ms},
    ev.PlaybackClear: lambda e: {"reason": e.reason},
    ev.BargeIn: lambda e: {"at_ms": e.at_ms, "cut_text": e.cut_text},
    ev.Stats: lambda e: {
        "response_gap_ms": e.response_gap_ms,
        "server_overhead_ms": e.server_overhead_ms,
        "underruns": e.underruns,
        "drops": e.drops,
        "step_ms": e.step_ms,
        "played_ms": e.played_ms,
        "sent_ms": e.sent_ms,
        "end_of_turn_ms": e.end_of_turn_ms,
        "frame_wait_ms": e.frame_wait_ms,
    },
    ev.UserTranscript: lambda e: {"text": e.text, "start_ms": e.start_ms, "end_ms": e.end_ms},
    ev.UserTranscriptDelta: lambda e: {"text": e.text, "start_ms": e.start_ms, "end_ms": e.end_ms},
    ev.Error: lambda e: {"code": e.code, "message": e.message},
    ev.SessionEnded: lambda e: {"reason": e.reason},
}


def encode_event(event: ev.Event, *, audio_format: str = "pcm16") -> str | bytes:
    """One conversation event -> the frame to send: JSON text, or raw PCM16 bytes for audio (the
    adapter Opus-encodes audio itself; `audio_format` is what session.ready tells the client)."""
    if isinstance(event, ev.AudioOut):
        return event.pcm16
    body = {"type": event.type, **_ENCODERS[type(event)](event)}
    if isinstance(event, ev.SessionReady):
        body["audio_format"] = audio_format
    return _dumps(body)


def error_event(code: str, message: str) -> str:
    return _dumps({"type": "error", "code": code, "message": message})


def image_updated_event(image: PreparedImage | None) -> str:
    """`session.image.updated`: the image the model sees now (as it was sent), or null for none."""
    shown = None
    if image is not None:
        shown = {"width": image.width, "height": image.height, "mime_type": image.mime_type}
    return _dumps({"type": "session.image.updated", "image": shown})
