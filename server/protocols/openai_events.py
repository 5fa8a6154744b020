"""What OpenAI's two websocket APIs served here share, as pure code: a client event is a JSON object
with a `type` and an optional `event_id`, and a refused one becomes one `error` server event naming
a code, a message, the parameter and the client's event_id; the session goes on.

`ClientEvents.parse` reads one text frame into the typed client event its `type` names, among an
API's models (server/protocols/realtime/client_events.py, server/protocols/live/client_events.py).
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import ValidationError

from server.protocols.json_frames import InvalidJson, load_object
from server.protocols.schema import Skipped, any_event, refusal


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


class ClientEvent(Skipped):
    """Every client event: its `type`, and the client's `event_id` (a string; ClientEvents.parse drops
    any other), which the server events it causes carry back."""

    type: str
    event_id: str | None = None


class ClientEvents:
    """One API's client events: `models` (each names its `type`s as a Literal), and `unsupported`, the
    API's events this server refuses, with the reason."""

    def __init__(
        self,
        models: tuple[type[ClientEvent], ...],
        unsupported: dict[str, str],
        *,
        protocol: str,
        audio_event: str,
    ):
        self.models = {kind: m for m in models for kind in typing.get_args(m.model_fields["type"].annotation)}
        self.unsupported = unsupported
        self.protocol = protocol
        self.audio_event = audio_event
        self._any = any_event(models)

    def parse(self, data: str | bytes) -> ClientEvent:
        """One websocket message -> the typed client event its `type` names. Raises EventError (never
        anything else)."""
        if isinstance(data, str):
            try:  # a well-formed event, in one pass of pydantic's own JSON parser: the common case
                return self._any.validate_json(data)
            except ValidationError:
                pass  # find out what is wrong, and say it as the API does
        return self._refused_or_parsed(data)

    def _refused_or_parsed(self, data: str | bytes) -> ClientEvent:
        if isinstance(data, bytes):
            raise EventError(
                "invalid_json",
                f"binary frames are not part of the {self.protocol} protocol; send JSON text "
                f"events (audio goes base64 in {self.audio_event})",
            )
        try:
            event = load_object(data)
        except InvalidJson as exc:
            raise EventError(
                "invalid_json",
                f'a {self.protocol} client event is a JSON object with a "type"; this message: {exc}',
            ) from None
        event_id = event.get("event_id")
        if not isinstance(event_id, str):
            event_id = None
            event.pop("event_id", None)  # not a string: ignored, as the APIs' clients expect
        kind = event.get("type")
        if not isinstance(kind, str):
            raise EventError("missing_field", 'a client event needs a string "type"', "type", event_id)
        if kind in self.unsupported:
            raise EventError("unsupported_event", f"{kind}: {self.unsupported[kind]}", "type", event_id)
        model = self.models.get(kind)
        if model is None:
            raise EventError(
                "unknown_event",
                f"unknown client event type {kind[:60]!r}; supported: {', '.join(self.models)}",
                "type",
                event_id,
            )
        try:
            return model.model_validate(event)
        except ValidationError as exc:
            refused = refusal(exc, model)
            raise EventError(refused.code, refused.message, refused.param, event_id) from None
