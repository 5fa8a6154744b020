"""The OpenAI Live API client events, as pure code: parsing and validation.

`parse_client_event(text)` turns one JSON text frame of a primary Live WebSocket into a typed
client event, or raises `LiveError` (code, message, param, the client's event_id), which the state
machine (server/protocols/live/state_machine.py) answers with one `error` server event; the session goes on.

The session configuration is strict, as OpenAI's is: an unknown field is an error, not a silent
no-op. Features that need an external text model (Responses or Decisions delegation, triggers,
text history, thinking/commentary, responses) are refused with a typed error that says so.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from assistant.engine import MAX_PROMPT_CHARS
from audio import g711
from server.protocols.realtime.events import (
    RealtimeError as LiveError,  # the same refusal: code, message, param, id
)
from server.protocols.realtime.events import _need as need
from server.protocols.realtime.events import _opt as opt
from server.protocols.realtime.events import decode_event_envelope

__all__ = [
    "AudioFormat",
    "AudioAppend",
    "ClientEvent",
    "InstructionsAppend",
    "LiveError",
    "Mute",
    "OPENAI_VOICES",
    "SessionClose",
    "SessionStart",
    "SessionUpdate",
    "parse_client_event",
]

MAX_MODEL_CHARS = 200
MAX_VOICE_CHARS = 200
MAX_APPEND_CHARS = 2000  # one session.instructions.append (OpenAI: 500 tokens)

# The built-in voices of OpenAI's Live models: a client written for OpenAI names one of these.
OPENAI_VOICES = frozenset(
    "alloy ash ballad beacon bossa cedar cinder coral delta echo gleam marin meridian quartz ripple "
    "sage shida shimmer stone tempo verse vesper willow".split()
)

_NEEDS_TEXT_MODEL = (
    "needs an external text model (Responses or Decisions delegation); this server runs a speech model only"
)
# Client event types of the Live API this server refuses (answered with an error; the session goes on).
UNSUPPORTED_CLIENT_EVENTS = {
    "response.create": f"responses {_NEEDS_TEXT_MODEL}",
    "response.item.create": f"Responses items {_NEEDS_TEXT_MODEL}",
    "decision.create": f"decisions {_NEEDS_TEXT_MODEL}",
    "decision.item.create": f"decision items {_NEEDS_TEXT_MODEL}",
    "decision.item.delete": f"decision items {_NEEDS_TEXT_MODEL}",
    "session.thinking.append": "the speech model takes no text context mid-session; thinking "
    + _NEEDS_TEXT_MODEL,
    "session.commentary.append": "the speech model takes no text context mid-session; commentary "
    + _NEEDS_TEXT_MODEL,
    "session.output_audio.fixture.play": "audio fixtures are not supported: the model's own voice is the output",
    "transport.dtmf.send": "DTMF is SIP only; this is a WebSocket session",
}
CLIENT_EVENTS = (
    "session.start",
    "session.update",
    "session.input_audio.append",
    "session.input_audio.mute",
    "session.input_audio.unmute",
    "session.instructions.append",
    "session.close",
)
_SESSION_FIELDS = (
    "model",
    "instructions",
    "audio",
    "delegation",
    "input",
    "client",
    "safety_identifier",
    "store",
    "triggers",
)
_UPDATE_FIELDS = ("delegation", "triggers")


# -- audio formats ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioFormat:
    """What the session's audio is on the wire, both ways: PCM16 at 16 or 24 kHz, or G.711 at 8 kHz."""

    type: str = "audio/pcm"
    rate_hz: int = 24_000

    @property
    def law(self) -> str | None:
        return {"audio/pcmu": "ulaw", "audio/pcma": "alaw"}.get(self.type)

    @property
    def bytes_per_sample(self) -> int:
        return 1 if self.law else 2

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "rate": self.rate_hz}

    def to_pcm16(self, data: bytes) -> bytes:
        return g711.decode(data, self.law) if self.law else data

    def from_pcm16(self, pcm16: bytes) -> bytes:
        return g711.encode(pcm16, self.law) if self.law else pcm16


_FORMATS = {
    ("audio/pcm", 24_000): AudioFormat("audio/pcm", 24_000),
    ("audio/pcm", 16_000): AudioFormat("audio/pcm", 16_000),
    ("audio/pcmu", 8_000): AudioFormat("audio/pcmu", 8_000),
    ("audio/pcma", 8_000): AudioFormat("audio/pcma", 8_000),
}
_DEFAULT_RATES = {"audio/pcm": 24_000, "audio/pcmu": 8_000, "audio/pcma": 8_000}


# -- parsed client events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientEvent:
    event_id: str | None


@dataclass(frozen=True)
class SessionStart(ClientEvent):
    model: str
    instructions: str | None = None  # None or blank: the server's default
    voice: str | None = None  # None: the server's default
    audio_format: AudioFormat = AudioFormat()
    delegation: dict | None = None  # {"type": "client", ...} or None
    safety_identifier: str | None = None
    store: bool = False


