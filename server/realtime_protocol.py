"""The OpenAI Realtime API (GA) on `/v1/realtime`, as pure code: no sockets, no clocks, no threads.

- `parse_client_event(text)` turns one JSON text frame into a typed client event, or raises
  `RealtimeError` (code, message, param, event_id) that becomes an `error` server event.
- `RealtimeConversation` is the response/item state machine. It is fed client events and what the
  core reports (user speech started/stopped on the input timeline, one output frame of assistant
  audio with its speaking flag, text pieces, user captions) and returns, in order, server events
  (plain dicts, ready for `json.dumps`) and `Action`s for the adapter to carry out on the session
  (push audio, force silence, reconfigure VAD and captions).

How a full-duplex model maps onto turns (docs/realtime.md says it for users):
- The model hears every appended sample as it arrives; commit/clear only shape conversation items.
- A response is one contiguous stretch of assistant speech as the conversation core reports it
  (assistant/conversation/turns.py): it opens on the first speaking frame and closes when the core
  ends the stretch after its hangover. Quiet frames inside a stretch are sent (they are pauses
  between words); quiet frames at its tail and outside responses are never sent.
- `create_response: false` or `turn_detection: null`: the engine is held silent except while a
  response the client asked for (`response.create`) is open.
- `interrupt_response`: the core's barge-in (user speech over the assistant's, detected once, in
  the core) cancels the open response, drops the rest of its stretch, and holds the engine silent
  until the user's speech stops; a user turn that starts before a requested response has begun
  cancels that response.
- `response.cancel` and `max_output_tokens` (1 token = one 80 ms frame) cut the stretch and keep the
  engine silent until the user's next turn (or the next `response.create`).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field, replace
from typing import Any

SAMPLE_RATE_HZ = 24_000
FRAME_MS = 80
BYTES_PER_MS = SAMPLE_RATE_HZ * 2 // 1000  # PCM16 mono
PCM_FORMAT = {"type": "audio/pcm", "rate": SAMPLE_RATE_HZ}
MIN_COMMIT_MS = 100  # same floor as OpenAI: a commit with less audio is refused
MAX_OUTPUT_TOKENS = 4096

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
    "type", "object", "id", "model", "audio", "instructions", "tools", "output_modalities",
    "max_output_tokens", "expires_at", "client_secret", *_IGNORED_SESSION_FIELDS,
}


# -- errors -----------------------------------------------------------------------------------------


class RealtimeError(Exception):
    """A client event was refused. Becomes one `error` server event; the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None, event_id: str | None = None,
                 error_type: str = "invalid_request_error"):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.param = param
        self.event_id = event_id
        self.error_type = error_type

    def body(self) -> dict[str, Any]:
        return {"type": self.error_type, "code": self.code, "message": self.message, "param": self.param,
                "event_id": self.event_id}


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
        return {"type": "server_vad", "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms, "create_response": self.create_response,
                "interrupt_response": self.interrupt_response, "idle_timeout_ms": None}


# -- parsing ----------------------------------------------------------------------------------------


def _warn(param: str, message: str) -> dict[str, str]:
    return {"param": param, "message": message}


def _need(obj: dict, key: str, kind: type | tuple[type, ...], param: str, event_id: str | None) -> Any:
    if key not in obj:
        raise RealtimeError("missing_field", f"{param} is required", param, event_id)
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise RealtimeError("invalid_value", f"{param} must be {_kind_name(kind)}, got {json.dumps(value)[:60]}",
                            param, event_id)
    return value


def _opt(obj: dict, key: str, kind: type | tuple[type, ...], param: str, event_id: str | None) -> Any:
    if obj.get(key) is None:
        return None
    return _need(obj, key, kind, param, event_id)


def _as_tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", dict: "an object",
             list: "an array"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def decode_audio(b64: str, param: str, event_id: str | None) -> bytes:
    """base64 PCM16 -> raw bytes; refuses bad base64 and an odd byte count (a split sample)."""
    try:
        pcm = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RealtimeError("invalid_audio", f"{param} is not valid base64: {exc}", param, event_id) from None
    if len(pcm) % 2:
        raise RealtimeError("invalid_audio", f"{param} has {len(pcm)} bytes; PCM16 needs 2 bytes per sample",
                            param, event_id)
    return pcm


def _audio_format(fmt: Any, param: str, event_id: str | None) -> None:
    if not isinstance(fmt, dict):
        raise RealtimeError("invalid_value", f"{param} must be an object like {json.dumps(PCM_FORMAT)}",
                            param, event_id)
    kind = fmt.get("type", "audio/pcm")
    rate = fmt.get("rate", SAMPLE_RATE_HZ)
    if kind != "audio/pcm" or rate != SAMPLE_RATE_HZ:
        raise RealtimeError(
            "unsupported_audio_format",
            f"{param} {json.dumps(fmt)} is not supported; only audio/pcm at 24000 Hz (PCM16 mono little-endian)",
            param, event_id)


