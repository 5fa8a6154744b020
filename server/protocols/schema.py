"""What the client-event schemas of every protocol share: the unknown-field policies, the constrained
types (numbers in a range, well-formed text, voice names, base64 audio), and `refusal`, the one
mapping of a validation failure to what a protocol tells its client: a code, a message, the path of
the parameter (`session.audio.input.format`, `item.content[0].type`, `vad.threshold`).

Each protocol's client events are pydantic models (server/protocols/*/client_events.py, the Moshi
query in server/protocols/moshi/query.py) on one of three policies for fields the schema does not
name: `Refused` (an `unknown_parameter`-style error), `Reported` (kept in `model_extra`, for a
warning) and `Skipped`. JSON values are taken as they are (`strict`: "5" is not a number, `true` is
not 1), and NaN or infinity is never a number.

A validator refuses a value with `refuse(code, message)`: `code` is the wire code (`invalid_value`,
`unsupported_feature`, ...); "{param}" in `message` becomes the parameter's path.
"""

from __future__ import annotations

import base64
import binascii
import functools
import operator
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from assistant.engine import MAX_PROMPT_CHARS
from assistant.images import MIME_TYPES, CorruptImage, ImageError, UnsupportedImageType

MAX_NAME_CHARS = 200  # voice names, model names: what fits a file name
MAX_TOP_K = 100_000  # beyond any vocabulary; 0 = the whole vocabulary
MAX_PREVIEW_CHARS = 40  # of a client's value echoed in an error message (a field may be megabytes)


# -- unknown-field policies -------------------------------------------------------------------------


class Refused(BaseModel):
    """A schema whose unknown fields are refused (`unknown_parameter`, or the protocol's code)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


class Reported(BaseModel):
    """A schema whose unknown fields are accepted and kept in `model_extra`, to be reported."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, allow_inf_nan=False)


