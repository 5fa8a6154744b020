"""The native websocket protocol (docs/protocol.md) as pure encode/decode functions.

Nothing here touches a socket: `decode_text` turns one text frame into a typed client event
(or raises `ProtocolError` with the wire error code), `check_audio` validates one binary frame,
and `encode_event` turns a conversation event (assistant/conversation/events.py) into the frame
to send, field by field, so the wire format only changes here. The asyncio shell
(server/protocols/native/adapter.py) only moves bytes between the socket and these functions; clients
(client/native.py) use the same definitions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from assistant.conversation import events as ev
from assistant.conversation.options import BARGE_IN_POLICIES, SUPPORTED_SAMPLE_RATES
from assistant.engine import MAX_PROMPT_CHARS
from server.protocols.json_frames import InvalidJson, load_object

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


@dataclass(frozen=True)
class SessionStart:
    sample_rate: int
    options: dict[str, Any]  # validated SessionOptions fields that the client set
    audio_format: str = "pcm16"  # how binary frames carry audio, both ways, for the whole session


@dataclass(frozen=True)
class SessionUpdate:
    options: dict[str, Any]


@dataclass(frozen=True)
class PlaybackPosition:
    played_ms: float


@dataclass(frozen=True)
class SessionEnd:
    pass


ClientEvent = SessionStart | SessionUpdate | PlaybackPosition | SessionEnd

OPTION_FIELDS = {
    "barge_in",
    "vad",
    "min_interrupt_ms",
    "seed",
    "temperature",
    "text_temperature",
    "top_k",
    "text_top_k",
    "captions",
    "instructions",
    "voice",
}
# Binary frames: PCM16 at the session's rate, or one raw 24 kHz mono Opus packet per message.
AUDIO_FORMATS = ("pcm16", "opus")
MAX_OPUS_PACKET_BYTES = 1275  # RFC 6716's largest packet; audio/opus_packets.py refuses the same
MAX_TOP_K = 100_000  # beyond any vocabulary; 0 = the whole vocabulary
_VAD_FIELDS = {"threshold", "min_speech_ms", "min_silence_ms", "prefix_padding_ms"}


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    # bool is an int subclass in Python; `true` is not a number on the wire.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError("invalid_value", f"{name} must be a number, got {_preview(value)}")
    if isinstance(value, int) and not -(2**53) <= value <= 2**53:
        # An integer literal of any size parses; float() of one above 1e308 would overflow.
        raise ProtocolError(
            "invalid_value", f"{name} must be between {lo:g} and {hi:g}, got {_preview(value)}"
        )
    if not math.isfinite(value):
        raise ProtocolError("invalid_value", f"{name} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise ProtocolError("invalid_value", f"{name} must be between {lo:g} and {hi:g}, got {value!r}")
    return value


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_options(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate the option fields of a session.start / session.update event.

    Returns only the options the client set, ready for `SessionOptions.replace(**opts)`.
    Unknown keys other than `type`/`sample_rate` are refused so typos do not pass silently.
    """
    opts: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("type", "sample_rate", "audio_format"):
            continue
        if key not in OPTION_FIELDS:
            raise ProtocolError("invalid_value", f"unknown option {key!r}; known: {sorted(OPTION_FIELDS)}")
        if key == "barge_in":
            if value not in BARGE_IN_POLICIES:
                raise ProtocolError(
                    "invalid_value", f"barge_in must be one of {BARGE_IN_POLICIES}, got {value!r}"
                )
            opts[key] = value
        elif key == "vad":
            if not isinstance(value, dict):
                raise ProtocolError("invalid_value", f"vad must be an object, got {value!r}")
            vad: dict[str, float] = {}
            for vkey, vval in value.items():
                if vkey not in _VAD_FIELDS:
                    raise ProtocolError(
                        "invalid_value", f"unknown vad option {vkey!r}; known: {sorted(_VAD_FIELDS)}"
                    )
                if vkey == "threshold":
                    vad[vkey] = float(_number("vad.threshold", vval, 0.0, 1.0))
                else:
                    vad[vkey] = int(_number(f"vad.{vkey}", vval, 0, 5000))
            opts[key] = vad
        elif key == "min_interrupt_ms":
            opts[key] = int(_number(key, value, 0, 5000))
        elif key == "seed":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ProtocolError("invalid_value", f"seed must be an integer or null, got {value!r}")
            opts[key] = value
        elif key in ("temperature", "text_temperature"):
            opts[key] = None if value is None else float(_number(key, value, 0.0, 5.0))
        elif key in ("top_k", "text_top_k"):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ProtocolError(
                    "invalid_value", f"{key} must be an integer or null, got {_preview(value)}"
                )
            opts[key] = None if value is None else int(_number(key, value, 0, MAX_TOP_K))
        elif key == "captions":
            if not isinstance(value, bool):
                raise ProtocolError("invalid_value", f"captions must be true or false, got {value!r}")
            opts[key] = value
        elif key in ("instructions", "voice"):
            if value is not None and not isinstance(value, str):
                raise ProtocolError("invalid_value", f"{key} must be a string or null, got {_preview(value)}")
            if value is not None and len(value) > MAX_PROMPT_CHARS:
                raise ProtocolError(
                    "invalid_value", f"{key} is {len(value)} characters; at most {MAX_PROMPT_CHARS}"
                )
            if key == "voice" and value:
                try:
                    check_voice_name(value)
                except ValueError as exc:
                    raise ProtocolError("invalid_value", str(exc)) from None
            opts[key] = value or None
    return opts