@dataclass(frozen=True)
class SessionUpdate(ClientEvent):
    delegation: dict | None = None
    has_delegation: bool = False  # omitted: keep the current one


@dataclass(frozen=True)
class AudioAppend(ClientEvent):
    audio: str  # base64, decoded by the state machine (it knows the session's format)


@dataclass(frozen=True)
class Mute(ClientEvent):
    muted: bool


@dataclass(frozen=True)
class InstructionsAppend(ClientEvent):
    content: str


@dataclass(frozen=True)
class SessionClose(ClientEvent):
    pass


# -- parsing ----------------------------------------------------------------------------------------


def decode_audio(b64: str, fmt: AudioFormat, event_id: str | None) -> bytes:
    """base64 audio in the session's format -> PCM16 bytes; refuses bad base64 and split samples."""
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise LiveError("invalid_audio", f"audio is not valid base64: {exc}", "audio", event_id) from None
    if len(data) % fmt.bytes_per_sample:
        raise LiveError(
            "invalid_audio",
            f"audio has {len(data)} bytes; {fmt.type} needs {fmt.bytes_per_sample} bytes per sample",
            "audio",
            event_id,
        )
    return fmt.to_pcm16(data)


def _preview(value: Any) -> str:
    """A bounded echo of what the client sent, for error messages (a field may be megabytes)."""
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_fields(obj: dict, allowed: tuple[str, ...], prefix: str, event_id: str | None) -> None:
    for name in obj:
        if name not in allowed:
            name = name if len(name) <= 60 else name[:57] + "..."
            raise LiveError(
                "unknown_parameter",
                f"unknown parameter {prefix}.{name}; known: {', '.join(allowed)}",
                f"{prefix}.{name}",
                event_id,
            )


def _audio_format(fmt: Any, event_id: str | None) -> AudioFormat:
    param = "session.audio.format"
    if not isinstance(fmt, dict):
        raise LiveError(
            "invalid_value",
            f'{param} must be an object like {{"type": "audio/pcm", "rate": 24000}}',
            param,
            event_id,
        )
    _check_fields(fmt, ("type", "rate"), param, event_id)
    kind = opt(fmt, "type", str, f"{param}.type", event_id) or "audio/pcm"
    rate = fmt.get("rate", _DEFAULT_RATES.get(kind))
    found = _FORMATS.get((kind, rate)) if isinstance(rate, int) and not isinstance(rate, bool) else None
    if found is None:
        raise LiveError(
            "unsupported_audio_format",
            f"{param} {_preview(fmt)} is not supported; use audio/pcm at 16000 or 24000 Hz "
            "(PCM16 mono little-endian), or audio/pcmu / audio/pcma at 8000 Hz",
            param,
            event_id,
        )
    return found


def _voice(audio: dict, event_id: str | None) -> str | None:
    param = "session.audio.output"
    out = opt(audio, "output", dict, param, event_id) or {}
    _check_fields(out, ("voice",), param, event_id)
    voice = out.get("voice")
    if voice is None:
        return None
    if isinstance(voice, dict):  # {"id": ...}: a custom voice by id
        _check_fields(voice, ("id",), f"{param}.voice", event_id)
        voice = need(voice, "id", str, f"{param}.voice.id", event_id)
    if not isinstance(voice, str) or not 0 < len(voice) <= MAX_VOICE_CHARS:
        raise LiveError(
            "invalid_value",
            f'{param}.voice must be a voice name or {{"id": NAME}}',
            f"{param}.voice",
            event_id,
        )
    return voice  # which voices the model has is the state machine's to check


def _delegation(value: Any, param: str, event_id: str | None) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise LiveError("invalid_value", f"{param} must be an object or null", param, event_id)
    kind = value.get("type")
    if kind in ("responses", "decisions"):
        raise LiveError(
            "unsupported_feature",
            f"{param}.type {kind!r}: delegation {_NEEDS_TEXT_MODEL}",
            f"{param}.type",
            event_id,
        )
    if kind != "client":
        raise LiveError(
            "invalid_value",
            f'{param}.type must be "client", got {_preview(kind)}',
            f"{param}.type",
            event_id,
        )
    _check_fields(value, ("type", "acknowledgement_delay_ms"), param, event_id)
    delay = opt(value, "acknowledgement_delay_ms", int, f"{param}.acknowledgement_delay_ms", event_id)
    if delay is not None and not 0 <= delay <= 60_000:
        raise LiveError(
            "invalid_value",
            f"{param}.acknowledgement_delay_ms must be within 0..60000",
            f"{param}.acknowledgement_delay_ms",
            event_id,
        )
    return {"type": "client", "acknowledgement_delay_ms": delay}


