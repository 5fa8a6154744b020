"""The OpenAI Live API client events, as typed schemas (field names as in the openai SDK's
`openai.types.live`).

`parse_client_event(text)` turns one JSON text frame of a primary Live WebSocket into one of the
events below, or raises `LiveError` (code, message, param, the client's event_id), which the state
machine (server/protocols/live/state_machine.py) answers with one `error` server event; the session
goes on.

The session configuration is strict, as OpenAI's is: an unknown field is an `unknown_parameter`
error, not a silent no-op (the events around it skip what they do not name). An option this server
cannot honour but that need not stop a call (Responses or Decisions delegation, triggers, text
history, a WebRTC frontend's settings, `store`) is accepted, marked `NotApplied`, and reported in an
`info` event: frameworks send them by default and treat an error as a failed call. Refused, with a
typed error that says so (`refused_unless`), is only what would make the call meaningless (an audio
format it cannot play). Moving an option from one to the other is a change of its annotation; a new
event is one model, added to `EVENTS`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ValidationError, model_validator

from assistant.engine import MAX_PROMPT_CHARS
from audio import g711
from server.protocols.openai_events import ClientEvent, ClientEvents
from server.protocols.openai_events import EventError as LiveError
from server.protocols.schema import (
    Base64Audio,
    NotApplied,
    Refused,
    VoiceName,
    integer_in,
    not_applied,
    null_as_empty,
    preview,
    refuse,
    refused_unless,
    text,
    voice_by_name_or_id,
)

__all__ = ["AudioFormat", "LiveError", "OPENAI_VOICES", "parse_client_event"]

MAX_MODEL_CHARS = 200
MAX_APPEND_CHARS = 2000  # one session.instructions.append (OpenAI: 500 tokens)

# The built-in voices of OpenAI's Live models: a client written for OpenAI names one of these.
OPENAI_VOICES = frozenset(
    "alloy ash ballad beacon bossa cedar cinder coral delta echo gleam marin meridian quartz ripple "
    "sage shida shimmer stone tempo verse vesper willow".split()
)

_NEEDS_TEXT_MODEL = (
    "needs an external text model (Responses or Decisions delegation); this server runs a speech model only"
)
_NO_DELEGATION = "no delegation is ever made, so none exists to"
# Client event types of the Live API this server refuses (answered with an error; the session goes on).
UNSUPPORTED_CLIENT_EVENTS = {
    "response.create": f"responses {_NEEDS_TEXT_MODEL}; {_NO_DELEGATION} continue",
    "response.item.create": f"Responses items {_NEEDS_TEXT_MODEL}; {_NO_DELEGATION} answer",
    "decision.create": f"decisions {_NEEDS_TEXT_MODEL}",
    "decision.item.create": f"decision items {_NEEDS_TEXT_MODEL}",
    "decision.item.delete": f"decision items {_NEEDS_TEXT_MODEL}",
    "session.output_audio.fixture.play": "audio fixtures are not supported: the model's own voice is the output",
    "transport.dtmf.send": "DTMF is SIP only; this is a WebSocket session",
}
# What an `info` event says of text context appended mid-session (thinking, commentary).
NO_TEXT_CONTEXT = (
    "the speech model takes no text context mid-session (it hears audio only); "
    "accepted, not applied: the session goes on without it"
)


# -- the session ------------------------------------------------------------------------------------


_RATES_HZ = {"audio/pcm": (24_000, 16_000), "audio/pcmu": (8_000,), "audio/pcma": (8_000,)}


class AudioFormat(Refused):
    """What the session's audio is on the wire, both ways: PCM16 at 16 or 24 kHz, or G.711 at 8 kHz."""

    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: int | None = None  # None: the type's own (24000 for PCM)

    @model_validator(mode="wrap")
    @classmethod
    def _supported(cls, value: Any, handler):
        if not isinstance(value, dict):
            return handler(value)  # not an object: invalid_value
        try:
            fmt = handler({name: v for name, v in value.items() if v is not None})  # null: the default
        except ValidationError as exc:
            if any(e["type"] == "extra_forbidden" for e in exc.errors()):
                raise
            fmt = None
        if fmt is None or fmt.rate_hz not in _RATES_HZ[fmt.type]:
            raise refuse(
                "unsupported_audio_format",
                f"{{param}} {preview(value)} is not supported; use audio/pcm at 16000 or 24000 Hz "
                "(PCM16 mono little-endian), or audio/pcmu / audio/pcma at 8000 Hz",
            )
        return fmt

    @property
    def rate_hz(self) -> int:
        return _RATES_HZ[self.type][0] if self.rate is None else self.rate

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


class VoiceById(Refused):
    id: VoiceName


Voice = voice_by_name_or_id(VoiceById)  # which voices the model has is the state machine's to check


class AudioOutput(Refused):
    voice: Voice | None = None


class SessionAudio(Refused):
    format: AudioFormat | None = None  # None: audio/pcm at 24 kHz
    output: null_as_empty(AudioOutput) = AudioOutput()