class Skipped(BaseModel):
    """A schema whose unknown fields are accepted and dropped."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, allow_inf_nan=False)


# -- refusing a value -------------------------------------------------------------------------------


def refuse(code: str, message: str, field: str | None = None) -> PydanticCustomError:
    """The error a validator raises: `message` says what to fix ("{param}" becomes the parameter's
    path); `field` names a field under the one validated (for a model's own validators)."""
    return PydanticCustomError(code, "{message}", {"message": message, "field": field})


def preview(value: Any) -> str:
    """A bounded echo of what the client sent."""
    text = repr(value)
    return text if len(text) <= MAX_PREVIEW_CHARS else text[: MAX_PREVIEW_CHARS - 3] + "..."


def number_in(lo: float, hi: float):
    """A JSON number (an integer too) within lo..hi, as a float."""

    def check(value: float) -> float:
        if not lo <= value <= hi:
            raise refuse(
                "invalid_value", f"{{param}} must be between {lo:g} and {hi:g}, got {preview(value)}"
            )
        return value

    return Annotated[float, AfterValidator(check)]


def integer_in(lo: int, hi: int):
    """A JSON integer within lo..hi (1.0 is a number, not an integer)."""

    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise refuse("invalid_value", f"{{param}} must be between {lo} and {hi}, got {preview(value)}")
        return value

    return Annotated[int, AfterValidator(check)]


def whole_ms_in(lo: int, hi: int):
    """A JSON number of milliseconds within lo..hi, cut to a whole millisecond."""
    return Annotated[number_in(lo, hi), AfterValidator(int)]


def text(max_chars: int):
    """Text a tokenizer reads or a file name is made of: well-formed Unicode (no lone surrogate, which
    SentencePiece cannot take), no NUL (which no file name holds), at most `max_chars` characters."""

    def check(value: str) -> str:
        if len(value) > max_chars:
            raise refuse("invalid_value", f"{{param}} is {len(value)} characters; at most {max_chars}")
        if "\0" in value:
            raise refuse("invalid_value", f"{{param}} holds a NUL character (at {value.index(chr(0))})")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise refuse(
                    "invalid_value",
                    f"{{param}} is not well-formed Unicode: a lone surrogate U+{ord(value[exc.start]):04X} "
                    f"at {exc.start} (send UTF-8 text, or JSON escapes of whole characters)",
                ) from None
        return value

    return Annotated[str, AfterValidator(check)]


def _voice_name(value: str) -> str:
    if not value:
        raise refuse("invalid_value", "{param} is empty; name one of GET /v1/voices")
    # Files on the server are its operator's (`assistant serve --voice FILE`): no client picks one.
    if "/" in value or "\\" in value or value.startswith((".", "~")):
        raise refuse(
            "invalid_value", f"{{param}} {preview(value)} is not a voice name; use one of GET /v1/voices"
        )
    return value


# One of the model's voices by name (`GET /v1/voices`), never a path.
VoiceName = Annotated[text(MAX_NAME_CHARS), AfterValidator(_voice_name)]


# The sampling options of a conversation and its role prompt, as every protocol that sets them takes them.
MAX_TEMPERATURE = 5.0
Temperature = number_in(0.0, MAX_TEMPERATURE)  # 0: greedy
TopK = integer_in(0, MAX_TOP_K)
Seed = integer_in(-(2**63), 2**64 - 1)  # what a torch.Generator takes
PromptText = text(MAX_PROMPT_CHARS)


def _base64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise refuse("invalid_audio", f"{{param}} is not valid base64: {exc}") from None


def _base64_pcm16(value: str) -> bytes:
    pcm16 = _base64(value)
    if len(pcm16) % 2:
        raise refuse("invalid_audio", f"{{param}} has {len(pcm16)} bytes; PCM16 needs 2 bytes per sample")
    return pcm16


Base64Audio = Annotated[str, AfterValidator(_base64)]  # the decoded bytes
Base64Pcm16 = Annotated[str, AfterValidator(_base64_pcm16)]  # the decoded bytes, whole 16-bit samples

# "data:image/png;base64," and the like: the head of a data URL, as the OpenAI APIs and browsers write it.
_DATA_URL_HEAD = re.compile(r"data:([\w.+-]+/[\w.+-]+)((?:;[\w.+-]+=[\w.+-]+)*)(;base64)?,")
_MAX_DATA_URL_HEAD_CHARS = 200


def image_data_start(url: str) -> int:
    """Where the base64 data of an image's data URL (`data:image/png;base64,...`) begins. Reads only
    the head (the data is decoded off the event loop); raises UnsupportedImageType for another URL
    or media type, CorruptImage for a data URL that is not base64."""
    head = _DATA_URL_HEAD.match(url, 0, _MAX_DATA_URL_HEAD_CHARS)
    if head is None:
        raise UnsupportedImageType(
            f"{preview(url)} is not a data URL: send the image itself, as data:image/jpeg;base64,... "
            "(this server fetches no URLs)"
        )
    if head.group(1).lower() not in MIME_TYPES.values():
        raise UnsupportedImageType(
            f"a data URL of {head.group(1)!r}: images are {', '.join(MIME_TYPES.values())}"
        )
    if head.group(3) is None:
        raise CorruptImage("the data URL is not base64 (';base64,' must come before the data)")
    return head.end()


def _image_data_url(value: str) -> str:
    try:
        image_data_start(value)
    except ImageError as exc:
        raise refuse(exc.code, f"{{param}}: {exc}") from None
    return value


# A JPEG, PNG or WebP image as a base64 data URL; only its head is checked here.
ImageDataUrl = Annotated[str, AfterValidator(_image_data_url)]


def refused_unless(allowed: tuple, code: str, message: str) -> AfterValidator:
    """Refuse, with `code`, every value but `allowed`: an option the server cannot serve, which no
    warning could stand in for (it would change what the model hears or says)."""

    def check(value: Any) -> Any:
        if value not in allowed:
            raise refuse(code, message.replace("{got}", preview(value)))
        return value

    return AfterValidator(check)


def null_as_empty(model: type[BaseModel]):
    """An object of `model`, where null means the same as {} (every field left at its default)."""
    return Annotated[model, BeforeValidator(lambda value: {} if value is None else value)]


def voice_by_name_or_id(by_id: type[BaseModel]):
    """A voice by name, or as {"id": NAME} (a custom voice in OpenAI's APIs; `by_id` says what else
    the object may hold), validated as a VoiceName and given as the name."""
    return Annotated[
        Annotated[VoiceName, Tag("name")] | Annotated[by_id, Tag("id")],
        Discriminator(lambda value: "id" if isinstance(value, dict) else "name"),
        AfterValidator(lambda value: value if isinstance(value, str) else value.id),
    ]


# -- fields accepted but not honoured ---------------------------------------------------------------


@dataclass(frozen=True)
class NotApplied:
    """Marks a field a client may send and the server cannot honour: accepted, and reported (as a
    warning) when its value asks for something, that is, is none of `unless`."""

    reason: str
    unless: tuple = (None,)


def not_applied(model: BaseModel, path: str) -> list[tuple[str, str]]:
    """(parameter path, reason) of every NotApplied field of `model` and the models under it that asks
    for something, in field order."""
    found: list[tuple[str, str]] = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        marks = [m for m in info.metadata if isinstance(m, NotApplied)]
        if marks and name in model.model_fields_set and value not in marks[0].unless:
            found.append((f"{path}.{name}", marks[0].reason))
        elif isinstance(value, BaseModel):
            found += not_applied(value, f"{path}.{name}")
    return found


def any_event(models: tuple[type[BaseModel], ...]) -> TypeAdapter:
    """One validator for all of a protocol's events, told apart by their `type` (a Literal in each):
    a well-formed event goes through pydantic's own JSON parser in one pass. A frame it refuses is
    read again, the protocol's own way, to say what is wrong."""
    return TypeAdapter(Annotated[functools.reduce(operator.or_, models), Field(discriminator="type")])


# -- a validation failure -> what the client is told ------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """What to tell the client: the wire `code`, a `message` that says what to fix, the `param` path."""

    code: str
    message: str
    param: str


_KINDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "model_type": "an object",
    "dict_type": "an object",
    "list_type": "an array",
    "none_required": "null",
}