def _check_triggers(session: dict, event_id: str | None) -> None:
    """Decisions triggers: an empty list (or none) is fine; any trigger needs a text model."""
    if opt(session, "triggers", list, "session.triggers", event_id):
        raise LiveError(
            "unsupported_feature",
            f"session.triggers: Decisions triggers {_NEEDS_TEXT_MODEL}",
            "session.triggers",
            event_id,
        )


def _parse_start(event: dict, event_id: str | None) -> SessionStart:
    session = need(event, "session", dict, "session", event_id)
    _check_fields(session, _SESSION_FIELDS, "session", event_id)
    model = need(session, "model", str, "session.model", event_id)
    if not 0 < len(model) <= MAX_MODEL_CHARS:
        raise LiveError(
            "invalid_value",
            f"session.model must be 1..{MAX_MODEL_CHARS} characters",
            "session.model",
            event_id,
        )
    instructions = opt(session, "instructions", str, "session.instructions", event_id)
    if instructions is not None and len(instructions) > MAX_PROMPT_CHARS:
        raise LiveError(
            "invalid_value",
            f"session.instructions is {len(instructions)} characters; at most {MAX_PROMPT_CHARS}",
            "session.instructions",
            event_id,
        )
    audio = opt(session, "audio", dict, "session.audio", event_id) or {}
    _check_fields(audio, ("format", "output"), "session.audio", event_id)
    fmt = _audio_format(audio["format"], event_id) if audio.get("format") is not None else AudioFormat()
    voice = _voice(audio, event_id)
    if opt(session, "input", list, "session.input", event_id):
        raise LiveError(
            "unsupported_feature",
            "session.input: text history is not supported: the speech model takes no text context",
            "session.input",
            event_id,
        )
    if opt(session, "client", dict, "session.client", event_id) is not None:
        raise LiveError(
            "unsupported_feature",
            "session.client configures WebRTC frontends; this server serves WebSockets only",
            "session.client",
            event_id,
        )
    _check_triggers(session, event_id)
    return SessionStart(
        event_id,
        model=model,
        instructions=instructions,
        voice=voice,
        audio_format=fmt,
        delegation=_delegation(session.get("delegation"), "session.delegation", event_id),
        safety_identifier=opt(session, "safety_identifier", str, "session.safety_identifier", event_id),
        store=bool(opt(session, "store", bool, "session.store", event_id)),
    )


def _parse_update(event: dict, event_id: str | None) -> SessionUpdate:
    session = need(event, "session", dict, "session", event_id)
    for name in session:
        if name in _SESSION_FIELDS and name not in _UPDATE_FIELDS:
            hint = "; use session.instructions.append" if name == "instructions" else ""
            raise LiveError(
                "immutable_parameter",
                f"session.{name} is fixed at session.start and cannot change{hint}",
                f"session.{name}",
                event_id,
            )
    _check_fields(session, _UPDATE_FIELDS, "session", event_id)
    _check_triggers(session, event_id)
    return SessionUpdate(
        event_id,
        delegation=_delegation(session.get("delegation"), "session.delegation", event_id),
        has_delegation="delegation" in session,
    )


def _parse_instructions_append(event: dict, event_id: str | None) -> InstructionsAppend:
    content = need(event, "content", str, "content", event_id)
    if len(content) > MAX_APPEND_CHARS:
        raise LiveError(
            "invalid_value",
            f"content is {len(content)} characters; at most {MAX_APPEND_CHARS}",
            "content",
            event_id,
        )
    if event.get("delegation_id") is not None:
        raise LiveError(
            "invalid_value",
            "delegation_id must be null: this server never delegates, so no delegation exists",
            "delegation_id",
            event_id,
        )
    return InstructionsAppend(event_id, content)


def parse_client_event(data: str | bytes) -> ClientEvent:
    """One websocket message -> a typed client event. Raises LiveError (never anything else)."""
    event, event_id, kind = decode_event_envelope(data, "Live", "session.input_audio.append")
    if kind in UNSUPPORTED_CLIENT_EVENTS:
        raise LiveError("unsupported_event", f"{kind}: {UNSUPPORTED_CLIENT_EVENTS[kind]}", "type", event_id)
    if kind not in CLIENT_EVENTS:
        raise LiveError(
            "unknown_event",
            f"unknown client event type {kind[:60]!r}; supported: {', '.join(CLIENT_EVENTS)}",
            "type",
            event_id,
        )
    if kind == "session.start":
        return _parse_start(event, event_id)
    if kind == "session.update":
        return _parse_update(event, event_id)
    if kind == "session.input_audio.append":
        return AudioAppend(event_id, need(event, "audio", str, "audio", event_id))
    if kind in ("session.input_audio.mute", "session.input_audio.unmute"):
        return Mute(event_id, muted=kind.endswith(".mute"))
    if kind == "session.instructions.append":
        return _parse_instructions_append(event, event_id)
    return SessionClose(event_id)
