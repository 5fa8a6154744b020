"""`assistant bench protocol` times accepted events, not refusals: each of its typical events decodes
into its own type and goes through the state machines without an error."""

from __future__ import annotations

from bench.protocol import measurements


def test_every_benchmarked_event_is_accepted():
    rows = measurements()
    assert {protocol for protocol, *_ in rows} == {"/ws", "/v1/realtime", "/v1/live", "/api/chat"}
    for protocol, name, stage, call in rows:
        result = call()
        if stage == "receive":
            assert not [o for o in result if isinstance(o, dict) and o["type"] == "error"], (protocol, name)
        elif protocol == "/api/chat":
            assert result["instructions"] and result["voice"]
        elif not name.startswith("binary"):  # the typed event of its own type
            assert result.type == name.split()[0], (protocol, name)
