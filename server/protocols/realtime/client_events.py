"""The OpenAI Realtime API (GA) client events, as typed schemas (field names as in the openai SDK's
`openai.types.realtime`).

`parse_client_event(text)` turns one JSON text frame into one of the events below, or raises
`RealtimeError` (code, message, param, event_id), which the state machine
(server/protocols/realtime/state_machine.py) answers with one `error` server event; the session goes on.

Tolerant, as Realtime clients need: a session field the model cannot honour (tools, tracing, a speed,
...) is accepted and reported in `warnings`, never refused, because Pipecat and others treat errors as
fatal and always send such fields; so are fields the GA API does not have (with where a beta field
moved). Fields nested deeper that the API does not have are skipped. Refused: whatever would change
what the model hears or says and cannot be served (formats, text items, out-of-band responses).
A field accepted but not applied is marked `NotApplied` (its reason becomes the warning); a new
event is one model, added to `EVENTS`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Discriminator, PlainValidator, Tag, ValidationError, model_validator

from audio.frames import SAMPLE_RATE_HZ
from server.protocols.openai_events import ClientEvent, ClientEvents
from server.protocols.openai_events import EventError as RealtimeError
from server.protocols.schema import (
    MAX_NAME_CHARS,
    Base64Pcm16,
    ImageDataUrl,
    NotApplied,
    Reported,
    Skipped,
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

__all__ = ["RealtimeError", "parse_client_event"]

BYTES_PER_MS = SAMPLE_RATE_HZ * 2 // 1000  # PCM16 mono
PCM_FORMAT = {"type": "audio/pcm", "rate": SAMPLE_RATE_HZ}
MIN_COMMIT_MS = 100  # same floor as OpenAI: a commit with less audio is refused
MAX_OUTPUT_TOKENS = 4096
MAX_AUDIO_BACKLOG_MS = 60_000  # item audio waiting to be fed at real-time speed, at most
# Far beyond any role prompt a model holds (4000): a model without prompts only reports them.
MAX_TEXT_CHARS = 65_536

# Client event types of the GA protocol that this server does not implement (answered with an error).
UNSUPPORTED_CLIENT_EVENTS = {
    "output_audio_buffer.clear": "output_audio_buffer.clear is WebRTC/SIP only; stop local playback and "
    "send conversation.item.truncate",
    "transcription_session.update": "transcription-only sessions are not supported",
}
# Where the fields of the beta protocol went in the GA one, for the warning that reports them.
_BETA_FIELDS = {
    "turn_detection": "beta field: use session.audio.input.turn_detection",
    "input_audio_transcription": "beta field: use session.audio.input.transcription",
    "input_audio_format": "beta field: use session.audio.input.format",
    "output_audio_format": "beta field: use session.audio.output.format",
    "voice": "beta field: use session.audio.output.voice",
    "modalities": "beta field: use session.output_modalities",
}
NO_CAPTIONS = "user captions are not available on this server; transcription stays off"
_NO_TOOLS = "tools are not supported by this speech-to-speech model; ignored"
_ASKS_NOTHING = (None, "auto", "none", "disabled", [], False)  # what a client sends to mean "no thanks"
_FALSY = (None, "", [], {}, False)


def warning(param: str, message: str) -> dict[str, str]:
    return {"param": param, "message": message}


@dataclass(frozen=True)
class TurnDetection:
    """server_vad settings. silence_duration_ms ends a turn; threshold is the VAD's probability cut."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "server_vad",
            "threshold": self.threshold,
            "prefix_padding_ms": self.prefix_padding_ms,
            "silence_duration_ms": self.silence_duration_ms,
            "create_response": self.create_response,
            "interrupt_response": self.interrupt_response,
            "idle_timeout_ms": None,
        }


# -- the session ------------------------------------------------------------------------------------


class PcmFormat(Skipped):
    """`audio/pcm` at 24 kHz (PCM16 mono little-endian), the one format both ways."""

    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000] = 24000

    @model_validator(mode="wrap")
    @classmethod
    def _supported(cls, value: Any, handler):
        if not isinstance(value, dict):
            return handler(value)  # not an object: invalid_value
        try:
            return handler(value)
        except ValidationError:
            raise refuse(
                "unsupported_audio_format",
                f"{{param}} {preview(value)} is not supported; only audio/pcm at 24000 Hz "
                "(PCM16 mono little-endian)",
            ) from None