class Delegation(Refused):
    """Where delegated work goes. This server never delegates, so no `session.delegation.created`
    comes: `client` is what it does anyway; `responses` and `decisions` are accepted and not applied
    (the speech model answers by itself). Their backend's settings are not this server's to check."""

    type: Annotated[
        Literal["client", "responses", "decisions"],
        NotApplied(
            f"delegation {_NEEDS_TEXT_MODEL}; the speech model answers by itself and no "
            "session.delegation.created will come",
            unless=("client",),
        ),
    ]
    acknowledgement_delay_ms: integer_in(0, 60_000) | None = None
    responses: dict[str, Any] | None = None
    decisions: dict[str, Any] | None = None

    @property
    def applied(self) -> dict[str, Any] | None:
        """What the session reports: the client delegation it holds to, or None (none applies)."""
        if self.type != "client":
            return None
        return {"type": "client", "acknowledgement_delay_ms": self.acknowledgement_delay_ms}


Triggers = Annotated[
    list[Any] | None,
    NotApplied(f"Decisions triggers {_NEEDS_TEXT_MODEL}; they never fire", unless=(None, [])),
]


def _model_name(value: str) -> str:
    if not 0 < len(value) <= MAX_MODEL_CHARS:
        raise refuse("invalid_value", f"{{param}} must be 1..{MAX_MODEL_CHARS} characters")
    return value


class LiveSession(Refused):
    """The `session` of a session.start: fixed for the session's life, but `delegation` and `triggers`."""

    model: Annotated[str, AfterValidator(_model_name)]  # any name: echoed back
    instructions: text(MAX_PROMPT_CHARS) | None = None  # None or blank: the server's default
    audio: null_as_empty(SessionAudio) = SessionAudio()
    delegation: Delegation | None = None
    input: Annotated[
        list[Any] | None,
        NotApplied(
            "text history is not applied: the speech model takes no text context and starts from its prompt",
            unless=(None, []),
        ),
    ] = None
    client: Annotated[
        dict[str, Any] | None,
        NotApplied("it configures WebRTC frontends; this server serves WebSockets only"),
    ] = None
    safety_identifier: str | None = None
    store: Annotated[
        bool | None,
        NotApplied(
            "sessions are not stored for forking or download here; the server's operator can keep "
            "recordings with `assistant serve --record DIR`",
            unless=(None, False),
        ),
    ] = None
    triggers: Triggers = None

    @property
    def audio_format(self) -> AudioFormat:
        return self.audio.format or AudioFormat()

    def notices(self) -> list[tuple[str, str]]:
        return notices(self)


def notices(session: Refused) -> list[tuple[str, str]]:
    """(code, message) of an `info` event for each field of a session.start or session.update
    accepted but not applied: the code is `<session field>_not_supported`."""
    return [(f"{param.split('.')[1]}_not_supported", why) for param, why in not_applied(session, "session")]


_UPDATABLE = ("delegation", "triggers")


class LiveSessionUpdate(Refused):
    """The `session` of a session.update: a field left out stays as it is."""

    delegation: Delegation | None = None
    triggers: Triggers = None

    @model_validator(mode="before")
    @classmethod
    def _startup_fields_are_fixed(cls, value: Any) -> Any:
        for name in value if isinstance(value, dict) else ():
            if name in LiveSession.model_fields and name not in _UPDATABLE:
                hint = "; use session.instructions.append" if name == "instructions" else ""
                raise refuse(
                    "immutable_parameter",
                    f"{{param}} is fixed at session.start and cannot change{hint}",
                    field=name,
                )
        return value


# -- the client events ------------------------------------------------------------------------------


class SessionStart(ClientEvent):
    type: Literal["session.start"]
    session: LiveSession


class SessionUpdate(ClientEvent):
    type: Literal["session.update"]
    session: LiveSessionUpdate


class AudioAppend(ClientEvent):
    type: Literal["session.input_audio.append"]
    audio: Base64Audio  # the bytes, in the session's format (the state machine knows it)


class Mute(ClientEvent):
    type: Literal["session.input_audio.mute", "session.input_audio.unmute"]

    @property
    def muted(self) -> bool:
        return self.type == "session.input_audio.mute"


class InstructionsAppend(ClientEvent):
    type: Literal["session.instructions.append"]
    content: text(MAX_APPEND_CHARS)
    delegation_id: Annotated[
        Any,
        refused_unless(
            (None,),
            "invalid_value",
            "{param} must be null: this server never delegates, so no delegation exists",
        ),
    ] = None


class ContextAppend(ClientEvent):
    """Thinking or commentary: text context for the model, which takes none (accepted, not applied)."""

    type: Literal["session.thinking.append", "session.commentary.append"]
    content: text(MAX_APPEND_CHARS)
    delegation_id: str | None = None

    @property
    def kind(self) -> str:
        return self.type.split(".")[1]


class SessionClose(ClientEvent):
    type: Literal["session.close"]


EVENTS = ClientEvents(
    (SessionStart, SessionUpdate, AudioAppend, Mute, InstructionsAppend, ContextAppend, SessionClose),
    UNSUPPORTED_CLIENT_EVENTS,
    protocol="Live",
    audio_event="session.input_audio.append",
)
CLIENT_EVENTS = EVENTS.models


def parse_client_event(data: str | bytes) -> ClientEvent:
    """One websocket message -> a typed client event. Raises LiveError (never anything else)."""
    return EVENTS.parse(data)


def decode_audio(data: bytes, fmt: AudioFormat, event_id: str | None) -> bytes:
    """Audio in the session's format -> PCM16 bytes; refuses split samples."""
    if len(data) % fmt.bytes_per_sample:
        raise LiveError(
            "invalid_audio",
            f"audio has {len(data)} bytes; {fmt.type} needs {fmt.bytes_per_sample} bytes per sample",
            "audio",
            event_id,
        )
    return fmt.to_pcm16(data)
