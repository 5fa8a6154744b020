"""The OpenAI Live API as pure code: session.start's strict config, refusals, audio in and out, text,
prompts, usage and the end of a session.

Every server event the state machine emits is validated against the official `openai` SDK's Live
event models (`openai.types.live.ServerEvent`), so a schema drift shows up here, not in a client.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pydantic
import pytest
from openai.types.live import ServerEvent

from assistant.conversation import (
    AssistantSpeechStarted,
    AssistantSpeechStopped,
    AssistantText,
    AudioOut,
    BargeIn,
    Error,
    SessionEnded,
    UserTranscript,
    UserTranscriptDelta,
)
from assistant.conversation.turns import StretchEnded, StretchStarted, TurnTaking
from audio import g711
from server.protocols.live.client_events import UNSUPPORTED_CLIENT_EVENTS
from server.protocols.live.state_machine import (
    USAGE_EVERY_FRAMES,
    CloseSession,
    LiveConversation,
    LiveOutput,
    OpenSession,
)
from server.protocols.realtime.records import PushAudio, SendEvent, SetPrompt

SERVER_EVENT = pydantic.TypeAdapter(ServerEvent)
VOICE = np.full(1920, 300, "<i2").tobytes()  # one 80 ms frame of (quiet) voice at 24 kHz
QUIET = bytes(1920 * 2)
VOICES = ("NATF0", "NATM1")


def fake_check_prompt(instructions, voice):
    """What a PersonaPlex engine checks: a known voice, instructions that fit."""
    if voice not in (None, *VOICES):
        raise ValueError(f"unknown voice {voice!r}: use one of the model's voices ({', '.join(VOICES)})")
    if instructions and len(instructions) > 60:
        raise ValueError(f"the prompt takes {len(instructions)} frames but the model remembers 60")


def checked(out: list) -> list:
    """Every output one of LiveOutput's types, every server event valid for the SDK's Live models;
    the server events unwrapped (dicts, as sent) for the assertions, the actions as they are."""
    unwrapped = []
    for item in out:
        assert isinstance(item, LiveOutput), item
        if isinstance(item, SendEvent):
            SERVER_EVENT.validate_json(json.dumps(item.event))
            item = item.event
        unwrapped.append(item)
    return unwrapped


def feed(conv: LiveConversation, *events) -> list:
    """The conversation core's events through the state machine, in order."""
    return checked([out for event in events for out in conv.conversation_event(event)])


def events(out: list) -> list[dict]:
    return [e for e in out if isinstance(e, dict)]


def types(out: list) -> list[str]:
    return [e["type"] for e in events(out)]


def send(conv: LiveConversation, **event) -> list:
    return checked(conv.receive(json.dumps(event)))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def new_conversation(prompts: bool = False, **kwargs) -> LiveConversation:
    if prompts:
        kwargs = {
            "takes_prompts": True,
            "check_prompt": fake_check_prompt,
            "default_voice": "NATF0",
            "default_instructions": "You are helpful.",
            **kwargs,
        }
    return LiveConversation(id_prefix="t", engine_name="moshi-test", max_session_s=3600, **kwargs)


def start(conv: LiveConversation, *, event_id: str = "c0", **session) -> list:
    """session.start as a client sends it, and the adapter's part: open the session, report it."""
    out = send(conv, type="session.start", event_id=event_id, session={"model": "gpt-live-1", **session})
    opens = [o for o in out if isinstance(o, OpenSession)]
    if not opens:
        return out
    return out + checked(conv.started("sess_test", now_s=1000.0))


def error_of(out: list) -> dict:
    (event,) = events(out)
    assert event["type"] == "error", event
    return event["error"]


class CoreTurns:
    """The core's stretch rule (assistant/conversation/turns.py) in front of the state machine, in the
    order the core returns its events: stretch start/stop first, then that frame's audio."""

    def __init__(self, conv: LiveConversation):
        self.conv = conv
        self.turns = TurnTaking("model", hangover_frames=3)
        self.at_ms = 0.0

    def frame(self, pcm16: bytes, speaking: bool) -> list:
        events: list = []
        for change in self.turns.assistant_frame(speaking, int(self.at_ms * 24)):
            if isinstance(change, StretchStarted):
                events.append(AssistantSpeechStarted(self.at_ms))
            elif isinstance(change, StretchEnded):
                events.append(AssistantSpeechStopped(self.at_ms))
        events.append(AudioOut(pcm16, self.at_ms, speaking))
        self.at_ms += 80
        return feed(self.conv, *events)

    def frames(self, pattern: str) -> list:
        """`pattern`: one character per frame, "s" speaking, "." quiet."""
        out: list = []
        for c in pattern:
            out += self.frame(VOICE if c == "s" else QUIET, c == "s")
        return out