def _open_fraction(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise refuse("invalid_value", f"{{param}} must be between 0 and 1 (exclusive), got {preview(value)}")
    return value


PaddingMs = integer_in(0, 10_000)


class TurnDetectionConfig(Skipped):
    """`server_vad` settings; a field left out keeps the session's current value."""

    type: Annotated[
        Literal["server_vad", "semantic_vad"],
        NotApplied(
            "semantic_vad is served by the acoustic server_vad here (eagerness ignored)",
            unless=(None, "server_vad"),
        ),
    ] = "server_vad"
    threshold: Annotated[float, AfterValidator(_open_fraction)] | None = None
    prefix_padding_ms: PaddingMs | None = None
    silence_duration_ms: PaddingMs | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: Annotated[Any, NotApplied("idle_timeout_ms is not supported")] = None

    def applied_to(self, current: TurnDetection, warnings: list, *, threshold_applies: bool) -> TurnDetection:
        """`current` with the fields this config sets. threshold_applies: False when the server's VAD
        makes yes/no decisions (webrtcvad), which a threshold cannot tune: reported, not applied."""
        fields = (
            "threshold",
            "prefix_padding_ms",
            "silence_duration_ms",
            "create_response",
            "interrupt_response",
        )
        td = replace(current, **{f: getattr(self, f) for f in fields if getattr(self, f) is not None})
        if not threshold_applies and td.threshold != TurnDetection.threshold:
            warnings.append(
                warning(
                    "session.audio.input.turn_detection.threshold",
                    "this server's VAD (webrtcvad) makes yes/no decisions; threshold only "
                    "applies with `assistant serve --vad silero`; ignored",
                )
            )
            td = replace(td, threshold=TurnDetection.threshold)
        return td


class TranscriptionConfig(Skipped):
    """User captions. The server's captioner does them (its own model), or nobody."""

    model: str | None = None
    language: text(MAX_NAME_CHARS) | None = None
    prompt: Any = None

    def setting(self, captions_model: str, warnings: list) -> dict[str, Any]:
        """What the session reports, with warnings for what the captioner does not take."""
        param = "session.audio.input.transcription"
        if self.prompt not in _FALSY:
            warnings.append(warning(f"{param}.prompt", "transcription prompts are not supported; ignored"))
        if self.model not in (None, captions_model):
            warnings.append(warning(f"{param}.model", f"captions always use {captions_model}"))
        return {"model": captions_model, "language": self.language, "prompt": None}


class AudioInput(Skipped):
    format: null_as_empty(PcmFormat) = PcmFormat()
    turn_detection: TurnDetectionConfig | None = None  # null: manual turns
    transcription: TranscriptionConfig | None = None  # null: off
    noise_reduction: Annotated[
        Any, NotApplied("noise reduction is not available; the model hears the raw input")
    ] = None


class VoiceById(Skipped):
    id: VoiceName


Voice = voice_by_name_or_id(VoiceById)


class AudioOutput(Skipped):
    format: null_as_empty(PcmFormat) = PcmFormat()
    voice: Voice | None = None
    speed: Annotated[
        float | None, NotApplied("speech speed is fixed at 1.0; ignored", unless=(None, 1.0))
    ] = None


class SessionAudio(Skipped):
    input: null_as_empty(AudioInput) = AudioInput()
    output: null_as_empty(AudioOutput) = AudioOutput()


def _max_output_tokens(value: Any) -> int | None:
    if value == "inf":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OUTPUT_TOKENS:
        raise refuse(
            "invalid_value",
            f'{{param}} must be an integer 1..{MAX_OUTPUT_TOKENS} or "inf" (1 token = one 80 ms frame of speech)',
        )
    return value


def _speaks(modalities: list[str]) -> list[str]:
    if "audio" not in modalities:
        raise refuse(
            "unsupported_feature",
            f"{{param}} {preview(modalities)} is not supported: this speech model always answers with "
            'audio (plus its transcript); use ["audio"]',
        )
    return modalities


MaxOutputTokens = Annotated[int | None, PlainValidator(_max_output_tokens)]  # None: "inf"
OutputModalities = Annotated[list[str], AfterValidator(_speaks)]


def _ignored(reason: str) -> NotApplied:
    return NotApplied(f"{reason}; ignored", unless=_ASKS_NOTHING)


def _beta_pcm16(value: Any) -> Any:
    # Beta-protocol clients: refuse a non-PCM format rather than misread G.711 bytes as PCM16.
    if value not in (None, "pcm16"):
        raise refuse(
            "unsupported_audio_format",
            f"{{param}} {preview(value)} is not supported; only PCM16 mono at 24000 Hz",
        )
    return value


def _beta(field: str) -> NotApplied:
    return NotApplied(f"{_BETA_FIELDS[field]}; ignored (this server speaks the GA protocol)")


class RealtimeSession(Reported):
    """The `session` of a session.update. What a field left out configures stays as it is."""

    type: Annotated[
        str,
        refused_unless(
            ("realtime",), "unsupported_feature", '{param} {got} is not supported; use "realtime"'
        ),
    ] = "realtime"
    # what a client echoes back of a session.created: accepted as it is
    object: Any = None
    id: Any = None
    expires_at: Any = None
    client_secret: Any = None
    model: Annotated[
        Any,
        NotApplied(
            "the model is chosen when connecting (query parameter `model`) and cannot change; ignored"
        ),
    ] = None
    instructions: text(MAX_TEXT_CHARS) | None = None  # the state machine applies or reports it
    tools: Annotated[list[Any] | None, NotApplied(_NO_TOOLS, unless=(None, []))] = None
    output_modalities: OutputModalities | None = None
    max_output_tokens: MaxOutputTokens = None
    tracing: Annotated[Any, _ignored("tracing is not available on this server")] = None
    prompt: Annotated[Any, _ignored("prompt templates are not supported: the model takes no text prompt")] = (
        None
    )
    truncation: Annotated[
        Any, _ignored("context truncation is not configurable: the model's context is a rolling audio window")
    ] = None
    include: Annotated[Any, _ignored("logprobs are not available")] = None
    reasoning: Annotated[Any, _ignored("the model does not reason in text")] = None
    parallel_tool_calls: Annotated[
        Any, _ignored("tools are not supported by this speech-to-speech model")
    ] = None
    tool_choice: Annotated[Any, _ignored("tools are not supported by this speech-to-speech model")] = None
    input_audio_format: Annotated[Any, AfterValidator(_beta_pcm16), _beta("input_audio_format")] = None
    output_audio_format: Annotated[Any, AfterValidator(_beta_pcm16), _beta("output_audio_format")] = None
    audio: null_as_empty(SessionAudio) = SessionAudio()

    def warnings(self) -> list[dict[str, str]]:
        """What the update asks for that is not applied, whatever the model (the state machine adds
        what depends on it: prompts, captions, the VAD's threshold)."""
        out = [warning(param, reason) for param, reason in not_applied(self, "session")]
        for name in sorted(self.model_extra or {}):
            hint = _BETA_FIELDS.get(name, "unknown field")
            out.append(warning(f"session.{name}", f"{hint}; ignored (this server speaks the GA protocol)"))
        return out


# -- responses and items ----------------------------------------------------------------------------


class ResponseAudioOutput(Skipped):
    voice: Annotated[Any, NotApplied("the voice is fixed by the model; ignored")] = None


class ResponseAudio(Skipped):
    output: null_as_empty(ResponseAudioOutput) = ResponseAudioOutput()


class ResponseParams(Skipped):
    conversation: Annotated[
        Any,
        refused_unless(
            ("auto", None),
            "unsupported_feature",
            'out-of-band responses (conversation != "auto") are not supported: the model has a single audio stream',
        ),
    ] = "auto"
    input: Annotated[
        Any,
        refused_unless(
            (None,),
            "unsupported_feature",
            "{param} is not supported: the model answers from what it has heard",
        ),
    ] = None
    output_modalities: OutputModalities | None = None
    instructions: Annotated[
        Any,
        NotApplied("instructions are not supported by this speech-to-speech model; ignored", unless=_FALSY),
    ] = None
    tools: Annotated[Any, NotApplied(_NO_TOOLS, unless=_FALSY)] = None
    audio: null_as_empty(ResponseAudio) = ResponseAudio()
    metadata: dict[str, str] | None = None
    max_output_tokens: MaxOutputTokens = None


def _not_empty(pcm16: bytes) -> bytes:
    if not pcm16:
        raise refuse("invalid_audio", "{param} is empty")
    return pcm16


class InputAudioPart(Skipped):
    type: Annotated[
        str,
        refused_unless(
            ("input_audio",),
            "unsupported_feature",
            "{param} {got} is not supported: the model hears audio and sees images "
            "(use input_audio or input_image)",
        ),
    ]
    audio: Annotated[Base64Pcm16, AfterValidator(_not_empty)]
    transcript: text(MAX_TEXT_CHARS) | None = None


class InputImagePart(Skipped):
    """An image the model sees from its next frames on (models that take images)."""

    type: Literal["input_image"]
    image_url: ImageDataUrl  # data:image/jpeg;base64,... (decoded and checked off the event loop)
    detail: Literal["auto", "low", "high"] | None = None  # accepted; the model always sees 448 x 448


UserPart = Annotated[
    Annotated[InputAudioPart, Tag("audio")] | Annotated[InputImagePart, Tag("image")],
    Discriminator(
        lambda part: "image" if isinstance(part, dict) and part.get("type") == "input_image" else "audio"
    ),
]


def _audio_and_or_image(parts: list) -> list:
    kinds = [type(part) for part in parts]
    if not parts or kinds.count(InputAudioPart) > 1 or kinds.count(InputImagePart) > 1:
        raise refuse(
            "invalid_value", "{param} must hold one input_audio part, one input_image part, or one of each"
        )
    return parts


class UserItem(Skipped):
    """A user message of audio, an image, or both: the only item a client may add (no tools, no text)."""

    type: Annotated[
        str,
        refused_unless(
            ("message",),
            "unsupported_feature",
            "{param} {got} is not supported: only user messages of audio and images can be added (no tools)",
        ),
    ] = "message"
    role: Annotated[
        str,
        refused_unless(
            ("user",),
            "unsupported_feature",
            "{param} {got} is not supported: only user messages of audio and images can be added "
            "(the model takes no text context)",
        ),
    ]
    content: Annotated[list[UserPart], AfterValidator(_audio_and_or_image)]
    id: str | None = None

    def part(self, kind: type[InputAudioPart] | type[InputImagePart]) -> tuple[int, Any]:
        """(index, part) of the item's part of that kind, or (-1, None)."""
        return next(((i, p) for i, p in enumerate(self.content) if isinstance(p, kind)), (-1, None))


# -- the client events ------------------------------------------------------------------------------


class SessionUpdate(ClientEvent):
    type: Literal["session.update"]
    session: RealtimeSession


class AudioAppend(ClientEvent):
    type: Literal["input_audio_buffer.append"]
    audio: Base64Pcm16  # the PCM16 bytes


class AudioCommit(ClientEvent):
    type: Literal["input_audio_buffer.commit"]


class AudioClear(ClientEvent):
    type: Literal["input_audio_buffer.clear"]


class ItemCreate(ClientEvent):
    type: Literal["conversation.item.create"]
    item: UserItem
    previous_item_id: str | None = None


class ItemDelete(ClientEvent):
    """Only an image item can be deleted (the model stops seeing it); audio is in the model's context."""

    type: Literal["conversation.item.delete"]
    item_id: str


def _not_negative(value: int) -> int:
    if value < 0:
        raise refuse("invalid_value", f"{{param}} must be >= 0, got {preview(value)}")
    return value


class ItemTruncate(ClientEvent):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: Annotated[
        int | None,
        refused_unless(
            (None, 0), "invalid_value", "{param} must be 0 (an assistant item has one audio part)"
        ),
    ] = 0
    audio_end_ms: Annotated[int, AfterValidator(_not_negative)]


class ItemRetrieve(ClientEvent):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ResponseCreate(ClientEvent):
    type: Literal["response.create"]
    response: null_as_empty(ResponseParams) = ResponseParams()

    @property
    def max_output_tokens(self) -> int | None | str:
        """The response's limit: a number, None ("inf"), or "session" (the session's setting)."""
        return (
            self.response.max_output_tokens
            if "max_output_tokens" in self.response.model_fields_set
            else "session"
        )

    def warnings(self) -> list[dict[str, str]]:
        return [warning(param, reason) for param, reason in not_applied(self.response, "response")]


class ResponseCancel(ClientEvent):
    type: Literal["response.cancel"]
    response_id: str | None = None


EVENTS = ClientEvents(
    (
        SessionUpdate,
        AudioAppend,
        AudioCommit,
        AudioClear,
        ItemCreate,
        ItemDelete,
        ItemTruncate,
        ItemRetrieve,
        ResponseCreate,
        ResponseCancel,
    ),
    UNSUPPORTED_CLIENT_EVENTS,
    protocol="Realtime",
    audio_event="input_audio_buffer.append",
)
CLIENT_EVENTS = EVENTS.models


def parse_client_event(data: str | bytes) -> ClientEvent:
    """One websocket message -> a typed client event. Raises RealtimeError (never anything else)."""
    return EVENTS.parse(data)
