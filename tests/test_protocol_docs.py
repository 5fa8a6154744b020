"""Each protocol's document names every client event and every field its schemas accept, so the two
cannot drift: a field added to a client-event model (server/protocols/*/client_events.py,
server/protocols/moshi/query.py) without a word in the docs fails here."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from server.protocols.live import client_events as live
from server.protocols.moshi import query as moshi
from server.protocols.native import client_events as native
from server.protocols.realtime import client_events as realtime

DOCS = Path(__file__).resolve().parents[1] / "docs"


def field_names(model: type[BaseModel]) -> set[str]:
    """The names of `model`'s fields and of the fields of every model under it."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        for sub in models_in(info.annotation):
            names |= field_names(sub)
    return names


def models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def named_in(doc: str) -> set[str]:
    """Every name the document writes as code: `a.b.c` and `{"id": NAME}` give each of their parts."""
    prose = re.sub(r"```.*?```", "", doc, flags=re.S)
    return {part for code in re.findall(r"`([^`\n]+)`", prose) for part in re.split(r"[^\w]+", code) if part}


@pytest.mark.parametrize(
    ("doc", "events"),
    [
        ("protocol.md", native.CLIENT_EVENTS),
        ("realtime.md", realtime.CLIENT_EVENTS),
        ("live.md", live.CLIENT_EVENTS),
    ],
)
def test_every_client_event_and_field_is_in_the_docs(doc, events):
    text = (DOCS / doc).read_text()
    assert not [kind for kind in events if f"`{kind}`" not in text]
    fields = set().union(*(field_names(model) for model in events.values()))
    assert sorted(fields - named_in(text)) == []


def test_every_query_parameter_of_api_chat_is_in_the_docs():
    text = (DOCS / "moshi-protocol.md").read_text()
    assert sorted(set(moshi.ChatQuery.model_fields) | set(moshi.IGNORED_QUERY)) == sorted(
        name for name in (*moshi.ChatQuery.model_fields, *moshi.IGNORED_QUERY) if f"`{name}`" in text
    )


def test_the_native_options_table_has_a_row_for_every_option():
    text = (DOCS / "protocol.md").read_text()
    rows = {
        name
        for line in text.splitlines()
        if line.startswith("| `")
        for name in re.findall(r"`(\w+)`", line.split("|")[1])
    }
    assert sorted(set(native.OPTION_FIELDS) - rows) == []
