"""The Moshi `/api/chat` protocol (docs/moshi-protocol.md) as pure code: message kinds, the
conversation's set-up from the query string, close reasons.

Kyutai's `moshi.server`, NVIDIA's PersonaPlex server and their clients (the web UIs,
`python -m moshi.client`, Full-Duplex-Bench's inference scripts) speak it: one websocket per
conversation, binary messages only, the first byte the kind, the rest its payload. Kyutai's
protocol notes (moshi `rust/protocol.md`) name kinds 0-6; the servers send 0x00 (handshake),
0x01 (a chunk of an Ogg Opus stream) and 0x02 (a UTF-8 text piece), and read only 0x01; anything
else a client sends is logged and skipped. The socket side is server/protocols/moshi/adapter.py.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import parse_qs

from server.protocols.native.wire import ProtocolError, parse_options

KIND_HANDSHAKE = 0x00
KIND_AUDIO = 0x01
KIND_TEXT = 0x02
KIND_ERROR = 0x05  # "UTF-8 error description" in Kyutai's notes; their web clients decode it

HANDSHAKE = bytes([KIND_HANDSHAKE])  # what the Python servers send: the kind byte, no payload

CLOSE_BAD_DATA = 1007  # the client's Ogg Opus stream cannot be decoded
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 for the code

# query parameter -> (ConversationOptions field, how the text is read)
QUERY_OPTIONS: dict[str, tuple[str, type]] = {
    "text_prompt": ("instructions", str),  # PersonaPlex: the role, wrapped in <system> tags
    "voice_prompt": ("voice", str),  # PersonaPlex: a preset file name, e.g. NATF2.pt
    "seed": ("seed", int),  # PersonaPlex; -1 = none
    "text_temperature": ("text_temperature", float),
    "text_topk": ("text_top_k", int),
    "audio_temperature": ("temperature", float),
    "audio_topk": ("top_k", int),
}
# What the originals' clients also send that has no counterpart here; skipped, as the Python servers
# skip every parameter they do not read (the web clients send all of these on every connection).
IGNORED_QUERY = (
    "pad_mult",
    "repetition_penalty",
    "repetition_penalty_context",
    "text_seed",
    "audio_seed",
    "worker_auth_id",
    "email",
    "token",  # read by the handshake's auth check, not by the conversation
)


class QueryError(ValueError):
    """A query parameter this server cannot honour; the message is the reason the client is given."""


class Ignored(Exception):
    """A client message the original servers log and skip; str() says what it was."""


def audio_message(ogg: bytes) -> bytes:
    return bytes([KIND_AUDIO]) + ogg


def text_message(piece: str) -> bytes:
    return bytes([KIND_TEXT]) + piece.encode("utf-8")


def error_message(description: str) -> bytes:
    return bytes([KIND_ERROR]) + description.encode("utf-8")


def audio_payload(message: str | bytes) -> bytes:
    """The Ogg Opus bytes of one client message; Ignored for anything that is not audio."""
    if isinstance(message, str):
        raise Ignored(f"a text message ({len(message)} characters); every message of this protocol is binary")
    if not message:
        raise Ignored("an empty message")
    if message[0] != KIND_AUDIO:
        raise Ignored(f"a message of kind {message[0]:#04x}; clients send audio (0x01) only")
    return message[1:]


def _read(name: str, text: str, kind: type) -> Any:
    if kind is str:
        return text
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise QueryError(f"{name} must be {what}, got {text[:40]!r}") from None
    if kind is float and not math.isfinite(value):
        raise QueryError(f"{name} must be a finite number, got {text[:40]!r}")
    return value


def session_options(query: str) -> dict[str, Any]:
    """The ConversationOptions fields a `/api/chat` query string sets, validated as the native
    protocol validates them. Empty values are unset (PersonaPlex's client sends `text_prompt=` for
    no role); seed -1 is no seed (as NVIDIA's server reads it); a repeated name counts once, the
    first (as the originals' aiohttp reads it); unknown names are skipped. Raises QueryError."""
    params = parse_qs(query, keep_blank_values=True)
    options: dict[str, Any] = {}
    for name, (field, kind) in QUERY_OPTIONS.items():
        text = (params.get(name) or [""])[0].strip()
        if not text:
            continue
        value = _read(name, text, kind)
        if field == "seed" and value == -1:
            continue
        try:
            options |= parse_options({field: value})
        except ProtocolError as exc:  # say it in the client's own words
            raise QueryError(exc.message.replace(field, name, 1)) from None
    return options


def unknown_parameters(query: str) -> list[str]:
    """Names in the query string that neither set an option nor are known to be skipped (for the log)."""
    return sorted(set(parse_qs(query, keep_blank_values=True)) - set(QUERY_OPTIONS) - set(IGNORED_QUERY))


def close_reason(text: str) -> str:
    """`text` cut to what a websocket close frame carries (123 bytes of UTF-8), on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return text
    return data[: MAX_CLOSE_REASON_BYTES - 3].decode("utf-8", errors="ignore") + "..."