def _turn_detection(td: Any, current: TurnDetection | None, event_id: str | None,
                    warnings: list) -> TurnDetection | None:
    param = "session.audio.input.turn_detection"
    if td is None:
        return None
    if not isinstance(td, dict):
        raise RealtimeError("invalid_value", f"{param} must be an object or null", param, event_id)
    kind = td.get("type", "server_vad")
    if kind == "semantic_vad":
        warnings.append(_warn(f"{param}.type", "semantic_vad is served by the acoustic server_vad here "
                                                "(eagerness ignored)"))
    elif kind != "server_vad":
        raise RealtimeError("invalid_value", f"{param}.type must be server_vad or semantic_vad, got {kind!r}",
                            f"{param}.type", event_id)
    base = current or TurnDetection()
    changes: dict[str, Any] = {}
    threshold = _opt(td, "threshold", (int, float), f"{param}.threshold", event_id)
    if threshold is not None:
        if not 0.0 < threshold < 1.0:
            raise RealtimeError("invalid_value", f"{param}.threshold must be between 0 and 1 (exclusive), "
                                f"got {threshold}", f"{param}.threshold", event_id)
        changes["threshold"] = float(threshold)
    for name, low, high in (("prefix_padding_ms", 0, 10_000), ("silence_duration_ms", 0, 10_000)):
        value = _opt(td, name, int, f"{param}.{name}", event_id)
        if value is not None:
            if not low <= value <= high:
                raise RealtimeError("invalid_value", f"{param}.{name} must be within {low}..{high}, got {value}",
                                    f"{param}.{name}", event_id)
            changes[name] = value
    for name in ("create_response", "interrupt_response"):
        value = _opt(td, name, bool, f"{param}.{name}", event_id)
        if value is not None:
            changes[name] = value
    if td.get("idle_timeout_ms") is not None:
        warnings.append(_warn(f"{param}.idle_timeout_ms", "idle_timeout_ms is not supported"))
    return replace(base, **changes)


def _max_output_tokens(value: Any, param: str, event_id: str | None) -> int | None:
    if value == "inf":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OUTPUT_TOKENS:
        raise RealtimeError("invalid_value", f"{param} must be an integer 1..{MAX_OUTPUT_TOKENS} or \"inf\" "
                            "(1 token = one 80 ms frame of speech)", param, event_id)
    return value


def _output_modalities(value: Any, param: str, event_id: str | None) -> None:
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise RealtimeError("invalid_value", f"{param} must be an array of strings", param, event_id)
    if "audio" not in value:
        raise RealtimeError("unsupported_feature", f"{param} {value} is not supported: this speech model always "
                            "answers with audio (plus its transcript); use [\"audio\"]", param, event_id)


def parse_session_update(session: Any, event_id: str | None, current: TurnDetection | None,
                         captions_model: str | None) -> SessionUpdate:
    """Validate a `session` object. All or nothing: any error refuses the whole update."""
    if not isinstance(session, dict):
        raise RealtimeError("invalid_value", "session must be an object", "session", event_id)
    warnings: list[dict[str, str]] = []
    changes: dict[str, Any] = {}
    kind = session.get("type", "realtime")
    if kind != "realtime":
        raise RealtimeError("unsupported_feature", f"session.type {kind!r} is not supported; use \"realtime\"",
                            "session.type", event_id)
    if session.get("model") is not None:
        warnings.append(_warn("session.model", "the model is chosen when connecting (query parameter `model`) "
                                               "and cannot change; ignored"))
    instructions = _opt(session, "instructions", str, "session.instructions", event_id)
    if instructions:
        warnings.append(_warn("session.instructions", "instructions are not supported: this speech-to-speech "
                                                      "model takes no text prompt; ignored"))
    tools = _opt(session, "tools", list, "session.tools", event_id)
    if tools:
        warnings.append(_warn("session.tools", "tools are not supported by this speech-to-speech model; ignored"))
    if "output_modalities" in session:
        _output_modalities(session["output_modalities"], "session.output_modalities", event_id)
    if "max_output_tokens" in session:
        changes["max_output_tokens"] = _max_output_tokens(session["max_output_tokens"],
                                                          "session.max_output_tokens", event_id)
    for name, reason in _IGNORED_SESSION_FIELDS.items():
        value = session.get(name)
        if value is not None and value not in ("auto", "none", "disabled", [], False):
            warnings.append(_warn(f"session.{name}", f"{reason}; ignored"))
    for name in ("input_audio_format", "output_audio_format"):
        # Beta-protocol clients: refuse a non-PCM format rather than misread G.711 bytes as PCM16.
        if session.get(name) not in (None, "pcm16"):
            raise RealtimeError("unsupported_audio_format", f"session.{name} {session[name]!r} is not supported; "
                                "only PCM16 mono at 24000 Hz", f"session.{name}", event_id)
    for name in sorted(set(session) - _KNOWN_SESSION_FIELDS):
        hint = _BETA_FIELDS.get(name, "unknown field")
        warnings.append(_warn(f"session.{name}", f"{hint}; ignored (this server speaks the GA protocol)"))

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
            warnings.append(_warn("session.audio.input.transcription", "user captions are not available on this "
                                                                       "server; transcription stays off"))
        else:
            language = _opt(tr, "language", str, "session.audio.input.transcription.language", event_id)
            if tr.get("prompt"):
                warnings.append(_warn("session.audio.input.transcription.prompt", "transcription prompts are "
                                                                                  "not supported; ignored"))
            if tr.get("model") not in (None, captions_model):
                warnings.append(_warn("session.audio.input.transcription.model",
                                      f"captions always use {captions_model}"))
            changes["transcription"] = {"model": captions_model, "language": language, "prompt": None}
    if inp.get("noise_reduction") is not None:
        warnings.append(_warn("session.audio.input.noise_reduction", "noise reduction is not available; the "
                                                                     "model hears the raw input"))
    if out.get("voice") is not None:
        changes["voice"] = out["voice"]
    speed = _opt(out, "speed", (int, float), "session.audio.output.speed", event_id)
    if speed is not None and speed != 1.0:
        warnings.append(_warn("session.audio.output.speed", "speech speed is fixed at 1.0; ignored"))
    return SessionUpdate(event_id, changes, tuple(warnings))


