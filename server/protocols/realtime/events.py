"""The OpenAI Realtime API (GA) client events, as pure code: parsing and validation.

`parse_client_event(text)` turns one JSON text frame into a typed client event, or raises
`RealtimeError` (code, message, param, event_id), which the state machine
(server/protocols/realtime/state_machine.py) answers with one `error` server event; the session goes on.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, replace
from typing import Any

from audio.frames import SAMPLE_RATE_HZ
from server.protocols.json_frames import InvalidJson, load_object
from server.protocols.native.wire import check_voice_name

BYTES_PER_MS = SAMPLE_RATE_HZ * 2 // 1000  # PCM16 mono
PCM_FORMAT = {"type": "audio/pcm", "rate": SAMPLE_RATE_HZ}
MIN_COMMIT_MS = 100  # same floor as OpenAI: a commit with less audio is refused
MAX_OUTPUT_TOKENS = 4096
MAX_AUDIO_BACKLOG_MS = 60_000  # item audio waiting to be fed at real-time speed, at most

# Client event types of the GA protocol that this server does not implement (answered with an error).
UNSUPPORTED_CLIENT_EVENTS = {
    "conversation.item.delete": "deleting items is not supported: the model's context is its audio stream",
    "conversation.item.retrieve": "retrieving items is not supported: item audio is not kept",
    "output_audio_buffer.clear": "output_audio_buffer.clear is WebRTC/SIP only; stop local playback and "
    "send conversation.item.truncate",
    "transcription_session.update": "transcription-only sessions are not supported",
}
CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "response.create",
    "response.cancel",
)

# Session fields the model cannot honour: accepted, not applied, reported in `warnings`.
_IGNORED_SESSION_FIELDS = {
    "tracing": "tracing is not available on this server",
    "prompt": "prompt templates are not supported: the model takes no text prompt",
    "truncation": "context truncation is not configurable: the model's context is a rolling audio window",
    "include": "logprobs are not available",
    "reasoning": "the model does not reason in text",
    "parallel_tool_calls": "tools are not supported by this speech-to-speech model",
    "tool_choice": "tools are not supported by this speech-to-speech model",
}
_BETA_FIELDS = {
    "turn_detection": "beta field: use session.audio.input.turn_detection",
    "input_audio_transcription": "beta field: use session.audio.input.transcription",
    "input_audio_format": "beta field: use session.audio.input.format",
    "output_audio_format": "beta field: use session.audio.output.format",
    "voice": "beta field: use session.audio.output.voice",
    "modalities": "beta field: use session.output_modalities",
}
_KNOWN_SESSION_FIELDS = {
    "type",
    "object",
    "id",
    "model",
    "audio",
    "instructions",
    "tools",
    "output_modalities",
    "max_output_tokens",
    "expires_at",
    "client_secret",
    *_IGNORED_SESSION_FIELDS,
}


# -- errors -----------------------------------------------------------------------------------------


class RealtimeError(Exception):
    """A client event was refused. Becomes one `error` server event; the session goes on."""

    def __init__(
        self,
        code: str,
        message: str,
        param: str | None = None,
        event_id: str | None = None,
        error_type: str = "invalid_request_error",
    ):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.param = param
        self.event_id = event_id
        self.error_type = error_type

    def body(self) -> dict[str, Any]:
        return {
            "type": self.error_type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": self.event_id,
        }


# -- parsed client events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientEvent:
    event_id: str | None


@dataclass(frozen=True)
class SessionUpdate(ClientEvent):
    changes: dict[str, Any]  # validated: turn_detection, transcription, max_output_tokens, voice...
    warnings: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class AudioAppend(ClientEvent):
    pcm16: bytes


@dataclass(frozen=True)
class AudioCommit(ClientEvent):
    pass


@dataclass(frozen=True)
class AudioClear(ClientEvent):
    pass


@dataclass(frozen=True)
class ItemCreate(ClientEvent):
    item_id: str | None
    previous_item_id: str | None
    pcm16: bytes
    transcript: str | None = None


@dataclass(frozen=True)
class ItemTruncate(ClientEvent):
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True)
class ResponseCreate(ClientEvent):
    metadata: dict[str, str] | None = None
    max_output_tokens: int | None | str = "session"  # "session": use the session's setting
    warnings: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class ResponseCancel(ClientEvent):
    response_id: str | None = None


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


# -- parsing ----------------------------------------------------------------------------------------


def warning(param: str, message: str) -> dict[str, str]:
    return {"param": param, "message": message}


def _need(obj: dict, key: str, kind: type | tuple[type, ...], param: str, event_id: str | None) -> Any:
    if key not in obj:
        raise RealtimeError("missing_field", f"{param} is required", param, event_id)
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise RealtimeError(
            "invalid_value",
            f"{param} must be {_kind_name(kind)}, got {json.dumps(value)[:60]}",
            param,
            event_id,
        )
    return value


def _opt(obj: dict, key: str, kind: type | tuple[type, ...], param: str, event_id: str | None) -> Any:
    if obj.get(key) is None:
        return None
    return _need(obj, key, kind, param, event_id)


def _as_tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        dict: "an object",
        list: "an array",
    }
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def decode_audio(b64: str, param: str, event_id: str | None) -> bytes:
    """base64 PCM16 -> raw bytes; refuses bad base64 and an odd byte count (a split sample)."""
    try:
        pcm = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RealtimeError("invalid_audio", f"{param} is not valid base64: {exc}", param, event_id) from None
    if len(pcm) % 2:
        raise RealtimeError(
            "invalid_audio", f"{param} has {len(pcm)} bytes; PCM16 needs 2 bytes per sample", param, event_id
        )
    return pcm


def _audio_format(fmt: Any, param: str, event_id: str | None) -> None:
    if not isinstance(fmt, dict):
        raise RealtimeError(
            "invalid_value", f"{param} must be an object like {json.dumps(PCM_FORMAT)}", param, event_id
        )
    kind = fmt.get("type", "audio/pcm")
    rate = fmt.get("rate", SAMPLE_RATE_HZ)
    if kind != "audio/pcm" or rate != SAMPLE_RATE_HZ:
        raise RealtimeError(
            "unsupported_audio_format",
            f"{param} {json.dumps(fmt)} is not supported; only audio/pcm at 24000 Hz (PCM16 mono little-endian)",
            param,
            event_id,
        )


def _turn_detection(
    td: Any, current: TurnDetection | None, event_id: str | None, warnings: list
) -> TurnDetection | None:
    param = "session.audio.input.turn_detection"
    if td is None:
        return None
    if not isinstance(td, dict):
        raise RealtimeError("invalid_value", f"{param} must be an object or null", param, event_id)
    kind = td.get("type", "server_vad")
    if kind == "semantic_vad":
        warnings.append(
            warning(
                f"{param}.type", "semantic_vad is served by the acoustic server_vad here (eagerness ignored)"
            )
        )
    elif kind != "server_vad":
        raise RealtimeError(
            "invalid_value",
            f"{param}.type must be server_vad or semantic_vad, got {kind!r}",
            f"{param}.type",
            event_id,
        )
    base = current or TurnDetection()
    changes: dict[str, Any] = {}
    threshold = _opt(td, "threshold", (int, float), f"{param}.threshold", event_id)
    if threshold is not None:
        if not 0.0 < threshold < 1.0:
            raise RealtimeError(
                "invalid_value",
                f"{param}.threshold must be between 0 and 1 (exclusive), got {threshold}",
                f"{param}.threshold",
                event_id,
            )
        changes["threshold"] = float(threshold)
    for name, low, high in (("prefix_padding_ms", 0, 10_000), ("silence_duration_ms", 0, 10_000)):
        value = _opt(td, name, int, f"{param}.{name}", event_id)
        if value is not None:
            if not low <= value <= high:
                raise RealtimeError(
                    "invalid_value",
                    f"{param}.{name} must be within {low}..{high}, got {value}",
                    f"{param}.{name}",
                    event_id,
                )
            changes[name] = value
    for name in ("create_response", "interrupt_response"):
        value = _opt(td, name, bool, f"{param}.{name}", event_id)
        if value is not None:
            changes[name] = value
    if td.get("idle_timeout_ms") is not None:
        warnings.append(warning(f"{param}.idle_timeout_ms", "idle_timeout_ms is not supported"))
    return replace(base, **changes)


def _max_output_tokens(value: Any, param: str, event_id: str | None) -> int | None:
    if value == "inf":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OUTPUT_TOKENS:
        raise RealtimeError(
            "invalid_value",
            f'{param} must be an integer 1..{MAX_OUTPUT_TOKENS} or "inf" '
            "(1 token = one 80 ms frame of speech)",
            param,
            event_id,
        )
    return value


def _output_modalities(value: Any, param: str, event_id: str | None) -> None:
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise RealtimeError("invalid_value", f"{param} must be an array of strings", param, event_id)
    if "audio" not in value:
        raise RealtimeError(
            "unsupported_feature",
            f"{param} {value} is not supported: this speech model always "
            'answers with audio (plus its transcript); use ["audio"]',
            param,
            event_id,
        )


def parse_session_update(
    session: Any, event_id: str | None, current: TurnDetection | None, captions_model: str | None
) -> SessionUpdate:
    """Validate a `session` object. All or nothing: any error refuses the whole update."""
    if not isinstance(session, dict):
        raise RealtimeError("invalid_value", "session must be an object", "session", event_id)
    warnings: list[dict[str, str]] = []
    changes: dict[str, Any] = {}
    kind = session.get("type", "realtime")
    if kind != "realtime":
        raise RealtimeError(
            "unsupported_feature",
            f'session.type {kind!r} is not supported; use "realtime"',
            "session.type",
            event_id,
        )
    if session.get("model") is not None:
        warnings.append(
            warning(
                "session.model",
                "the model is chosen when connecting (query parameter `model`) and cannot change; ignored",
            )
        )
    instructions = _opt(session, "instructions", str, "session.instructions", event_id)
    if instructions is not None:
        changes["instructions"] = instructions  # applied or reported by the state machine (model-dependent)
    tools = _opt(session, "tools", list, "session.tools", event_id)
    if tools:
        warnings.append(
            warning("session.tools", "tools are not supported by this speech-to-speech model; ignored")
        )
    if "output_modalities" in session:
        _output_modalities(session["output_modalities"], "session.output_modalities", event_id)
    if "max_output_tokens" in session:
        changes["max_output_tokens"] = _max_output_tokens(
            session["max_output_tokens"], "session.max_output_tokens", event_id
        )
    for name, reason in _IGNORED_SESSION_FIELDS.items():
        value = session.get(name)
        if value is not None and value not in ("auto", "none", "disabled", [], False):
            warnings.append(warning(f"session.{name}", f"{reason}; ignored"))
    for name in ("input_audio_format", "output_audio_format"):
        # Beta-protocol clients: refuse a non-PCM format rather than misread G.711 bytes as PCM16.
        if session.get(name) not in (None, "pcm16"):
            raise RealtimeError(
                "unsupported_audio_format",
                f"session.{name} {session[name]!r} is not supported; only PCM16 mono at 24000 Hz",
                f"session.{name}",
                event_id,
            )
    for name in sorted(set(session) - _KNOWN_SESSION_FIELDS):
        hint = _BETA_FIELDS.get(name, "unknown field")
        warnings.append(warning(f"session.{name}", f"{hint}; ignored (this server speaks the GA protocol)"))

    audio = _opt(session, "audio", dict, "session.audio", event_id) or {}
    inp = _opt(audio, "input", dict, "session.audio.input", event_id) or {}
    out = _opt(audio, "output", dict, "session.audio.output", event_id) or {}
    if "format" in inp:
        _audio_format(inp["format"], "session.audio.input.format", event_id)
    if "format" in out:
        _audio_format(out["format"], "session.audio.output.format", event_id)
    if "turn_detection" in inp:
        changes["turn_detection"] = _turn_detection(inp["turn_detection"], current, event_id, warnings)
    if "transcription" in inp:
        tr = _opt(inp, "transcription", dict, "session.audio.input.transcription", event_id)
        if tr is None:
            changes["transcription"] = None
        elif captions_model is None:
            warnings.append(
                warning(
                    "session.audio.input.transcription",
                    "user captions are not available on this server; transcription stays off",
                )
            )
        else:
            language = _opt(tr, "language", str, "session.audio.input.transcription.language", event_id)
            if tr.get("prompt"):
                warnings.append(
                    warning(
                        "session.audio.input.transcription.prompt",
                        "transcription prompts are not supported; ignored",
                    )
                )
            if tr.get("model") not in (None, captions_model):
                warnings.append(
                    warning(
                        "session.audio.input.transcription.model", f"captions always use {captions_model}"
                    )
                )
            changes["transcription"] = {"model": captions_model, "language": language, "prompt": None}
    if inp.get("noise_reduction") is not None:
        warnings.append(
            warning(
                "session.audio.input.noise_reduction",
                "noise reduction is not available; the model hears the raw input",
            )
        )
    if out.get("voice") is not None:
        voice = out["voice"]
        if isinstance(voice, dict):  # {"id": ...}: a custom voice by id
            voice = voice.get("id")
        try:
            if not isinstance(voice, str):
                raise ValueError("session.audio.output.voice must be a voice name")
            check_voice_name(voice)
        except ValueError as exc:
            raise RealtimeError("invalid_value", str(exc), "session.audio.output.voice", event_id) from None
        changes["voice"] = voice
    speed = _opt(out, "speed", (int, float), "session.audio.output.speed", event_id)
    if speed is not None and speed != 1.0:
        warnings.append(warning("session.audio.output.speed", "speech speed is fixed at 1.0; ignored"))
    return SessionUpdate(event_id, changes, tuple(warnings))


def _parse_response_create(event: dict, event_id: str | None) -> ResponseCreate:
    params = _opt(event, "response", dict, "response", event_id) or {}
    warnings: list[dict[str, str]] = []
    conversation = params.get("conversation", "auto")
    if conversation not in ("auto", None):
        raise RealtimeError(
            "unsupported_feature",
            'out-of-band responses (conversation != "auto") are not '
            "supported: the model has a single audio stream",
            "response.conversation",
            event_id,
        )
    if params.get("input") is not None:
        raise RealtimeError(
            "unsupported_feature",
            "response.input is not supported: the model answers from what it has heard",
            "response.input",
            event_id,
        )
    if "output_modalities" in params:
        _output_modalities(params["output_modalities"], "response.output_modalities", event_id)
    if params.get("instructions"):
        warnings.append(
            warning(
                "response.instructions",
                "instructions are not supported by this speech-to-speech model; ignored",
            )
        )
    if params.get("tools"):
        warnings.append(
            warning("response.tools", "tools are not supported by this speech-to-speech model; ignored")
        )
    audio = _opt(params, "audio", dict, "response.audio", event_id) or {}
    voice = (_opt(audio, "output", dict, "response.audio.output", event_id) or {}).get("voice")
    if voice is not None:
        warnings.append(warning("response.audio.output.voice", "the voice is fixed by the model; ignored"))
    metadata = _opt(params, "metadata", dict, "response.metadata", event_id)
    max_tokens: int | None | str = "session"
    if "max_output_tokens" in params:
        max_tokens = _max_output_tokens(params["max_output_tokens"], "response.max_output_tokens", event_id)
    return ResponseCreate(event_id, metadata, max_tokens, tuple(warnings))


def _parse_item_create(event: dict, event_id: str | None) -> ItemCreate:
    item = _need(event, "item", dict, "item", event_id)
    item_type = item.get("type", "message")
    if item_type != "message":
        raise RealtimeError(
            "unsupported_feature",
            f"item.type {item_type!r} is not supported: only user audio messages can be added (no tools)",
            "item.type",
            event_id,
        )
    role = item.get("role")
    if role != "user":
        raise RealtimeError(
            "unsupported_feature",
            f"item.role {role!r} is not supported: only user audio "
            "messages can be added (the model takes no text context)",
            "item.role",
            event_id,
        )
    content = _need(item, "content", list, "item.content", event_id)
    if len(content) != 1 or not isinstance(content[0], dict):
        raise RealtimeError(
            "invalid_value", "item.content must hold exactly one input_audio part", "item.content", event_id
        )
    part = content[0]
    if part.get("type") != "input_audio":
        raise RealtimeError(
            "unsupported_feature",
            f"item.content[0].type {part.get('type')!r} is not "
            "supported: the model only hears audio (use input_audio)",
            "item.content[0].type",
            event_id,
        )
    audio = _need(part, "audio", str, "item.content[0].audio", event_id)
    pcm = decode_audio(audio, "item.content[0].audio", event_id)
    if not pcm:
        raise RealtimeError(
            "invalid_audio", "item.content[0].audio is empty", "item.content[0].audio", event_id
        )
    item_id = _opt(item, "id", str, "item.id", event_id)
    previous = _opt(event, "previous_item_id", str, "previous_item_id", event_id)
    transcript = _opt(part, "transcript", str, "item.content[0].transcript", event_id)
    return ItemCreate(event_id, item_id, previous, pcm, transcript)


def decode_event_envelope(data: str | bytes, protocol: str, audio_event: str) -> tuple[dict, str | None, str]:
    """A JSON client event of OpenAI's websocket APIs (Realtime, Live): (the object, its event_id or
    None, its type). Raises RealtimeError for anything else."""
    if isinstance(data, bytes):
        raise RealtimeError(
            "invalid_json",
            f"binary frames are not part of the {protocol} protocol; send JSON text "
            f"events (audio goes base64 in {audio_event})",
        )
    try:
        event = load_object(data)
    except InvalidJson as exc:
        raise RealtimeError(
            "invalid_json", f'a {protocol} client event is a JSON object with a "type"; this message: {exc}'
        ) from None
    raw_id = event.get("event_id")
    event_id = raw_id if isinstance(raw_id, str) else None
    kind = event.get("type")
    if not isinstance(kind, str):
        raise RealtimeError("missing_field", 'a client event needs a string "type"', "type", event_id)
    return event, event_id, kind


def parse_client_event(
    data: str | bytes,
    *,
    current_turn_detection: TurnDetection | None = None,
    captions_model: str | None = None,
) -> ClientEvent:
    """One websocket message -> a typed client event. Raises RealtimeError (never anything else)."""
    event, event_id, kind = decode_event_envelope(data, "Realtime", "input_audio_buffer.append")
    if kind in UNSUPPORTED_CLIENT_EVENTS:
        raise RealtimeError(
            "unsupported_event", f"{kind}: {UNSUPPORTED_CLIENT_EVENTS[kind]}", "type", event_id
        )
    if kind not in CLIENT_EVENTS:
        raise RealtimeError(
            "unknown_event",
            f"unknown client event type {kind!r}; supported: {', '.join(CLIENT_EVENTS)}",
            "type",
            event_id,
        )
    if kind == "session.update":
        return parse_session_update(
            _need(event, "session", dict, "session", event_id),
            event_id,
            current_turn_detection,
            captions_model,
        )
    if kind == "input_audio_buffer.append":
        return AudioAppend(
            event_id, decode_audio(_need(event, "audio", str, "audio", event_id), "audio", event_id)
        )
    if kind == "input_audio_buffer.commit":
        return AudioCommit(event_id)
    if kind == "input_audio_buffer.clear":
        return AudioClear(event_id)
    if kind == "conversation.item.create":
        return _parse_item_create(event, event_id)
    if kind == "conversation.item.truncate":
        item_id = _need(event, "item_id", str, "item_id", event_id)
        content_index = _opt(event, "content_index", int, "content_index", event_id) or 0
        if content_index != 0:
            raise RealtimeError(
                "invalid_value",
                "content_index must be 0 (an assistant item has one audio part)",
                "content_index",
                event_id,
            )
        audio_end_ms = _need(event, "audio_end_ms", int, "audio_end_ms", event_id)
        if audio_end_ms < 0:
            raise RealtimeError(
                "invalid_value", f"audio_end_ms must be >= 0, got {audio_end_ms}", "audio_end_ms", event_id
            )
        return ItemTruncate(event_id, item_id, content_index, audio_end_ms)
    if kind == "response.create":
        return _parse_response_create(event, event_id)
    return ResponseCancel(event_id, _opt(event, "response_id", str, "response_id", event_id))
