"""The set-up of a Moshi `/api/chat` conversation (docs/moshi-protocol.md): its query string, as a
typed schema. The protocol's only client "event": everything else a client sends is audio.

Kyutai's and NVIDIA's servers read the names below (their web clients send them all on every
connection) and skip every other; so does this one. Values are text; each is read as its option
reads it on `/ws` (the same ranges), and a value that cannot be honoured is a QueryError in the
client's own words (`audio_temperature must be between 0 and 5, got 9.0`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from pydantic import ConfigDict, Field, ValidationError

from server.protocols.schema import (
    PromptText,
    Seed,
    Skipped,
    Temperature,
    TopK,
    VoiceName,
    integer_in,
    refusal,
)

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
    # MoshiVis' web client: images are always resized to the model's own size (448), uncropped, as
    # Kyutai's server does (it reads image_resolution; nothing reads the other two)
    "image_resolution",
    "center_crop",
    "text_temperature_gating_influence",
)
MAX_IMAGE_START = 1_000_000  # frames: about 22 hours


class QueryError(ValueError):
    """A query parameter this server cannot honour; the message is the reason the client is given."""


class ChatQuery(Skipped):
    """The query parameters that set a conversation up, each named by the ConversationOptions field
    it sets (`serialization_alias`). Values come as text: numbers are parsed from it."""

    model_config = ConfigDict(strict=False)

    text_prompt: PromptText = Field(None, serialization_alias="instructions")  # PersonaPlex: the role
    voice_prompt: VoiceName = Field(None, serialization_alias="voice")  # PersonaPlex: a preset, e.g. NATF2.pt
    seed: Seed = Field(None, serialization_alias="seed")  # PersonaPlex; -1 = none
    text_temperature: Temperature = Field(None, serialization_alias="text_temperature")
    text_topk: TopK = Field(None, serialization_alias="text_top_k")
    audio_temperature: Temperature = Field(None, serialization_alias="temperature")
    audio_topk: TopK = Field(None, serialization_alias="top_k")
    # MoshiVis: the step from which an image counts (their web client sends 16); not an option
    xa_start: integer_in(0, MAX_IMAGE_START) = Field(None, exclude=True)


def session_options(query: str) -> dict[str, Any]:
    """The ConversationOptions fields a `/api/chat` query string sets, validated as the native
    protocol validates them. Empty values are unset (PersonaPlex's client sends `text_prompt=` for
    no role); seed -1 is no seed (as NVIDIA's server reads it); a repeated name counts once, the
    first (as the originals' aiohttp reads it); unknown names are skipped. Raises QueryError."""
    return _chat_query(query).model_dump(exclude_unset=True, by_alias=True)


def image_start(query: str) -> int | None:
    """MoshiVis' `xa_start`: the conversation's step from which an image counts (None: the
    engine's default, which is what their web client sends). Raises QueryError."""
    return _chat_query(query).xa_start


def _chat_query(query: str) -> ChatQuery:
    params = {name: values[0].strip() for name, values in parse_qs(query, keep_blank_values=True).items()}
    sent = {name: value for name, value in params.items() if value and name in ChatQuery.model_fields}
    if sent.get("seed") == "-1":
        del sent["seed"]
    try:
        return ChatQuery.model_validate(sent)
    except ValidationError as exc:
        raise QueryError(refusal(exc, ChatQuery).message) from None


def unknown_parameters(query: str) -> list[str]:
    """Names in the query string that neither set an option nor are known to be skipped (for the log)."""
    known = set(ChatQuery.model_fields) | set(IGNORED_QUERY)
    return sorted(set(parse_qs(query, keep_blank_values=True)) - known)