def refusal(
    exc: ValidationError, schema: type[BaseModel], *, unknown_code: str = "unknown_parameter"
) -> Refusal:
    """The first error of a failed `schema.model_validate` as the client is told it, an unknown field
    before any value (most often a typo). `unknown_code`: the protocol's code for a field a `Refused`
    schema does not name."""
    errors = exc.errors(include_url=False)
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    kind, ctx = error["type"], error.get("ctx") or {}
    loc = (*error["loc"], ctx["field"]) if ctx.get("field") else error["loc"]
    param, known = _path(schema, loc)
    if "message" in ctx:  # refused by one of our validators
        return Refusal(kind, ctx["message"].replace("{param}", param, 1), param)
    if kind == "missing":
        return Refusal("missing_field", f"{param} is required", param)
    if kind == "extra_forbidden":
        return Refusal(unknown_code, f"unknown parameter {param}; known: {', '.join(known)}", param)
    if kind == "literal_error":
        return Refusal(
            "invalid_value", f"{param} must be {ctx['expected']}, got {preview(error['input'])}", param
        )
    if kind in _KINDS:
        return Refusal(
            "invalid_value", f"{param} must be {_KINDS[kind]}, got {preview(error['input'])}", param
        )
    return Refusal("invalid_value", f"{param}: {error['msg']}", param)


def _path(schema: Any, loc: tuple) -> tuple[str, tuple[str, ...]]:
    """The parameter path of an error's `loc` (union tags dropped, list items as [i], long names cut),
    and the fields known where its last part is."""
    path, known, current = "", (), schema
    for part in loc:
        current = _unwrap(current)
        fields = _fields(current)
        if isinstance(part, int):
            path += f"[{part}]"
            args = typing.get_args(current)
            current = args[0] if args else None
        elif isinstance(current, _Tagged) and part in current.tags:
            current = current.tags[part]
        else:
            name = part if len(part) <= 60 else part[:57] + "..."
            path += f".{name}" if path else name
            known = tuple(fields)
            current = fields[part].annotation if part in fields else None
    return path, known


@dataclass(frozen=True)
class _Tagged:
    tags: dict[str, Any]


def _unwrap(annotation: Any) -> Any:
    """The type under Annotated and Optional; a union of tagged members as _Tagged."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            tags = {
                m.tag: typing.get_args(a)[0]
                for a in members
                if typing.get_origin(a) is Annotated
                for m in typing.get_args(a)[1:]
                if hasattr(m, "tag")
            }
            if tags:
                return _Tagged(tags)
            if len(members) != 1:
                return None
            annotation = members[0]
        else:
            return annotation


def _fields(annotation: Any) -> dict[str, Any]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.model_fields
    return {}