def deltas(out: list) -> list[dict]:
    return [e for e in events(out) if e["type"] == "session.output_audio.delta"]


# -- session.start ----------------------------------------------------------------------------------


def test_session_start_echoes_the_model_and_reports_what_a_model_without_prompts_ignores():
    conv = new_conversation()
    out = start(
        conv,
        instructions="You are a pirate.",
        audio={"format": {"type": "audio/pcm", "rate": 16000}, "output": {"voice": "marin"}},
        store=True,
    )
    (opened,) = [o for o in out if isinstance(o, OpenSession)]
    assert opened == OpenSession(16000, None, None, captions=False)
    started, *notices = events(out)
    assert started["type"] == "session.started" and started["client_event_id"] == "c0"
    session = started["session"]
    assert session["model"] == "gpt-live-1" and session["id"] == "sess_test"
    assert session["audio"] == {
        "format": {"type": "audio/pcm", "rate": 16000},
        "output": {"voice": "moshi-test"},
    }
    assert session["instructions"] == "" and session["expires_at"] == 4600
    # Accepted, not applied, and said so with the API's own `info` events.
    assert {n["code"] for n in notices} == {
        "instructions_not_applied",
        "voice_not_applied",
        "store_not_supported",
        "input_transcripts_off",
    }
    assert all(n["type"] == "info" and n["client_event_id"] == "c0" for n in notices)


def test_what_frameworks_send_by_default_that_needs_a_text_model_is_accepted_and_reported_once():
    conv = new_conversation(captions=True)
    # LiveKit's GPTLiveModel, as it starts a session by default (history after a reconnect).
    out = start(
        conv,
        delegation={"type": "responses", "responses": {"model": "gpt-5.4-mini", "tools": None}},
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        triggers=[{"type": "predicate"}],
        client={"data_channel": {}},
    )
    started, *notices = events(out)
    assert started["type"] == "session.started" and started["session"]["delegation"] is None
    assert {n["code"] for n in notices} == {
        "delegation_not_supported",
        "input_not_supported",
        "triggers_not_supported",
        "client_not_supported",
    }
    assert "text model" in next(n for n in notices if n["code"] == "delegation_not_supported")["message"]
    # The same options again, and the context appends LiveKit's generate_reply sends: one notice each.
    (updated,) = send(
        conv, type="session.update", session={"delegation": {"type": "responses", "responses": {}}}
    )
    assert updated["type"] == "session.updated"
    first = send(conv, type="session.commentary.append", content="Reply to the caller now.", event_id="k1")
    assert [(e["type"], e["code"], e["client_event_id"]) for e in first] == [
        ("info", "commentary_not_supported", "k1")
    ]
    assert send(conv, type="session.commentary.append", content="Again.") == []
    (thinking,) = send(conv, type="session.thinking.append", content="The caller is in a hurry.")
    assert thinking["code"] == "thinking_not_supported"
    assert send(conv, type="session.input_audio.append", audio=b64(VOICE)) == [PushAudio(VOICE)]


def test_a_model_with_prompts_gets_the_instructions_and_voice_or_its_defaults():
    conv = new_conversation(prompts=True, captions=True)
    out = start(conv, instructions="Talk about films.", audio={"output": {"voice": {"id": "NATM1"}}})
    assert [o for o in out if isinstance(o, OpenSession)] == [
        OpenSession(24000, "Talk about films.", "NATM1", captions=True)
    ]
    (started,) = events(out)  # nothing ignored, nothing to report
    assert started["session"]["instructions"] == "Talk about films."
    assert started["session"]["audio"]["output"]["voice"] == "NATM1"
    # Blank instructions and no voice: the server's defaults, as OpenAI's "server defaults".
    conv = new_conversation(prompts=True, captions=True)
    out = start(conv, instructions="  ")
    assert [o for o in out if isinstance(o, OpenSession)] == [
        OpenSession(24000, "You are helpful.", "NATF0", captions=True)
    ]


