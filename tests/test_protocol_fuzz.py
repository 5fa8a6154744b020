"""Property-based fuzzing of both wire decoders and of the Realtime state machine: whatever a client
sends is either accepted or refused with a typed error; no other exception ever escapes, and the
conversation answers normally afterwards."""

from __future__ import annotations

import json

from fuzz_strategies import json_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.protocols.native import wire
from server.protocols.realtime.records import SendEvent
from server.protocols.realtime.state_machine import RealtimeConversation

# JSON values of any shape, biased towards the field names and types the decoders look at.
NAMES = st.sampled_from(
    [
        "type",
        "sample_rate",
        "barge_in",
        "vad",
        "threshold",
        "min_silence_ms",
        "min_interrupt_ms",
        "seed",
        "temperature",
        "captions",
        "played_ms",
        "session",
        "audio",
        "input",
        "output",
        "format",
        "turn_detection",
        "item",
        "content",
        "response",
        "event_id",
        "item_id",
        "audio_end_ms",
        "max_output_tokens",
    ]
)
TYPES = st.sampled_from(
    [
        "session.start",
        "session.update",
        "playback.position",
        "session.end",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "conversation.item.create",
        "conversation.item.truncate",
        "response.create",
        "response.cancel",
    ]
)
VALUES = json_values(NAMES, TYPES)
EVENTS = st.fixed_dictionaries({"type": TYPES}, optional={"x": VALUES}).flatmap(
    lambda base: st.dictionaries(NAMES, VALUES, max_size=6).map(lambda extra: {**extra, "type": base["type"]})
)
MESSAGES = st.one_of(
    EVENTS.map(json.dumps),
    VALUES.map(json.dumps),
    st.text(max_size=40),
    st.binary(max_size=40),
)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(MESSAGES)
def test_native_decoder_accepts_or_refuses_with_a_documented_code(message):
    try:
        if isinstance(message, bytes):
            wire.check_audio(message, started=True)
        else:
            wire.decode_text(message)
    except wire.ProtocolError as err:
        assert err.code in wire.ERROR_CODES and err.message


@FUZZ
@given(st.lists(MESSAGES, min_size=1, max_size=6))
def test_realtime_state_machine_answers_every_message_and_goes_on(messages):
    conv = RealtimeConversation(session_id="s", model="m", voice="v", id_prefix="f", captions_model="c")
    conv.start()
    for message in messages:
        for out in conv.receive(message):
            if isinstance(out, SendEvent) and out.event["type"] == "error":
                assert out.event["error"]["code"] and out.event["error"]["message"]
                assert out.event["error"]["type"] == "invalid_request_error", out
    # Still a working conversation: a valid event gets its normal answer.
    (answer,) = [
        o.event
        for o in conv.receive(json.dumps({"type": "input_audio_buffer.clear"}))
        if isinstance(o, SendEvent)
    ]
    assert answer["type"] == "input_audio_buffer.cleared"
