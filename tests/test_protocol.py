"""The native wire protocol as pure functions: every client message either decodes or is refused
with the documented error code."""

from __future__ import annotations

import json

import pytest

from assistant.conversation import AudioOut, BargeIn, ConversationOptions, SessionEnded, Stats
from server.protocols.limits import RateLimiter
from server.protocols.native import wire
from server.protocols.native.client_events import PlaybackPosition, SessionEnd, SessionStart, SessionUpdate
from server.protocols.native.wire import ProtocolError, check_audio, decode_text, encode_event


def code_of(text) -> str:
    with pytest.raises(ProtocolError) as info:
        decode_text(text)
    return info.value.code


def test_session_start_decodes_rate_and_options():
    ev = decode_text(
        json.dumps(
            {
                "type": "session.start",
                "sample_rate": 48000,
                "barge_in": "vad",
                "min_interrupt_ms": 200,
                "vad": {"min_silence_ms": 300, "threshold": 0.6},
                "seed": 7,
                "temperature": 0.8,
                "captions": True,
            }
        )
    )
    assert isinstance(ev, SessionStart) and (ev.sample_rate, ev.audio_format) == (48000, "pcm16")
    assert ev.options() == {
        "barge_in": "vad",
        "min_interrupt_ms": 200,
        "vad": {"min_silence_ms": 300, "threshold": 0.6},
        "seed": 7,
        "temperature": 0.8,
        "captions": True,
    }
    # The options apply onto the defaults without losing the ones not given.
    opts = ConversationOptions().replace(**ev.options())
    assert opts.barge_in == "vad" and opts.vad == {"min_silence_ms": 300, "threshold": 0.6}


def test_other_client_events_decode():
    update = decode_text('{"type":"session.update","barge_in":"model"}')
    assert isinstance(update, SessionUpdate) and update.options() == {"barge_in": "model"}
    position = decode_text('{"type":"playback.position","played_ms":1234.5}')
    assert isinstance(position, PlaybackPosition) and position.played_ms == 1234.5
    assert isinstance(decode_text(b'{"type":"session.end"}'), SessionEnd)


@pytest.mark.parametrize(
    "text, code",
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        ('{"sample_rate": 24000}', "missing_field"),
        ('{"type": "session.dance"}', "unknown_event"),
        ('{"type": "session.start"}', "missing_field"),
        ('{"type": "session.start", "sample_rate": 22050}', "unsupported_sample_rate"),
        ('{"type": "session.start", "sample_rate": "24000"}', "unsupported_sample_rate"),
        ('{"type": "session.start", "sample_rate": true}', "unsupported_sample_rate"),
        ('{"type": "session.start", "sample_rate": 24000, "barge_in": "shout"}', "invalid_value"),
        ('{"type": "session.start", "sample_rate": 24000, "volume": 3}', "invalid_value"),
        ('{"type": "session.start", "sample_rate": 24000, "vad": {"threshold": 2}}', "invalid_value"),
        ('{"type": "session.start", "sample_rate": 24000, "vad": {"speed": 2}}', "invalid_value"),
        ('{"type": "session.start", "sample_rate": 24000, "min_interrupt_ms": -5}', "invalid_value"),
        ('{"type": "session.start", "sample_rate": 24000, "seed": 1.5}', "invalid_value"),
        # beyond what a torch.Generator takes: it used to fail the engine's slot open in the frame loop
        ('{"type": "session.start", "sample_rate": 24000, "seed": 18446744073709551616}', "invalid_value"),
        ('{"type": "session.start", "sample_rate": 24000, "captions": "yes"}', "invalid_value"),
        ('{"type": "session.update", "temperature": NaN}', "invalid_value"),
        ('{"type": "playback.position"}', "missing_field"),
        ('{"type": "playback.position", "played_ms": "soon"}', "invalid_value"),
        # Hostile but well-formed JSON: nesting past the parser's recursion limit, integers beyond float.
        ("[" * 5000 + "]" * 5000, "invalid_json"),
        ('{"type": "session.update", "vad": ' + "[" * 5000 + "]" * 5000 + "}", "invalid_json"),
        ('{"type": "playback.position", "played_ms": 1' + "0" * 400 + "}", "invalid_value"),
        ('{"type": "session.update", "min_interrupt_ms": 1' + "0" * 400 + "}", "invalid_value"),
        ('{"type": "session.update", "temperature": -1' + "0" * 400 + "}", "invalid_value"),
        ('{"type": "session.update", "vad": {"min_silence_ms": 1' + "0" * 400 + "}}", "invalid_value"),
    ],
)
def test_bad_messages_get_their_error_code(text, code):
    assert code_of(text) == code