def test_an_openai_voice_falls_back_to_the_models_default_but_an_unknown_one_is_refused():
    conv = new_conversation(prompts=True, captions=True)
    out = start(conv, audio={"output": {"voice": "marin"}})
    started, notice = events(out)
    assert started["session"]["audio"]["output"]["voice"] == "NATF0"
    assert notice["code"] == "voice_not_available" and "NATF0" in notice["message"]
    conv = new_conversation(prompts=True)
    error = error_of(start(conv, event_id="v1", audio={"output": {"voice": "NOBODY"}}))
    assert (error["code"], error["param"], error["client_event_id"]) == (
        "invalid_value",
        "session.audio.output.voice",
        "v1",
    )
    assert "unknown voice 'NOBODY'" in error["message"]
    error = error_of(start(conv, audio={"output": {"voice": "../voices/x.wav"}}))  # files are the operator's
    assert (error["code"], error["param"]) == ("invalid_value", "session.audio.output.voice")
    error = error_of(start(conv, instructions="x" * 100))
    assert (error["code"], error["param"]) == ("invalid_value", "session.instructions")
    assert "shorten" not in error["message"] and "60" in error["message"]
    assert types(start(conv))[0] == "session.started"  # refused starts change nothing: try again


START_ERRORS = {
    "unknown field": ({"voice": "marin"}, "unknown_parameter", "session.voice"),
    "unknown audio field": ({"audio": {"input": {}}}, "unknown_parameter", "session.audio.input"),
    "44.1 kHz": (
        {"audio": {"format": {"type": "audio/pcm", "rate": 44100}}},
        "unsupported_audio_format",
        None,
    ),
    "pcm at 8 kHz": (
        {"audio": {"format": {"type": "audio/pcm", "rate": 8000}}},
        "unsupported_audio_format",
        None,
    ),
    "opus": ({"audio": {"format": {"type": "audio/opus"}}}, "unsupported_audio_format", None),
    "rate as text": ({"audio": {"format": {"rate": "24000"}}}, "unsupported_audio_format", None),
    "unknown delegation": ({"delegation": {"type": "elsewhere"}}, "invalid_value", "session.delegation.type"),
    "model missing": ({"model": None}, "missing_field", "session.model"),
    "model a number": ({"model": 5}, "invalid_value", "session.model"),
    "voice not a name": ({"audio": {"output": {"voice": 5}}}, "invalid_value", "session.audio.output.voice"),
    "huge instructions": ({"instructions": "x" * 100_000}, "invalid_value", "session.instructions"),
    "store as text": ({"store": "yes"}, "invalid_value", "session.store"),
}


@pytest.mark.parametrize("case", sorted(START_ERRORS))
def test_a_bad_session_start_is_refused_with_a_typed_error_and_the_client_can_start_again(case):
    fields, code, param = START_ERRORS[case]
    conv = new_conversation()
    session = {"model": "gpt-live-1", **fields}
    session = {k: v for k, v in session.items() if v is not None}
    error = error_of(send(conv, type="session.start", event_id="s1", session=session))
    assert error["code"] == code and error["message"]
    assert error["param"] == (param or error["param"]) and error["param"].startswith("session")
    assert error["client_event_id"] == "s1" and error["type"] == "invalid_request_error"
    assert conv.state == "new"
    assert types(start(conv))[0] == "session.started"


def test_error_messages_stay_short_whatever_size_the_client_sent():
    huge = "x" * 200_000
    for session in (
        {"model": "m", huge: 1},
        {"model": "m", "audio": {"format": {"type": huge}}},
        {"model": "m", "delegation": {"type": huge}},
        {"model": huge},
    ):
        error = error_of(send(new_conversation(), type="session.start", session=session))
        assert len(error["message"]) < 400 and len(error["param"] or "") < 100, error["code"]
    assert len(error_of(send(new_conversation(), type=huge))["message"]) < 400


def test_g711_at_8_khz_is_decoded_on_the_way_in_and_encoded_on_the_way_out():
    for kind, law in (("audio/pcmu", "ulaw"), ("audio/pcma", "alaw")):
        conv = new_conversation()
        started = events(start(conv, audio={"format": {"type": kind, "rate": 8000}}))[0]
        assert started["session"]["audio"]["format"] == {"type": kind, "rate": 8000}
        codes = bytes(range(255))  # an odd number of bytes is fine: one byte per sample
        (push,) = send(conv, type="session.input_audio.append", audio=b64(codes))
        assert push == PushAudio(g711.decode(codes, law))
        core = CoreTurns(conv)
        pcm8k = np.full(640, 1000, "<i2").tobytes()  # the core's output at the session's 8 kHz
        (delta,) = deltas(core.frame(pcm8k, True))
        assert base64.b64decode(delta["delta"]) == g711.encode(pcm8k, law)


