"""The one JSON decoding of every text frame on this server: `/ws` (server/protocols/native/wire.py) and the
OpenAI APIs, Realtime and Live (server/protocols/realtime/events.py). Each protocol turns `InvalidJson` into
its own typed error (`invalid_json` in all three).

Limits, all enforced before an event is looked at:
- size: a frame is at most 1 MiB (server/protocols/limits.py MAX_MESSAGE_BYTES; a larger one is refused
  unread by the connection, server/connection.py, and one over 16 MiB closes the socket with 1009);
- depth: nesting as deep as the interpreter's recursion limit (about 1000 levels) is refused, not
  a crash (`[[[[...]]]]`);
- numbers: an integer literal of more than 4300 digits is refused (Python's own limit); a number
  that decodes but is out of range for its field (`1e400`, a 400-digit integer, NaN) is the
  field's `invalid_value`, checked by each protocol's range checks.
"""

from __future__ import annotations

import json
from typing import Any


class InvalidJson(ValueError):
    """The frame is not one JSON object; the message says why."""


def load_object(data: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except RecursionError:
        raise InvalidJson("it nests too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, too many digits, not UTF-8
        raise InvalidJson(f"it is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidJson(f"it is a JSON {type(value).__name__}, not an object")
    return value