def _parse_response_create(event: dict, event_id: str | None) -> ResponseCreate:
    params = _opt(event, "response", dict, "response", event_id) or {}
    warnings: list[dict[str, str]] = []
    conversation = params.get("conversation", "auto")
    if conversation not in ("auto", None):
        raise RealtimeError("unsupported_feature", "out-of-band responses (conversation != \"auto\") are not "
                            "supported: the model has a single audio stream", "response.conversation", event_id)
    if params.get("input") is not None:
        raise RealtimeError("unsupported_feature", "response.input is not supported: the model answers from what "
                            "it has heard", "response.input", event_id)
    if "output_modalities" in params:
        _output_modalities(params["output_modalities"], "response.output_modalities", event_id)
    if params.get("instructions"):
        warnings.append(_warn("response.instructions", "instructions are not supported by this "
                                                       "speech-to-speech model; ignored"))
    if params.get("tools"):
        warnings.append(_warn("response.tools", "tools are not supported by this speech-to-speech model; "
                                                "ignored"))
    voice = ((params.get("audio") or {}).get("output") or {}).get("voice")
    if voice is not None:
        warnings.append(_warn("response.audio.output.voice", "the voice is fixed by the model; ignored"))
    metadata = _opt(params, "metadata", dict, "response.metadata", event_id)
    max_tokens: int | None | str = "session"
    if "max_output_tokens" in params:
        max_tokens = _max_output_tokens(params["max_output_tokens"], "response.max_output_tokens", event_id)
    return ResponseCreate(event_id, metadata, max_tokens, tuple(warnings))


def _parse_item_create(event: dict, event_id: str | None) -> ItemCreate:
    item = _need(event, "item", dict, "item", event_id)
    item_type = item.get("type", "message")
    if item_type != "message":
        raise RealtimeError("unsupported_feature", f"item.type {item_type!r} is not supported: only user audio "
                            "messages can be added (no tools)", "item.type", event_id)
    role = item.get("role")
    if role != "user":
        raise RealtimeError("unsupported_feature", f"item.role {role!r} is not supported: only user audio "
                            "messages can be added (the model takes no text context)", "item.role", event_id)
    content = _need(item, "content", list, "item.content", event_id)
    if len(content) != 1 or not isinstance(content[0], dict):
        raise RealtimeError("invalid_value", "item.content must hold exactly one input_audio part",
                            "item.content", event_id)
    part = content[0]
    if part.get("type") != "input_audio":
        raise RealtimeError("unsupported_feature", f"item.content[0].type {part.get('type')!r} is not "
                            "supported: the model only hears audio (use input_audio)", "item.content[0].type",
                            event_id)
    audio = _need(part, "audio", str, "item.content[0].audio", event_id)
    pcm = decode_audio(audio, "item.content[0].audio", event_id)
    if not pcm:
        raise RealtimeError("invalid_audio", "item.content[0].audio is empty", "item.content[0].audio", event_id)
    item_id = _opt(item, "id", str, "item.id", event_id)
    previous = _opt(event, "previous_item_id", str, "previous_item_id", event_id)
    transcript = _opt(part, "transcript", str, "item.content[0].transcript", event_id)
    return ItemCreate(event_id, item_id, previous, pcm, transcript)


