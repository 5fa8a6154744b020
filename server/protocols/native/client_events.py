"""The client events of the native protocol (`/ws`, docs/protocol.md), as typed schemas.

`decode_text` (server/protocols/native/wire.py) reads one text frame into one of these. The
conversation options of session.start and session.update are strict: an unknown option is an
`invalid_value`, so a typo does not pass silently. playback.position and session.end skip what they
do not name. An option a client leaves out is not set: `options()` gives only those it sent.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, PlainValidator, model_validator

from assistant.conversation.options import BARGE_IN_POLICIES, SUPPORTED_SAMPLE_RATES
from server.protocols.schema import (
    PromptText,
    Refused,
    Seed,
    Skipped,
    Temperature,
    TopK,
    VoiceName,
    number_in,
    preview,
    refuse,
    refused_unless,
    whole_ms_in,
)

# Binary frames: PCM16 at the session's rate, or one raw 24 kHz mono Opus packet per message.
AUDIO_FORMATS = ("pcm16", "opus")


def _empty_as_none(value: Any) -> Any:
    return None if value == "" else value


class VadOptions(Refused):
    """Turn detection on the user's input; `threshold` applies to the Silero VAD only."""

    threshold: number_in(0.0, 1.0) = None
    min_speech_ms: whole_ms_in(0, 5000) = None
    min_silence_ms: whole_ms_in(0, 5000) = None  # the end-of-turn silence
    prefix_padding_ms: whole_ms_in(0, 5000) = None


class ConversationSettings(Refused):
    """The options of a conversation (ConversationOptions fields) a client may set; null is allowed
    where the option has a "backend default"."""

    barge_in: Literal[BARGE_IN_POLICIES] = None
    vad: VadOptions = None
    min_interrupt_ms: whole_ms_in(0, 5000) = None
    seed: Seed | None = None
    temperature: Temperature | None = None
    text_temperature: Temperature | None = None
    top_k: TopK | None = None
    text_top_k: TopK | None = None
    captions: bool = None
    instructions: Annotated[PromptText | None, BeforeValidator(_empty_as_none)] = None  # "": the server's
    voice: Annotated[VoiceName | None, BeforeValidator(_empty_as_none)] = None

    def options(self) -> dict[str, Any]:
        """The options the client set, ready for `ConversationOptions.replace(**options)`."""
        return self.model_dump(include=set(OPTION_FIELDS), exclude_unset=True)


OPTION_FIELDS = tuple(ConversationSettings.model_fields)


def _sample_rate(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in SUPPORTED_SAMPLE_RATES:
        raise refuse(
            "unsupported_sample_rate",
            f"{{param}} {preview(value)} is not supported; use one of {SUPPORTED_SAMPLE_RATES}",
        )
    return int(value)


class SessionStart(ConversationSettings):
    """The first message: the rate of the audio both ways, its format, and any options."""

    type: Literal["session.start"]
    sample_rate: Annotated[int, PlainValidator(_sample_rate)]
    audio_format: Literal[AUDIO_FORMATS] = "pcm16"  # for the whole session

    @model_validator(mode="after")
    def _opus_at_24khz(self) -> SessionStart:
        if self.audio_format == "opus" and self.sample_rate != 24000:
            raise refuse(
                "unsupported_sample_rate",
                f"{{param}} opus runs at 24000 Hz; got sample_rate {self.sample_rate}",
                field="audio_format",
            )
        return self


class SessionUpdate(ConversationSettings):
    type: Literal["session.update"]
    sample_rate: Any = None  # skipped: the rate is set once, in session.start
    audio_format: Annotated[
        Any, refused_unless((), "invalid_value", "{param} is chosen once, in session.start")
    ] = None


class PlaybackPosition(Skipped):
    """How much of the assistant's audio the listener has played (for what a barge-in cuts)."""

    type: Literal["playback.position"]
    played_ms: number_in(0, 1e10)


class SessionEnd(Skipped):
    type: Literal["session.end"]


class SessionImage(Refused):
    """Show the model an image (JPEG, PNG or WebP) from its next frames, or none (`data` null).

    `data` is the file's base64 text or a base64 data URL; it is decoded and checked off the event
    loop (server/images.py), so a bad image is refused after this event was read, with its own code."""

    type: Literal["session.image"]
    data: str | None


ClientEvent = SessionStart | SessionUpdate | PlaybackPosition | SessionEnd | SessionImage
CLIENT_EVENTS: dict[str, type[ClientEvent]] = {
    "session.start": SessionStart,
    "session.update": SessionUpdate,
    "playback.position": PlaybackPosition,
    "session.end": SessionEnd,
    "session.image": SessionImage,
}