# -- before, during, after ---------------------------------------------------------------------------


def test_commands_before_session_start_and_a_second_start_are_refused():
    conv = new_conversation()
    for kind in ("session.input_audio.append", "session.input_audio.mute", "session.instructions.append"):
        error = error_of(send(conv, type=kind, audio="", content="x", event_id="e1"))
        assert (error["code"], error["client_event_id"]) == ("session_not_started", "e1")
    start(conv)
    error = error_of(send(conv, type="session.start", session={"model": "again"}))
    assert error["code"] == "session_already_started"
    assert conv.model == "gpt-live-1"


@pytest.mark.parametrize("kind", sorted(UNSUPPORTED_CLIENT_EVENTS))
def test_events_that_need_a_text_model_are_refused_by_name_and_the_session_goes_on(kind):
    conv = new_conversation()
    start(conv)
    error = error_of(send(conv, type=kind, event_id="u1", content="hello"))
    assert (error["code"], error["param"], error["client_event_id"]) == ("unsupported_event", "type", "u1")
    assert kind in error["message"]
    assert send(conv, type="session.input_audio.append", audio=b64(VOICE)) == [PushAudio(VOICE)]


BAD_MESSAGES = {
    "not json": ('{"type": "session.input_audio.append", ', "invalid_json"),
    "not an object": ("[1, 2]", "invalid_json"),
    "binary": (b"\x00\x01", "invalid_json"),
    "deep nesting": ("[" * 100_000 + "]" * 100_000, "invalid_json"),
    "no type": ('{"audio": ""}', "missing_field"),
    "unknown type": ('{"type": "session.explode"}', "unknown_event"),
    "audio not a string": ('{"type": "session.input_audio.append", "audio": 5}', "invalid_value"),
    "audio missing": ('{"type": "session.input_audio.append"}', "missing_field"),
    "bad base64": ('{"type": "session.input_audio.append", "audio": "not*base64!"}', "invalid_audio"),
    "odd length": (
        json.dumps({"type": "session.input_audio.append", "audio": b64(b"\x00" * 3)}),
        "invalid_audio",
    ),
    "content too long": (
        json.dumps({"type": "session.instructions.append", "content": "x" * 10_000}),
        "invalid_value",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
def test_bad_input_gets_a_typed_error_and_loses_nothing(case):
    message, code = BAD_MESSAGES[case]
    conv = new_conversation()
    start(conv)
    send(conv, type="session.input_audio.mute")
    error = error_of(checked(conv.receive(message)))
    assert error["code"] == code and error["message"]
    # Nothing changed: still muted, the format still whole samples, the clock where it was.
    assert conv.muted and conv.state == "live" and conv.frames_out == 0
    assert send(conv, type="session.input_audio.append", audio=b64(VOICE)) == [PushAudio(QUIET)]


def test_mute_feeds_the_model_silence_of_the_same_length_until_unmute():
    conv = new_conversation()
    start(conv)
    (muted,) = send(conv, type="session.input_audio.mute", event_id="m1")
    assert (muted["type"], muted["client_event_id"]) == ("session.input_audio.muted", "m1")
    assert send(conv, type="session.input_audio.append", audio=b64(VOICE)) == [PushAudio(QUIET)]
    assert types(send(conv, type="session.input_audio.unmute")) == ["session.input_audio.unmuted"]
    assert send(conv, type="session.input_audio.append", audio=b64(VOICE)) == [PushAudio(VOICE)]
    assert send(conv, type="session.input_audio.append", audio="") == []


def test_session_update_takes_client_delegation_and_refuses_startup_fields():
    conv = new_conversation()
    start(conv)
    (updated,) = send(
        conv,
        type="session.update",
        event_id="u1",
        session={"delegation": {"type": "client", "acknowledgement_delay_ms": 200}, "triggers": []},
    )
    assert updated["type"] == "session.updated" and updated["client_event_id"] == "u1"
    assert updated["session"]["delegation"] == {"type": "client", "acknowledgement_delay_ms": 200}
    for field, code in (
        ("instructions", "immutable_parameter"),
        ("audio", "immutable_parameter"),
        ("model", "immutable_parameter"),
        ("tools", "unknown_parameter"),
    ):
        error = error_of(send(conv, type="session.update", session={field: "x"}))
        assert (error["code"], error["param"]) == (code, f"session.{field}")
    error = error_of(send(conv, type="session.update", session={"instructions": "x"}))
    assert "session.instructions.append" in error["message"]
    updated, notice = send(conv, type="session.update", session={"delegation": {"type": "decisions"}})
    assert updated["session"]["delegation"] is None and notice["code"] == "delegation_not_supported"


# -- instructions.append ----------------------------------------------------------------------------


def test_instructions_append_restarts_a_prompted_model_with_the_longer_role():
    conv = new_conversation(prompts=True, captions=True)
    start(conv, instructions="Be a pirate.")
    core = CoreTurns(conv)
    core.frames("." * 5)
    out = send(conv, type="session.instructions.append", event_id="i1", content="Say arr.")
    assert out[0] == SetPrompt("Be a pirate.\nSay arr.", "NATF0")
    appended = out[1]
    assert appended["type"] == "session.instructions.appended" and appended["client_event_id"] == "i1"
    assert appended["start_ms"] == appended["end_ms"] == 400  # on the session clock
    # What the engine cannot hold is refused and changes nothing.
    error = error_of(send(conv, type="session.instructions.append", content="y" * 80))
    assert (error["code"], error["param"]) == ("invalid_value", "content")
    assert conv.instructions == "Be a pirate.\nSay arr."
    error = error_of(send(conv, type="session.instructions.append", content="x", delegation_id="d1"))
    assert error["param"] == "delegation_id"


def test_instructions_append_on_a_model_without_prompts_is_reported_once_and_the_session_goes_on():
    conv = new_conversation()
    start(conv)
    out = send(
        conv, type="session.instructions.append", content="Be brief.", delegation_id=None, event_id="a1"
    )
    (notice,) = events(out)  # LiveKit appends a system message added mid-call this way
    assert (notice["type"], notice["code"], notice["client_event_id"]) == (
        "info",
        "instructions_not_applied",
        "a1",
    )
    assert "takes no text prompt" in notice["message"]
    assert send(conv, type="session.instructions.append", content="Be kind.") == []
    assert not [o for o in out if isinstance(o, SetPrompt)]


# -- what the model says ----------------------------------------------------------------------------


def test_audio_goes_out_per_stretch_with_inner_pauses_kept_and_the_tail_dropped():
    conv = new_conversation()
    start(conv)
    core = CoreTurns(conv)
    assert deltas(core.frames("...")) == []  # silence before the model speaks is never sent
    first = deltas(core.frames("sssss"))
    assert [d["start_ms"] for d in first] == [240, 320, 400, 480, 560]
    assert all(d["end_ms"] == d["start_ms"] + 80 for d in first)
    assert [base64.b64decode(d["delta"]) for d in first] == [VOICE] * 5
    # A pause inside the stretch is sent once speech resumes (the audio keeps its timing) ...
    pause = deltas(core.frames("..sss"))
    assert [d["start_ms"] for d in pause] == [640, 720, 800, 880, 960]
    assert [base64.b64decode(d["delta"]) for d in pause[:2]] == [QUIET] * 2
    # ... and the quiet tail that ends it never is.
    assert deltas(core.frames("......")) == []
    assert [d["start_ms"] for d in deltas(core.frames("s"))] == [1520]


def test_text_and_captions_are_timed_deltas_on_the_session_timeline():
    conv = new_conversation(captions=True)
    start(conv)
    (text,) = feed(conv, AssistantText(" Sure", 1200.0))
    assert (text["type"], text["delta"], text["start_ms"], text["end_ms"]) == (
        "session.output_transcript.delta",
        " Sure",
        1200,
        1280,
    )
    assert feed(conv, AssistantText("", 1280.0)) == []
    (first,) = feed(conv, UserTranscriptDelta("Hi there.", 310.5, 4210.0))
    assert feed(conv, UserTranscript("Hi there.", 310.5, 4210.0)) == []  # the deltas are the transcript
    (second,) = feed(conv, UserTranscriptDelta("Wait.", 6000.0, 6900.0))
    assert first["type"] == "session.input_transcript.delta"
    assert (first["delta"], first["start_ms"], first["end_ms"]) == ("Hi there.", 310, 4210)
    assert first["delta"] + second["delta"] == "Hi there. Wait."  # fragments accumulate in order


def test_a_vad_barge_in_tells_the_client_to_drop_queued_audio_and_drops_the_held_pause():
    conv = new_conversation(barge_in="vad")
    start(conv)
    core = CoreTurns(conv)
    core.frames("sss..")  # two quiet frames held: a pause, if speech follows
    (notice,) = feed(conv, BargeIn(3000.0, cut_text=" sure"))
    assert notice["type"] == "info" and notice["code"] == "barge_in"
    # What the listener was not going to hear is not sent after the barge-in either.
    assert [d["start_ms"] for d in deltas(core.frames("s"))] == [400]
    assert deltas(core.frames(".....")) == []
    model = new_conversation(barge_in="model")
    start(model)
    assert feed(model, BargeIn(3000.0, cut_text="")) == []  # the model hears the user and decides itself


def test_usage_reports_session_seconds_and_how_full_the_context_is():
    held = [0]  # what the engine says its context holds, out of a 3000-frame window
    conv = new_conversation(context_fill=lambda: held[0] / 3000)
    start(conv)
    core = CoreTurns(conv)
    held[0] = 2990  # e.g. a long prompt: the engine's count, not the frames this session has seen
    out = core.frames("." * USAGE_EVERY_FRAMES)
    (usage,) = [e for e in events(out) if e["type"] == "session.usage.updated"]
    assert usage["usage"]["seconds"] == float(USAGE_EVERY_FRAMES * 80 // 1000)
    assert usage["context_window"]["usage_ratio"] == pytest.approx(2990 / 3000, abs=1e-4)
    unknown = new_conversation()  # the scripted backend has no context window: the field is left out
    start(unknown)
    assert "context_window" not in unknown.usage_event()


# -- the end ----------------------------------------------------------------------------------------


def test_session_close_answers_session_closed_then_the_session_is_silent():
    conv = new_conversation()
    start(conv)
    CoreTurns(conv).frames("s" * 30)
    closed, action = send(conv, type="session.close", event_id="bye")
    assert closed["type"] == "session.closed" and closed["reason"] == "close_requested"
    assert closed["client_event_id"] == "bye" and closed["usage"]["seconds"] == 2.0
    assert closed["session"]["id"] == "sess_test"
    assert action == CloseSession()
    assert conv.receive(json.dumps({"type": "session.input_audio.append", "audio": ""})) == []
    assert feed(conv, AudioOut(VOICE, 0.0, True), SessionEnded("client_ended")) == []
    assert send(new_conversation(), type="session.close") == [CloseSession()]  # never started


@pytest.mark.parametrize(
    ("reason", "code", "closed_reason"),
    [
        ("max_duration: sessions are limited to 3600 s", "session_expired", "expired"),
        ("idle_timeout: no audio for 60 s", "session_expired", "expired"),
        ("server_shutdown", "session_ended", "connection_lost"),
    ],
)
def test_the_server_ending_a_session_says_why_then_session_closed(reason, code, closed_reason):
    conv = new_conversation()
    start(conv)
    error, closed = feed(conv, SessionEnded(reason))
    assert error["error"]["code"] == code and reason in error["error"]["message"]
    assert closed["type"] == "session.closed" and closed["reason"] == closed_reason


def test_a_start_the_core_refuses_is_an_error_and_the_client_may_start_again():
    conv = new_conversation()
    out = send(conv, type="session.start", event_id="s9", session={"model": "m"})
    assert any(isinstance(o, OpenSession) for o in out)
    error = error_of(checked(conv.start_refused("sample_rate 16000 is not supported")))
    assert error["client_event_id"] == "s9" and conv.state == "new"
    assert types(start(conv))[0] == "session.started"


def test_a_server_error_is_an_error_event_and_a_vanished_client_is_told_nothing():
    conv = new_conversation()
    start(conv)
    (error,) = feed(conv, Error("invalid_value", "captions are off on this server"))
    assert error["error"]["type"] == "server_error" and error["error"]["code"] == "invalid_value"
    assert feed(conv, SessionEnded("client_disconnected")) == [] and conv.state == "live"