def parse_client_event(data: str | bytes, *, current_turn_detection: TurnDetection | None = None,
                       captions_model: str | None = None) -> ClientEvent:
    """One websocket message -> a typed client event. Raises RealtimeError (never anything else)."""
    if isinstance(data, bytes):
        raise RealtimeError("invalid_json", "binary frames are not part of the Realtime protocol; send JSON text "
                            "events (audio goes base64 in input_audio_buffer.append)")
    try:
        event = json.loads(data)
    except RecursionError:
        raise RealtimeError("invalid_json", "the message nests too deeply to be a Realtime event") from None
    except ValueError as exc:
        raise RealtimeError("invalid_json", f"the message is not valid JSON: {exc}") from None
    if not isinstance(event, dict):
        raise RealtimeError("invalid_json", "a client event must be a JSON object with a \"type\"")
    raw_id = event.get("event_id")
    event_id = raw_id if isinstance(raw_id, str) else None
    kind = event.get("type")
    if not isinstance(kind, str):
        raise RealtimeError("missing_field", "a client event needs a string \"type\"", "type", event_id)
    if kind in UNSUPPORTED_CLIENT_EVENTS:
        raise RealtimeError("unsupported_event", f"{kind}: {UNSUPPORTED_CLIENT_EVENTS[kind]}", "type", event_id)
    if kind not in CLIENT_EVENTS:
        raise RealtimeError("unknown_event", f"unknown client event type {kind!r}; supported: "
                            f"{', '.join(CLIENT_EVENTS)}", "type", event_id)
    if kind == "session.update":
        return parse_session_update(_need(event, "session", dict, "session", event_id), event_id,
                                    current_turn_detection, captions_model)
    if kind == "input_audio_buffer.append":
        return AudioAppend(event_id, decode_audio(_need(event, "audio", str, "audio", event_id), "audio", event_id))
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
            raise RealtimeError("invalid_value", "content_index must be 0 (an assistant item has one audio part)",
                                "content_index", event_id)
        audio_end_ms = _need(event, "audio_end_ms", int, "audio_end_ms", event_id)
        if audio_end_ms < 0:
            raise RealtimeError("invalid_value", f"audio_end_ms must be >= 0, got {audio_end_ms}", "audio_end_ms",
                                event_id)
        return ItemTruncate(event_id, item_id, content_index, audio_end_ms)
    if kind == "response.create":
        return _parse_response_create(event, event_id)
    return ResponseCancel(event_id, _opt(event, "response_id", str, "response_id", event_id))


# -- actions for the adapter ------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    pass


@dataclass(frozen=True)
class PushAudio(Action):
    """Feed user audio to the session. paced: the adapter feeds it at real-time speed (item audio)."""

    pcm16: bytes
    paced: bool = False


@dataclass(frozen=True)
class SetSilenced(Action):
    """Hold the engine silent (True) or give it the floor back (False)."""

    silent: bool


@dataclass(frozen=True)
class ConfigureInput(Action):
    """VAD settings (None: no turn detection, VAD still runs for captions) and whether captions run."""

    turn_detection: TurnDetection | None
    captions: bool


# -- the state machine ------------------------------------------------------------------------------


@dataclass
class Item:
    id: str
    role: str  # "user" | "assistant"
    status: str = "completed"  # "in_progress" | "completed" | "incomplete"
    start_ms: float = 0.0  # user items: span on the input timeline
    end_ms: float = 0.0
    transcript: str | None = None  # user items: caption or client-given transcript
    frames: int = 0  # assistant items: 80 ms frames of audio sent
    pieces: list[tuple[int, str]] = field(default_factory=list)  # assistant: (frame index, text piece)
    audio_end_ms: int | None = None  # set by a truncate

    @property
    def audio_ms(self) -> int:
        return self.frames * FRAME_MS if self.audio_end_ms is None else self.audio_end_ms

    @property
    def text(self) -> str:
        return "".join(p for _, p in self.pieces)

    def to_json(self) -> dict[str, Any]:
        if self.role == "user":
            content = [{"type": "input_audio", "transcript": self.transcript}]
        else:
            content = [{"type": "output_audio", "transcript": self.text}] if self.frames else []
        return {"id": self.id, "object": "realtime.item", "type": "message", "role": self.role,
                "status": self.status, "content": content}


@dataclass
class Response:
    id: str
    metadata: dict | None
    max_frames: int | None
    requested: bool  # by response.create (else opened by the model's own speech)
    status: str = "in_progress"
    status_details: dict | None = None
    item: Item | None = None
    waited_frames: int = 0  # frames since created without speech (requested responses)
    held: list[list] = field(default_factory=list)  # quiet frames at the tail: [pcm16, text]
    input_ms_at_start: float = 0.0


