"""What OpenAI's two websocket APIs served here share, as pure code: a client event is a JSON object
with a `type` and an optional `event_id`, and a refused one becomes one `error` server event naming
a code, a message, the parameter and the client's event_id; the session goes on.

`parse_event` reads one text frame into the typed client event its `type` names, from the table of
a protocol's models (server/protocols/realtime/client_events.py, server/protocols/live/client_events.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationError

from server.protocols.json_frames import InvalidJson, load_object
from server.protocols.schema import Skipped, refusal


class EventError(Exception):
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


def _string_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class ClientEvent(Skipped):
    """Every client event: its `type`, and the client's `event_id` (a string, else ignored), which the
    server events it causes carry back."""

    type: str
    event_id: Annotated[str | None, BeforeValidator(_string_or_none)] = None


def parse_event(
    data: str | bytes,
    models: dict[str, type[ClientEvent]],
    unsupported: dict[str, str],
    *,
    protocol: str,
    audio_event: str,
) -> ClientEvent:
    """One websocket message -> the typed client event of `models[type]`. Raises EventError (never
    anything else): `unsupported` maps the API's events this server refuses to the reason."""
    if isinstance(data, bytes):
        raise EventError(
            "invalid_json",
            f"binary frames are not part of the {protocol} protocol; send JSON text "
            f"events (audio goes base64 in {audio_event})",
        )
    try:
        event = load_object(data)
    except InvalidJson as exc:
        raise EventError(
            "invalid_json", f'a {protocol} client event is a JSON object with a "type"; this message: {exc}'
        ) from None
    event_id = _string_or_none(event.get("event_id"))
    kind = event.get("type")
    if not isinstance(kind, str):
        raise EventError("missing_field", 'a client event needs a string "type"', "type", event_id)
    if kind in unsupported:
        raise EventError("unsupported_event", f"{kind}: {unsupported[kind]}", "type", event_id)
    model = models.get(kind)
    if model is None:
        raise EventError(
            "unknown_event",
            f"unknown client event type {kind[:60]!r}; supported: {', '.join(models)}",
            "type",
            event_id,
        )
    try:
        return model.model_validate(event)
    except ValidationError as exc:
        refused = refusal(exc, model)
        raise EventError(refused.code, refused.message, refused.param, event_id) from None