def test_errors_say_what_to_do():
    with pytest.raises(ProtocolError) as info:
        decode_text('{"type": "session.start", "sample_rate": 22050}')
    assert "24000" in info.value.message and "22050" in info.value.message


def test_audio_checks():
    with pytest.raises(ProtocolError, match="not_started"):
        check_audio(b"\x00\x00", started=False)
    with pytest.raises(ProtocolError, match="bad_audio"):
        check_audio(b"\x00\x00\x00", started=True)
    check_audio(b"\x00" * 3840, started=True)


def test_encode_events():
    assert encode_event(AudioOut(pcm16=b"\x01\x02", at_ms=0.0)) == b"\x01\x02"
    assert json.loads(encode_event(BargeIn(at_ms=10.0, cut_text="the rest"))) == {
        "type": "barge_in",
        "at_ms": 10.0,
        "cut_text": "the rest",
    }
    assert json.loads(encode_event(SessionEnded(reason="client_ended"))) == {
        "type": "session.ended",
        "reason": "client_ended",
    }
    stats = json.loads(encode_event(Stats(None, None, 1, 2, 0.5, 80.0, 160.0)))
    assert stats["type"] == "stats" and stats["response_gap_ms"] is None and stats["drops"] == 2
    assert json.loads(wire.error_event("rate_limited", "slow down")) == {
        "type": "error",
        "code": "rate_limited",
        "message": "slow down",
    }


def test_every_conversation_event_has_an_explicit_wire_encoding():
    """The native encoder names every field itself; a new core event without one fails here."""
    import dataclasses

    from assistant.conversation import events

    for cls in vars(events).values():
        if isinstance(cls, type) and issubclass(cls, events.Event) and cls not in (events.Event, AudioOut):
            fields = {f.name: 1.0 if f.type == "float" else "x" for f in dataclasses.fields(cls)}
            body = json.loads(encode_event(cls(**fields)))
            assert body["type"] == cls.type
            # session.ready also says the session's audio_format, which the adapter (not the core) knows.
            wire_only = {"audio_format"} if cls is events.SessionReady else set()
            assert set(body) - {"type"} - wire_only == set(fields), cls.__name__


def test_rate_limiter_allows_bursts_then_the_average_rate():
    limiter = RateLimiter(rate_per_s=10, burst=5, now=0.0)
    assert sum(limiter.allow(0.0) for _ in range(20)) == 5  # the burst, then refused
    assert limiter.allow(0.05) is False  # half a token earned
    assert limiter.allow(0.1) is True
    # Over two seconds at 100 tries/s only the refilled burst and the rate get through.
    allowed = sum(limiter.allow(1.0 + i / 100) for i in range(200))
    assert 5 + 20 - 2 <= allowed <= 5 + 20


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000 + "]" * 5000,
        '{"type": "x", "n": 1' + "0" * 5000 + "}",  # past Python's 4300-digit limit
        "[1, 2]",
        b"\xff\xfe",
        "",
    ],
)
def test_every_json_protocol_refuses_the_same_frames_with_invalid_json(text):
    # One decoder for /ws, /v1/realtime and /v1/live/sessions: the same frame is refused by each.
    from server.protocols.live import client_events as live_events
    from server.protocols.realtime import client_events as realtime_events

    assert code_of(text) == "invalid_json"
    if isinstance(text, str):  # binary frames are refused as such by the OpenAI APIs
        for parse in (realtime_events.parse_client_event, live_events.parse_client_event):
            with pytest.raises(realtime_events.RealtimeError) as info:  # LiveError is the same class
                parse(text)
            assert info.value.code == "invalid_json"
