"""The Moshi `/api/chat` protocol (docs/moshi-protocol.md) as pure code: message kinds and close
reasons (the conversation's set-up from the query string is server/protocols/moshi/query.py).

Kyutai's `moshi.server`, NVIDIA's PersonaPlex server and their clients (the web UIs,
`python -m moshi.client`, Full-Duplex-Bench's inference scripts) speak it: one websocket per
conversation, binary messages only, the first byte the kind, the rest its payload. Kyutai's
protocol notes (moshi `rust/protocol.md`) name kinds 0-6; the servers send 0x00 (handshake),
0x01 (a chunk of an Ogg Opus stream) and 0x02 (a UTF-8 text piece), and read only 0x01; anything
else a client sends is logged and skipped. Kyutai's MoshiVis server and clients add 0x08: an image
file (JPEG, PNG, WebP), which their clients send as the first message. The socket side is
server/protocols/moshi/adapter.py.
"""

from __future__ import annotations

KIND_HANDSHAKE = 0x00
KIND_AUDIO = 0x01
KIND_TEXT = 0x02
KIND_ERROR = 0x05  # "UTF-8 error description" in Kyutai's notes; their web clients decode it
KIND_IMAGE = 0x08  # MoshiVis: the bytes of an image file

HANDSHAKE = bytes([KIND_HANDSHAKE])  # what the Python servers send: the kind byte, no payload

CLOSE_BAD_DATA = 1007  # the client's Ogg Opus stream cannot be decoded
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 for the code


class Ignored(Exception):
    """A client message the original servers log and skip; str() says what it was."""


def audio_message(ogg: bytes) -> bytes:
    return bytes([KIND_AUDIO]) + ogg


def text_message(piece: str) -> bytes:
    return bytes([KIND_TEXT]) + piece.encode("utf-8")


def error_message(description: str) -> bytes:
    return bytes([KIND_ERROR]) + description.encode("utf-8")


def is_image(message: str | bytes) -> bool:
    """Whether `message` is a MoshiVis client's image message (0x08)."""
    return isinstance(message, bytes) and message[:1] == bytes([KIND_IMAGE])


def image_payload(message: bytes) -> memoryview:
    """The image file's bytes of an image message, without copying them (they may be megabytes)."""
    return memoryview(message)[1:]


def audio_payload(message: str | bytes) -> bytes:
    """The Ogg Opus bytes of one client message; Ignored for anything that is not audio."""
    if isinstance(message, str):
        raise Ignored(f"a text message ({len(message)} characters); every message of this protocol is binary")
    if not message:
        raise Ignored("an empty message")
    if message[0] != KIND_AUDIO:
        raise Ignored(
            f"a message of kind {message[0]:#04x}; clients send audio (0x01) and images (0x08) only"
        )
    return message[1:]


def close_reason(text: str) -> str:
    """`text` cut to what a websocket close frame carries (123 bytes of UTF-8), on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return text
    return data[: MAX_CLOSE_REASON_BYTES - 3].decode("utf-8", errors="ignore") + "..."
