"""Property-based fuzzing of the Live decoder and state machine: whatever a client sends, before or
after session.start, is accepted or refused with a typed error that validates against the SDK's
models; no other exception escapes, and the session answers normally afterwards."""

from __future__ import annotations

import json

import pydantic
from fuzz_strategies import json_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.live import ServerEvent

from server.protocols.live.client_events import CLIENT_EVENTS, UNSUPPORTED_CLIENT_EVENTS
from server.protocols.live.state_machine import LiveConversation, OpenSession
from server.protocols.realtime.records import SendEvent

SERVER_EVENT = pydantic.TypeAdapter(ServerEvent)
# JSON values of any shape, biased towards the field names and types the decoder looks at.
NAMES = st.sampled_from(
    [
        "type",
        "event_id",
        "session",
        "model",
        "instructions",
        "audio",
        "format",
        "rate",
        "output",
        "voice",
        "id",
        "delegation",
        "acknowledgement_delay_ms",
        "input",
        "client",
        "triggers",
        "store",
        "safety_identifier",
        "content",
        "delegation_id",
    ]
)
TYPES = st.sampled_from([*CLIENT_EVENTS, *UNSUPPORTED_CLIENT_EVENTS, "audio/pcm", "audio/pcmu", "client"])
VALUES = json_values(NAMES, TYPES, st.sampled_from([8000, 16000, 24000, 44100]))
EVENTS = st.builds(
    lambda kind, extra: {**extra, "type": kind}, TYPES, st.dictionaries(NAMES, VALUES, max_size=6)
)
MESSAGES = st.one_of(
    EVENTS.map(json.dumps), VALUES.map(json.dumps), st.text(max_size=40), st.binary(max_size=40)
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
START = json.dumps({"type": "session.start", "session": {"model": "m"}})


def feed(conv: LiveConversation, message) -> None:
    """One message through the state machine, and the adapter's part of a session.start."""
    for out in conv.receive(message):
        if isinstance(out, OpenSession):
            for started in conv.started("sess_fuzz", 0.0):
                SERVER_EVENT.validate_python(started.event)
        elif isinstance(out, SendEvent):
            SERVER_EVENT.validate_json(json.dumps(out.event))
            if out.event["type"] == "error":
                assert out.event["error"]["code"] and out.event["error"]["message"]
                assert out.event["error"]["type"] == "invalid_request_error", out


@FUZZ
@given(st.lists(MESSAGES, min_size=1, max_size=6), st.booleans())
def test_live_state_machine_answers_every_message_and_goes_on(messages, started_first):
    conv = LiveConversation(
        id_prefix="f",
        engine_name="m",
        takes_prompts=True,
        default_voice="V",
        captions=True,
        context_fill=lambda: 0.5,
    )
    if started_first:
        feed(conv, START)
    for message in messages:
        feed(conv, message)
    if conv.state == "closed":
        return  # a fuzzed session.close: nothing answers any more, as on the wire
    if conv.state == "new":
        feed(conv, START)
    # Still a working session: a valid event gets its normal answer.
    (answer,) = conv.receive(json.dumps({"type": "session.input_audio.mute"}))
    assert answer.event["type"] == "session.input_audio.muted"