def check_voice_name(voice: str) -> None:
    """A remote client names one of the model's voices; file paths are for the server's operator only
    (`assistant serve --voice FILE`), so no client can make the server read a file of its choosing."""
    if "/" in voice or "\\" in voice or voice.startswith((".", "~")) or len(voice) > 200:
        raise ValueError(f"voice {_preview(voice)} is not a voice name; use one of GET /v1/voices")


def decode_text(text: str | bytes) -> ClientEvent:
    """Decode one JSON text frame into a client event; raise ProtocolError if it is not one."""
    try:
        msg = load_object(text)
    except InvalidJson as exc:
        raise ProtocolError("invalid_json", f"text frames must be JSON objects: {exc}") from None
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("missing_field", "every event needs a string 'type'")
    if kind == "session.start":
        if "sample_rate" not in msg:
            raise ProtocolError(
                "missing_field", f"session.start needs sample_rate, one of {SUPPORTED_SAMPLE_RATES}"
            )
        rate = msg["sample_rate"]
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate not in SUPPORTED_SAMPLE_RATES:
            raise ProtocolError(
                "unsupported_sample_rate",
                f"sample_rate {rate!r} is not supported; use one of {SUPPORTED_SAMPLE_RATES}",
            )
        return SessionStart(
            sample_rate=int(rate), options=parse_options(msg), audio_format=_audio_format(msg)
        )
    if kind == "session.update":
        if "audio_format" in msg:
            raise ProtocolError("invalid_value", "audio_format is chosen once, in session.start")
        return SessionUpdate(options=parse_options(msg))
    if kind == "playback.position":
        if "played_ms" not in msg:
            raise ProtocolError("missing_field", "playback.position needs played_ms")
        return PlaybackPosition(played_ms=float(_number("played_ms", msg["played_ms"], 0, 1e10)))
    if kind == "session.end":
        return SessionEnd()
    raise ProtocolError(
        "unknown_event",
        f"unknown event type {kind!r}; expected session.start, session.update, playback.position "
        "or session.end",
    )


def _audio_format(msg: dict[str, Any]) -> str:
    fmt = msg.get("audio_format", "pcm16")
    if fmt not in AUDIO_FORMATS:
        raise ProtocolError(
            "invalid_value", f"audio_format must be one of {AUDIO_FORMATS}, got {_preview(fmt)}"
        )
    if fmt == "opus" and msg["sample_rate"] != 24000:
        raise ProtocolError(
            "unsupported_sample_rate",
            f"audio_format opus runs at 24000 Hz; got sample_rate {msg['sample_rate']}",
        )
    return fmt


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
    },
    ev.UserTranscript: lambda e: {"text": e.text, "start_ms": e.start_ms, "end_ms": e.end_ms},
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