class RealtimeConversation:
    """One `/v1/realtime` conversation. Every method returns a list of server events (dicts) and Actions."""

    def __init__(self, *, session_id: str, model: str, voice: str, id_prefix: str,
                 captions_model: str | None = None, threshold_applies: bool = True,
                 response_start_timeout_ms: int = 5000, pending_text_frames: int = 4):
        self.session_id = session_id
        self.model = model
        self.voice = voice
        self.captions_model = captions_model
        self.threshold_applies = threshold_applies  # False: the server's VAD decides voiced/unvoiced itself
        self.response_start_timeout_frames = max(1, response_start_timeout_ms // FRAME_MS)
        self.pending_text_frames = pending_text_frames
        self.conversation_id = f"conv_{id_prefix}"
        self._prefix = id_prefix
        self._counter = 0
        self.turn_detection: TurnDetection | None = TurnDetection()
        self.transcription: dict | None = None
        self.max_output_tokens: int | None = None
        self.items: dict[str, Item] = {}
        self.order: list[str] = []
        self.response: Response | None = None
        self.input_ms = 0.0  # input timeline: ms of user audio received
        self.buffer_start_ms = 0.0  # where the uncommitted input buffer begins
        self.frames_out = 0
        self._silenced: bool | None = None
        self._user_speaking = False
        self._speech_item_id: str | None = None  # id announced in speech_started
        self._speech_committed = False  # the current speech was committed by the client already
        self._barge_in_mute = False  # interrupt_response: hold the engine until the user stops
        self._muted_until_user_turn = False  # after response.cancel / max_output_tokens
        self._drop_stretch = False  # ignore the rest of a cut stretch of speech
        self._in_stretch = False  # the core reports a stretch of assistant speech in progress
        self._pending_text: list[tuple[int, str]] = []
        self._injected: list[tuple[float, float]] = []  # input spans fed by conversation.item.create
        self._suppress_vad_turn = False

    # -- ids and events ------------------------------------------------------------------------
    def _new_id(self, kind: str) -> str:
        self._counter += 1
        return f"{kind}_{self._prefix}{self._counter:05d}"

    def event(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"type": type_, "event_id": self._new_id("event"), **fields}

    def error(self, err: RealtimeError) -> dict[str, Any]:
        return self.event("error", error=err.body())

    def session_json(self) -> dict[str, Any]:
        td = self.turn_detection.to_json() if self.turn_detection else None
        return {
            "type": "realtime", "object": "realtime.session", "id": self.session_id, "model": self.model,
            "output_modalities": ["audio"], "instructions": "", "tools": [], "tool_choice": "auto",
            "max_output_tokens": "inf" if self.max_output_tokens is None else self.max_output_tokens,
            "tracing": None, "truncation": "disabled", "prompt": None, "include": None,
            "audio": {
                "input": {"format": dict(PCM_FORMAT), "transcription": self.transcription,
                          "noise_reduction": None, "turn_detection": td},
                "output": {"format": dict(PCM_FORMAT), "voice": self.voice, "speed": 1.0},
            },
        }

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> list:
        out: list = [self.event("session.created", session=self.session_json())]
        out.append(self._configure())
        out += self._sync_silence()
        return out

    def _configure(self) -> ConfigureInput:
        return ConfigureInput(self.turn_detection, self.transcription is not None)

    # -- client events -------------------------------------------------------------------------
    def receive(self, data: str | bytes) -> list:
        """One raw websocket message in; events and actions out (an `error` event if it was refused)."""
        try:
            event = parse_client_event(data, current_turn_detection=self.turn_detection,
                                       captions_model=self.captions_model)
            return self.handle(event)
        except RealtimeError as err:
            return [self.error(err)]

    def handle(self, ev: ClientEvent) -> list:
        if isinstance(ev, SessionUpdate):
            return self._session_update(ev)
        if isinstance(ev, AudioAppend):
            self.input_ms += len(ev.pcm16) / BYTES_PER_MS
            return [PushAudio(ev.pcm16)] if ev.pcm16 else []
        if isinstance(ev, AudioCommit):
            return self._commit(ev)
        if isinstance(ev, AudioClear):
            self.buffer_start_ms = self.input_ms
            if self._user_speaking:
                self._speech_committed = True  # the cleared speech does not become an item
            return [self.event("input_audio_buffer.cleared")]
        if isinstance(ev, ItemCreate):
            return self._item_create(ev)
        if isinstance(ev, ItemTruncate):
            return self._truncate(ev)
        if isinstance(ev, ResponseCreate):
            return self._response_create(ev)
        if isinstance(ev, ResponseCancel):
            return self._response_cancel(ev)
        raise TypeError(f"not a client event: {ev!r}")

    def _session_update(self, ev: SessionUpdate) -> list:
        out: list = []
        changes = ev.changes
        warnings = list(ev.warnings)
        if "voice" in changes and changes["voice"] != self.voice:
            warnings.append(_warn("session.audio.output.voice", f"the voice is fixed by the model "
                                                                f"({self.voice}); ignored"))
        reconfigure = False
        if "turn_detection" in changes:
            td = changes["turn_detection"]
            if td is not None and not self.threshold_applies and td.threshold != TurnDetection.threshold:
                warnings.append(_warn("session.audio.input.turn_detection.threshold",
                                      "this server's VAD (webrtcvad) makes yes/no decisions; threshold only "
                                      "applies with `assistant serve --vad silero`; ignored"))
                td = replace(td, threshold=TurnDetection.threshold)
            self.turn_detection = td
            reconfigure = True
            # The session restarts its VAD from silence on a new configuration: so does the turn state here.
            self._user_speaking = self._barge_in_mute = self._suppress_vad_turn = False
        if "transcription" in changes:
            self.transcription = changes["transcription"]
            reconfigure = True
        if "max_output_tokens" in changes:
            self.max_output_tokens = changes["max_output_tokens"]
        if reconfigure:
            out.append(self._configure())
        updated = self.event("session.updated", session=self.session_json())
        if warnings:
            updated["warnings"] = warnings
        out.append(updated)
        return out + self._sync_silence()

    def _commit(self, ev: AudioCommit) -> list:
        buffered = self.input_ms - self.buffer_start_ms
        if buffered < MIN_COMMIT_MS:
            raise RealtimeError("input_audio_buffer_commit_empty", f"the input audio buffer holds {buffered:.0f} ms; "
                                f"a commit needs at least {MIN_COMMIT_MS} ms of audio", None, ev.event_id)
        item_id = self._speech_item_id if self._user_speaking and not self._speech_committed else None
        if item_id is not None:
            self._speech_committed = True
        return self._add_user_item(item_id or self._new_id("item"), self.buffer_start_ms, self.input_ms)

    def _add_user_item(self, item_id: str, start_ms: float, end_ms: float, transcript: str | None = None,
                       committed: bool = True) -> list:
        previous = self.order[-1] if self.order else None
        item = Item(item_id, "user", start_ms=start_ms, end_ms=end_ms, transcript=transcript)
        self.items[item_id] = item
        self.order.append(item_id)
        self.buffer_start_ms = max(self.buffer_start_ms, end_ms)
        out = []
        if committed:
            out.append(self.event("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous))
        out.append(self.event("conversation.item.added", previous_item_id=previous, item=item.to_json()))
        out.append(self.event("conversation.item.done", previous_item_id=previous, item=item.to_json()))
        return out

    def _item_create(self, ev: ItemCreate) -> list:
        if ev.item_id is not None and ev.item_id in self.items:
            raise RealtimeError("invalid_value", f"item.id {ev.item_id!r} already exists", "item.id", ev.event_id)
        last = self.order[-1] if self.order else None
        appending = ev.previous_item_id in (None, last) or (ev.previous_item_id == "root" and not self.order)
        if not appending:
            raise RealtimeError("unsupported_feature", "items can only be appended at the end of the conversation "
                                "(previous_item_id must be the last item or omitted)", "previous_item_id",
                                ev.event_id)
        start = self.input_ms
        self.input_ms += len(ev.pcm16) / BYTES_PER_MS
        self._injected.append((start, self.input_ms))
        out: list = [PushAudio(ev.pcm16, paced=True)]
        return out + self._add_user_item(ev.item_id or self._new_id("item"), start, self.input_ms,
                                         ev.transcript, committed=False)

    def _truncate(self, ev: ItemTruncate) -> list:
        item = self.items.get(ev.item_id)
        if item is None:
            raise RealtimeError("item_not_found", f"no item {ev.item_id!r} in this conversation", "item_id",
                                ev.event_id)
        if item.role != "assistant":
            raise RealtimeError("invalid_value", f"item {ev.item_id!r} is a {item.role} item; only assistant audio "
                                "can be truncated", "item_id", ev.event_id)
        if ev.audio_end_ms > item.audio_ms:
            raise RealtimeError("invalid_audio_end_ms", f"audio_end_ms {ev.audio_end_ms} is beyond the item's audio "
                                f"({item.audio_ms} ms sent)", "audio_end_ms", ev.event_id)
        out: list = []
        if self.response is not None and self.response.item is item:
            # The listener stopped hearing it: generating more of it makes no sense.
            out += self._finish("cancelled", "client_cancelled")
        item.audio_end_ms = ev.audio_end_ms
        item.pieces = [(i, p) for i, p in item.pieces if i * FRAME_MS < ev.audio_end_ms]
        out.append(self.event("conversation.item.truncated", item_id=item.id, content_index=0,
                              audio_end_ms=ev.audio_end_ms))
        return out + self._sync_silence()

    def _response_create(self, ev: ResponseCreate) -> list:
        if self.response is not None:
            raise RealtimeError("conversation_already_has_active_response",
                                f"response {self.response.id} is still in progress; cancel it first", None,
                                ev.event_id)
        max_frames = self.max_output_tokens if ev.max_output_tokens == "session" else ev.max_output_tokens
        self._muted_until_user_turn = False
        out = self._open_response(requested=True, metadata=ev.metadata, max_frames=max_frames,
                                  warnings=ev.warnings)
        return out + self._sync_silence()

    def _response_cancel(self, ev: ResponseCancel) -> list:
        r = self.response
        if r is None or (ev.response_id is not None and ev.response_id != r.id):
            which = f"response {ev.response_id!r}" if ev.response_id else "a response"
            raise RealtimeError("response_cancel_not_active", f"cannot cancel {which}: none is in progress",
                                "response_id" if ev.response_id else None, ev.event_id)
        out = self._finish("cancelled", "client_cancelled")
        return out + self._sync_silence()

    # -- response lifecycle --------------------------------------------------------------------
    def _response_json(self, r: Response) -> dict[str, Any]:
        usage = None
        if r.status != "in_progress":
            frames = r.item.frames if r.item else 0
            heard = max(0, round((self.input_ms - r.input_ms_at_start) / FRAME_MS))
            usage = {"total_tokens": frames + heard, "input_tokens": heard, "output_tokens": frames,
                     "input_token_details": {"text_tokens": 0, "audio_tokens": heard, "image_tokens": 0,
                                             "cached_tokens": 0,
                                             "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0,
                                                                       "image_tokens": 0}},
                     "output_token_details": {"text_tokens": 0, "audio_tokens": frames}}
        return {
            "id": r.id, "object": "realtime.response", "status": r.status, "status_details": r.status_details,
            "output": [r.item.to_json()] if r.item else [], "conversation_id": self.conversation_id,
            "output_modalities": ["audio"], "metadata": r.metadata,
            "max_output_tokens": "inf" if r.max_frames is None else r.max_frames,
            "audio": {"output": {"format": dict(PCM_FORMAT), "voice": self.voice}}, "usage": usage,
        }

    def _open_response(self, *, requested: bool, metadata: dict | None = None, max_frames: int | None = None,
                       warnings: tuple = ()) -> list:
        r = Response(self._new_id("resp"), metadata, max_frames, requested, input_ms_at_start=self.input_ms)
        self.response = r
        created = self.event("response.created", response=self._response_json(r))
        if warnings:
            created["warnings"] = list(warnings)
        return [created]

    def _open_item(self, r: Response) -> list:
        previous = self.order[-1] if self.order else None
        item = Item(self._new_id("item"), "assistant", status="in_progress")
        r.item = item
        self.items[item.id] = item
        self.order.append(item.id)
        added = item.to_json()
        return [
            self.event("response.output_item.added", response_id=r.id, output_index=0, item=added),
            self.event("conversation.item.added", previous_item_id=previous, item=added),
            self.event("response.content_part.added", response_id=r.id, item_id=item.id, output_index=0,
                       content_index=0, part={"type": "audio", "transcript": ""}),
        ]

    def _finish(self, status: str, reason: str | None = None) -> list:
        """Close the open response with `status`; a cut (not completed) stretch is dropped from here on."""
        r = self.response
        assert r is not None
        self.response = None
        r.status = status
        r.status_details = None if status == "completed" else {"type": status, "reason": reason, "error": None}
        out: list = []
        if r.item is not None:
            item = r.item
            item.status = "completed" if status == "completed" else "incomplete"
            ids = {"response_id": r.id, "item_id": item.id, "output_index": 0, "content_index": 0}
            out += [
                self.event("response.output_audio.done", **ids),
                self.event("response.output_audio_transcript.done", **ids, transcript=item.text),
                self.event("response.content_part.done", **ids,
                           part={"type": "audio", "transcript": item.text}),
                self.event("response.output_item.done", response_id=r.id, output_index=0, item=item.to_json()),
                self.event("conversation.item.done", previous_item_id=self._previous_of(item.id),
                           item=item.to_json()),
            ]
        out.append(self.event("response.done", response=self._response_json(r)))
        if status != "completed" and r.item is not None and self._in_stretch:
            self._drop_stretch = True
        if status != "completed" and reason != "turn_detected":
            self._muted_until_user_turn = True
        return out

    def _previous_of(self, item_id: str) -> str | None:
        i = self.order.index(item_id)
        return self.order[i - 1] if i else None

    def _auto_responses(self) -> bool:
        return self.turn_detection is not None and self.turn_detection.create_response

    def _wanted_silence(self) -> bool:
        if self._barge_in_mute:
            return True
        if self.response is not None and self.response.requested:
            return False  # the client gave the model the floor
        if self._muted_until_user_turn:
            return True
        return self.response is None and not self._auto_responses()

    def _sync_silence(self) -> list:
        silent = self._wanted_silence()
        if silent == self._silenced:
            return []
        self._silenced = silent
        return [SetSilenced(silent)]

    # -- what the session core reports ---------------------------------------------------------
    def user_speech_started(self, at_ms: float) -> list:
        """Server VAD: user speech began at `at_ms` on the input timeline."""
        if self.turn_detection is None:
            return []
        if any(start <= at_ms < end for start, end in self._injected):
            self._suppress_vad_turn = True  # conversation.item.create audio already is an item
            return []
        self._user_speaking = True
        self._speech_committed = False
        self._speech_item_id = self._new_id("item")
        self._muted_until_user_turn = False
        out: list = [self.event("input_audio_buffer.speech_started", audio_start_ms=int(at_ms),
                                item_id=self._speech_item_id)]
        r = self.response
        if r is not None and r.item is None and self.turn_detection.interrupt_response:
            # A response the model has not started yet gives way to the user's turn.
            out += self._finish("cancelled", "turn_detected")
        return out + self._sync_silence()

    def barge_in(self, at_ms: float) -> list:
        """The core detected the user talking over the assistant (its one barge-in detector)."""
        td = self.turn_detection
        if td is None or not td.interrupt_response or self.response is None or self._suppress_vad_turn:
            return []
        out = self._finish("cancelled", "turn_detected")
        self._barge_in_mute = self._user_speaking  # hold the engine until the user stops
        return out + self._sync_silence()

    def assistant_started(self) -> list:
        """The core saw a stretch of assistant speech begin (comes before that frame's audio)."""
        self._in_stretch = True
        return []

    def assistant_stopped(self) -> list:
        """The core saw the stretch end, after its hangover of quiet frames (before that frame's audio)."""
        self._in_stretch = False
        if self._drop_stretch:
            self._drop_stretch = False
            return []
        r = self.response
        if r is None or r.item is None:
            return []
        return self._finish("completed") + self._sync_silence()

    def user_speech_stopped(self, at_ms: float) -> list:
        if self.turn_detection is None:
            return []
        if self._suppress_vad_turn:
            self._suppress_vad_turn = False
            return []
        if not self._user_speaking:
            return []
        self._user_speaking = False
        self._barge_in_mute = False
        item_id = self._speech_item_id or self._new_id("item")
        out: list = [self.event("input_audio_buffer.speech_stopped", audio_end_ms=int(at_ms), item_id=item_id)]
        if not self._speech_committed:
            out += self._add_user_item(item_id, self.buffer_start_ms, max(at_ms, self.buffer_start_ms))
        return out + self._sync_silence()

    def user_transcript(self, text: str, start_ms: float, end_ms: float) -> list:
        """A caption of a finished user utterance; attached to the user item it overlaps most."""
        if self.transcription is None:
            return []
        best, best_overlap = None, 0.0
        for item in self.items.values():
            if item.role == "user" and item.transcript is None:
                overlap = min(end_ms, item.end_ms) - max(start_ms, item.start_ms)
                if overlap > best_overlap:
                    best, best_overlap = item, overlap
        if best is None:
            return []
        best.transcript = text
        return [self.event("conversation.item.input_audio_transcription.completed", item_id=best.id,
                           content_index=0, transcript=text,
                           usage={"type": "duration", "seconds": round((end_ms - start_ms) / 1000, 3)})]

    def output_audio(self, pcm16: bytes, speaking: bool) -> list:
        """One 80 ms frame of the engine's output (silence included) and its voice-activity flag."""
        self.frames_out += 1
        if self._drop_stretch:
            return []
        r = self.response
        if r is None:
            if not speaking or self._silenced:
                return []  # outside a response (or a frame computed before the hold took effect)
            out = self._open_response(requested=False, max_frames=self.max_output_tokens)
            return out + self._frame_in_response(self.response, pcm16, speaking)
        return self._frame_in_response(r, pcm16, speaking)

    def _frame_in_response(self, r: Response, pcm16: bytes, speaking: bool) -> list:
        out: list = []
        if r.item is None:
            if not speaking:
                r.waited_frames += 1
                if r.waited_frames >= self.response_start_timeout_frames:
                    # The model kept quiet with the floor: the response completes empty.
                    out += self._finish("completed")
                    out += self._sync_silence()
                return out
            out += self._open_item(r)
            fresh = [(i, t) for i, t in self._pending_text if i > self.frames_out - self.pending_text_frames]
            self._pending_text = []
            if fresh:
                r.held.append([b"", "".join(t for _, t in fresh)])
        if not speaking:
            r.held.append([pcm16, ""])  # sent if speech follows; dropped if the stretch ends here
            return out
        for held_pcm, held_text in r.held:
            out += self._send_frame(r, held_pcm, held_text)
        r.held = []
        out += self._send_frame(r, pcm16, "")
        if r.max_frames is not None and r.item.frames >= r.max_frames:
            out += self._finish("incomplete", "max_output_tokens")
            out += self._sync_silence()
        return out

    def _send_frame(self, r: Response, pcm16: bytes, text: str) -> list:
        item = r.item
        ids = {"response_id": r.id, "item_id": item.id, "output_index": 0, "content_index": 0}
        out: list = []
        if pcm16:
            item.frames += 1
            out.append(self.event("response.output_audio.delta", **ids, delta=base64.b64encode(pcm16).decode()))
        if text:
            item.pieces.append((max(0, item.frames - 1), text))
            out.append(self.event("response.output_audio_transcript.delta", **ids, delta=text))
        return out

    def output_text(self, text: str) -> list:
        """A piece of the model's own text, produced with the last output frame."""
        if not text or self._drop_stretch:
            return []
        r = self.response
        if r is None or r.item is None:
            self._pending_text.append((self.frames_out, text))
            return []
        if r.held:
            r.held[-1][1] += text  # spoken after a pause that may still turn out to be the end
            return []
        return self._send_frame(r, b"", text)

