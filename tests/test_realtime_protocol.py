"""The OpenAI Realtime protocol as pure code: parsing, errors, and the response/item state machine.

Every server event the state machine emits is validated against the official `openai` SDK's GA
event models, so a schema drift shows up here rather than in a client.
"""

from __future__ import annotations

import base64
import json
import weakref

import pydantic
import pytest
from openai.types.realtime import RealtimeServerEvent

from assistant.conversation import (
    AssistantSpeechStarted,
    AssistantSpeechStopped,
    AssistantText,
    AudioOut,
    BargeIn,
    Error,
    InputSpeechStarted,
    InputSpeechStopped,
    PlaybackClear,
    SessionEnded,
    SessionUpdated,
    Stats,
    UserTranscript,
    UserTranscriptDelta,
)
from assistant.conversation.turns import BargeInDetected, StretchEnded, StretchStarted, TurnTaking
from server.protocols.realtime.client_events import TurnDetection
from server.protocols.realtime.records import (
    ConfigureInput,
    HoldUntilUserStops,
    PushAudio,
    RealtimeOutput,
    SendEvent,
    SetSilenced,
)
from server.protocols.realtime.state_machine import RealtimeConversation

SERVER_EVENT = pydantic.TypeAdapter(RealtimeServerEvent)
FRAME_BYTES = 1920 * 2
VOICE = b"\x10\x00" * 1920  # one 80 ms frame of (quiet) non-zero PCM16
QUIET = b"\x00\x00" * 1920


def new_conversation(**kwargs) -> tuple[RealtimeConversation, list]:
    conv = RealtimeConversation(
        session_id="sess_test",
        model="moshi-test",
        voice="moshi",
        id_prefix="t",
        captions_model=kwargs.pop("captions_model", "whisper-test"),
        **kwargs,
    )
    return conv, checked(carry_out(conv, conv.start()))


class Core:
    """The conversation core's part, as server/protocols/realtime/adapter.py sets it up: its
    turn-taking (one hangover rule, one barge-in detector, policy "model", no minimum overlap)
    reports stretches and barge-ins in the core's order, and it carries out what the state machine
    asks of the conversation (the hold after an interruption, the session's own hold)."""

    def __init__(self):
        self.turns = TurnTaking("model", min_interrupt_samples=0, hangover_frames=3)
        self.host_hold = False
        self.now_ms = 0.0  # the input clock: 80 ms a frame, or a VAD event's time

    @property
    def engine_silent(self) -> bool:
        return self.turns.held or self.host_hold  # as Conversation tells its engine slot

    def advance(self, at_ms: float) -> int:
        """Move the input clock to at_ms (never back); the sample position now."""
        self.now_ms = max(self.now_ms, at_ms)
        return int(self.now_ms * 24)


_CORES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def core_of(conv: RealtimeConversation) -> Core:
    return _CORES.setdefault(conv, Core())


def engine_silent(conv: RealtimeConversation) -> bool:
    return core_of(conv).engine_silent


def carry_out(conv: RealtimeConversation, outputs: list) -> list:
    """What the adapter does with the state machine's outputs, for the parts the core models."""
    core = core_of(conv)
    for out in outputs:
        if isinstance(out, SetSilenced):
            core.host_hold = out.silent
        elif isinstance(out, HoldUntilUserStops):
            core.turns.hold_until_user_stops()
        elif isinstance(out, ConfigureInput) and out.turn_detection is not None and core.turns.user_speaking:
            core.turns.user_speech_stopped()  # a new VAD starts from silence (Conversation.update)
    return outputs


def feed(conv: RealtimeConversation, events: list) -> list:
    """The core's events through the state machine in order, each one's outputs carried out."""
    out: list = []
    for event in events:
        out += carry_out(conv, conv.conversation_event(event))
    return out


def _turn_events(changes: list, at_ms: float) -> list:
    """The core's events for its turn changes (a hold is its engine's business, not an event)."""
    events: list = []
    for change in changes:
        if isinstance(change, StretchStarted):
            events.append(AssistantSpeechStarted(at_ms))
        elif isinstance(change, StretchEnded):
            events.append(AssistantSpeechStopped(at_ms))
        elif isinstance(change, BargeInDetected):
            events += [PlaybackClear("barge_in"), BargeIn(at_ms, cut_text="")]
    return events


def engine_frame(conv: RealtimeConversation, pcm16: bytes, speaking: bool) -> list:
    """One frame of engine output as the core returns it: its stretch events, then the audio."""
    core = core_of(conv)
    now = core.advance(core.now_ms + 80)
    if core.turns.held:  # the core mutes at once what the engine made before it was told
        pcm16, speaking = bytes(len(pcm16)), False
    changes = core.turns.assistant_frame(speaking, now)
    return feed(conv, _turn_events(changes, now / 24) + [AudioOut(pcm16, at_ms=now / 24, speaking=speaking)])


def output_text(conv: RealtimeConversation, text: str) -> list:
    return feed(conv, [AssistantText(text, at_ms=core_of(conv).now_ms)])


def user_speech_started(conv: RealtimeConversation, at_ms: float) -> list:
    """The core's VAD onset: speech_started, then the core's barge-in check."""
    core = core_of(conv)
    changes = core.turns.user_speech_started(int(at_ms * 24), core.advance(at_ms))
    return feed(conv, [InputSpeechStarted(at_ms)] + _turn_events(changes, at_ms))


def user_speech_stopped(conv: RealtimeConversation, at_ms: float) -> list:
    core = core_of(conv)
    core.advance(at_ms)
    core.turns.user_speech_stopped()
    return feed(conv, [InputSpeechStopped(at_ms)])


def checked(out: list) -> list:
    """Every output one of RealtimeOutput's types, every server event valid for the SDK's GA models;
    the server events unwrapped (dicts, as sent) for the assertions, the actions as they are."""
    unwrapped = []
    for item in out:
        assert isinstance(item, RealtimeOutput), item
        if isinstance(item, SendEvent):
            json.dumps(item.event)
            SERVER_EVENT.validate_python(item.event)
            item = item.event
        unwrapped.append(item)
    return unwrapped


def events(out: list) -> list[dict]:
    return [e for e in out if isinstance(e, dict)]


def types(out: list) -> list[str]:
    return [e["type"] for e in events(out)]


def of_type(out: list, type_: str) -> list[dict]:
    return [e for e in events(out) if e["type"] == type_]


def send(conv: RealtimeConversation, **event) -> list:
    return checked(carry_out(conv, conv.receive(json.dumps(event))))


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode()


def speak(conv: RealtimeConversation, frames: int, text: str = "") -> list:
    out: list = []
    for _ in range(frames):
        out += engine_frame(conv, VOICE, True)
        out += output_text(conv, text)
    return checked(out)


def quiet(conv: RealtimeConversation, frames: int) -> list:
    out: list = []
    for _ in range(frames):
        out += engine_frame(conv, QUIET, False)
    return checked(out)


def delta_bytes(out: list) -> int:
    return sum(len(base64.b64decode(e["delta"])) for e in of_type(out, "response.output_audio.delta"))


def manual(conv: RealtimeConversation) -> list:
    return send(
        conv,
        type="session.update",
        session={"type": "realtime", "audio": {"input": {"turn_detection": None}}},
    )


# -- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "code", "param"),
    [
        ("{not json", "invalid_json", None),
        ("[1, 2]", "invalid_json", None),
        (json.dumps({"event_id": "e1"}), "missing_field", "type"),
        (json.dumps({"type": "session.start", "event_id": "e1"}), "unknown_event", "type"),
        (
            json.dumps({"type": "transcription_session.update", "session": {}, "event_id": "e1"}),
            "unsupported_event",
            "type",
        ),
        (
            json.dumps({"type": "conversation.item.delete", "item_id": "x", "event_id": "e1"}),
            "item_not_found",
            "item_id",
        ),
        (
            json.dumps({"type": "input_audio_buffer.append", "audio": "%%%not base64", "event_id": "e1"}),
            "invalid_audio",
            "audio",
        ),
        (
            json.dumps(
                {"type": "input_audio_buffer.append", "audio": b64(b"\x01\x02\x03"), "event_id": "e1"}
            ),
            "invalid_audio",
            "audio",
        ),
        (json.dumps({"type": "input_audio_buffer.append", "event_id": "e1"}), "missing_field", "audio"),
        (
            json.dumps({"type": "input_audio_buffer.append", "audio": 5, "event_id": "e1"}),
            "invalid_value",
            "audio",
        ),
        (
            json.dumps(
                {
                    "type": "session.update",
                    "event_id": "e1",
                    "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}},
                }
            ),
            "unsupported_audio_format",
            "session.audio.input.format",
        ),
        (
            json.dumps(
                {
                    "type": "session.update",
                    "event_id": "e1",
                    "session": {"audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}}},
                }
            ),
            "unsupported_audio_format",
            "session.audio.output.format",
        ),
        (
            json.dumps(
                {
                    "type": "session.update",
                    "event_id": "e1",
                    "session": {
                        "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.5}}}
                    },
                }
            ),
            "invalid_value",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            json.dumps(
                {"type": "session.update", "event_id": "e1", "session": {"input_audio_format": "g711_ulaw"}}
            ),
            "unsupported_audio_format",
            "session.input_audio_format",
        ),
        (
            json.dumps({"type": "session.update", "event_id": "e1", "session": {"type": "transcription"}}),
            "unsupported_feature",
            "session.type",
        ),
        (
            json.dumps(
                {"type": "session.update", "event_id": "e1", "session": {"output_modalities": ["text"]}}
            ),
            "unsupported_feature",
            "session.output_modalities",
        ),
        (
            json.dumps({"type": "session.update", "event_id": "e1", "session": {"max_output_tokens": 0}}),
            "invalid_value",
            "session.max_output_tokens",
        ),
        (
            json.dumps(
                {
                    "type": "conversation.item.create",
                    "event_id": "e1",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "hi"}],
                    },
                }
            ),
            "unsupported_feature",
            "item.content[0].type",
        ),
        (
            json.dumps(
                {
                    "type": "conversation.item.create",
                    "event_id": "e1",
                    "item": {"type": "function_call_output", "call_id": "c", "output": "{}"},
                }
            ),
            "unsupported_feature",
            "item.type",
        ),
        (
            json.dumps(
                {"type": "conversation.item.truncate", "event_id": "e1", "item_id": "x", "audio_end_ms": -1}
            ),
            "invalid_value",
            "audio_end_ms",
        ),
        (
            json.dumps({"type": "response.create", "event_id": "e1", "response": {"conversation": "none"}}),
            "unsupported_feature",
            "response.conversation",
        ),
        (
            json.dumps({"type": "response.create", "event_id": "e1", "response": {"audio": "loud"}}),
            "invalid_value",
            "response.audio",
        ),
        (
            json.dumps({"type": "response.create", "event_id": "e1", "response": {"audio": {"output": [1]}}}),
            "invalid_value",
            "response.audio.output",
        ),
    ],
)
def test_malformed_or_unsupported_events_get_an_error_event_with_code_param_and_event_id(
    message, code, param
):
    conv, _ = new_conversation()
    out = checked(conv.receive(message))
    assert types(out) == ["error"]
    error = out[0]["error"]
    assert error["code"] == code
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    # The client's own event_id comes back when it could be read.
    assert error["event_id"] == ("e1" if "e1" in message else None)


def test_absurdly_nested_json_is_an_error_event_not_a_crash():
    conv, _ = new_conversation()
    out = checked(conv.receive("[" * 200_000 + "]" * 200_000))
    assert out[0]["error"]["code"] == "invalid_json"


def test_binary_frames_are_refused_with_a_hint_to_send_json():
    conv, _ = new_conversation()
    out = checked(conv.receive(b"\x00\x01"))
    assert out[0]["error"]["code"] == "invalid_json"
    assert "base64" in out[0]["error"]["message"]


def test_a_refused_session_update_changes_nothing():
    conv, _ = new_conversation()
    out = send(
        conv,
        type="session.update",
        session={
            "instructions": "be brief",
            "audio": {"input": {"turn_detection": None, "format": {"type": "audio/pcma"}}},
        },
    )
    assert types(out) == ["error"]
    assert conv.turn_detection == TurnDetection()
    assert not [a for a in out if isinstance(a, SetSilenced | ConfigureInput)]


# -- session ------------------------------------------------------------------------------------------


def test_session_created_reports_model_pcm_24k_and_server_vad_and_gives_the_model_the_floor():
    conv, out = new_conversation()
    (created,) = of_type(out, "session.created")
    session = created["session"]
    assert session["model"] == "moshi-test"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert ConfigureInput(TurnDetection(), captions=False) in out
    assert SetSilenced(False) in out


def test_instructions_voice_and_tools_are_accepted_but_reported_unsupported_not_pretended():
    conv, _ = new_conversation()
    out = send(
        conv,
        type="session.update",
        session={
            "type": "realtime",
            "instructions": "You are a pirate.",
            "tools": [{"type": "function", "name": "f"}],
            "audio": {"output": {"voice": "alloy"}},
        },
    )
    (updated,) = of_type(out, "session.updated")
    session = updated["session"]
    assert session["instructions"] == ""
    assert session["tools"] == []
    assert session["audio"]["output"]["voice"] == "moshi"
    warned = {w["param"] for w in updated["warnings"]}
    assert {"session.instructions", "session.tools", "session.audio.output.voice"} <= warned


def test_beta_protocol_fields_are_reported_with_where_they_moved():
    conv, _ = new_conversation()
    out = send(conv, type="session.update", session={"turn_detection": None, "input_audio_format": "pcm16"})
    (updated,) = of_type(out, "session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"  # not applied
    messages = {w["param"]: w["message"] for w in updated["warnings"]}
    assert "session.audio.input.turn_detection" in messages["session.turn_detection"]


def test_vad_settings_are_applied_and_null_turn_detection_holds_the_engine_silent():
    conv, _ = new_conversation()
    out = send(
        conv,
        type="session.update",
        session={
            "audio": {
                "input": {
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.7,
                        "prefix_padding_ms": 200,
                        "silence_duration_ms": 400,
                        "create_response": True,
                        "interrupt_response": False,
                    }
                }
            }
        },
    )
    td = TurnDetection(0.7, 200, 400, True, False)
    assert ConfigureInput(td, captions=False) in out
    assert of_type(out, "session.updated")[0]["session"]["audio"]["input"]["turn_detection"] == td.to_json()
    out = manual(conv)
    assert ConfigureInput(None, captions=False) in out
    assert SetSilenced(True) in out
    assert of_type(out, "session.updated")[0]["session"]["audio"]["input"]["turn_detection"] is None


def test_threshold_is_reported_ignored_when_the_servers_vad_has_no_probability():
    conv, _ = new_conversation(threshold_applies=False)
    out = send(
        conv,
        type="session.update",
        session={
            "audio": {
                "input": {
                    "turn_detection": {"type": "server_vad", "threshold": 0.8, "silence_duration_ms": 300}
                }
            }
        },
    )
    (updated,) = of_type(out, "session.updated")
    td = updated["session"]["audio"]["input"]["turn_detection"]
    assert (td["threshold"], td["silence_duration_ms"]) == (0.5, 300)
    assert [w["param"] for w in updated["warnings"]] == ["session.audio.input.turn_detection.threshold"]


def test_semantic_vad_is_served_by_server_vad_and_says_so():
    conv, _ = new_conversation()
    out = send(
        conv,
        type="session.update",
        session={"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}},
    )
    (updated,) = of_type(out, "session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert any("semantic_vad" in w["message"] for w in updated["warnings"])


def test_transcription_turns_captions_on_or_warns_when_the_server_has_none():
    conv, _ = new_conversation()
    out = send(
        conv, type="session.update", session={"audio": {"input": {"transcription": {"model": "whisper-1"}}}}
    )
    assert ConfigureInput(TurnDetection(), captions=True) in out
    assert (
        of_type(out, "session.updated")[0]["session"]["audio"]["input"]["transcription"]["model"]
        == "whisper-test"
    )
    conv, _ = new_conversation(captions_model=None)
    out = send(
        conv, type="session.update", session={"audio": {"input": {"transcription": {"model": "whisper-1"}}}}
    )
    (updated,) = of_type(out, "session.updated")
    assert updated["session"]["audio"]["input"]["transcription"] is None
    assert updated["warnings"][0]["param"] == "session.audio.input.transcription"


# -- server VAD turns and responses ---------------------------------------------------------------------


def user_turn(conv: RealtimeConversation, start_ms: float, stop_ms: float) -> list:
    conv.receive(
        json.dumps({"type": "input_audio_buffer.append", "audio": b64(b"\x00\x00" * 24 * int(stop_ms))})
    )
    return checked(user_speech_started(conv, start_ms) + user_speech_stopped(conv, stop_ms))


def test_a_user_turn_becomes_a_committed_user_item():
    conv, _ = new_conversation()
    out = user_turn(conv, 300, 1800)
    assert types(out) == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    started, stopped, committed = out[0], out[1], out[2]
    assert started["audio_start_ms"] == 300 and stopped["audio_end_ms"] == 1800
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    assert out[3]["item"]["role"] == "user"


def test_one_stretch_of_speech_is_one_response_with_one_item_and_no_silence_deltas():
    conv, _ = new_conversation()
    user_turn(conv, 300, 1800)
    out = quiet(conv, 5)  # silence before the reply: nothing is sent
    assert events(out) == []
    out = speak(conv, 4, " hello") + quiet(conv, 2) + speak(conv, 3, " world")  # a short pause inside
    out += quiet(conv, 3)
    assert "response.done" not in types(out)  # still within the hangover
    out += quiet(conv, 1) + quiet(conv, 5)
    assert types(out)[:4] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
    ]
    assert types(out)[-6:] == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    assert len({e["response"]["id"] for e in of_type(out, "response.created")}) == 1
    # Speech and the pause inside it are sent; the trailing silence is not.
    assert delta_bytes(out) == (4 + 2 + 3) * FRAME_BYTES
    transcript = "".join(e["delta"] for e in of_type(out, "response.output_audio_transcript.delta"))
    assert transcript == " hello" * 4 + " world" * 3
    assert of_type(out, "response.output_audio_transcript.done")[0]["transcript"] == transcript
    (done,) = of_type(out, "response.done")
    assert done["response"]["status"] == "completed"
    assert done["response"]["output"][0]["status"] == "completed"
    assert done["response"]["usage"]["output_tokens"] == 9


def test_two_stretches_are_two_responses():
    conv, _ = new_conversation()
    out = speak(conv, 3) + quiet(conv, 4) + speak(conv, 2) + quiet(conv, 4)
    dones = of_type(out, "response.done")
    assert len(dones) == 2
    assert dones[0]["response"]["id"] != dones[1]["response"]["id"]
    assert delta_bytes(out) == 5 * FRAME_BYTES


def test_text_just_before_the_speech_lands_in_the_transcript():
    conv, _ = new_conversation()
    out = checked(engine_frame(conv, QUIET, False) + output_text(conv, "Hi"))
    out += speak(conv, 2, "!") + quiet(conv, 4)
    assert of_type(out, "response.done")[0]["response"]["output"][0]["content"][0]["transcript"] == "Hi!!"


def test_user_speech_interrupts_the_response_and_holds_the_engine_until_the_user_stops():
    conv, _ = new_conversation()
    out = speak(conv, 5, " word")
    response_id = of_type(out, "response.created")[0]["response"]["id"]
    out = checked(user_speech_started(conv, 2000))
    assert types(out)[0] == "input_audio_buffer.speech_started"
    (done,) = of_type(out, "response.done")
    assert done["response"]["id"] == response_id
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    # The core holds the engine: its own barge-in hold, which the state machine asked for.
    assert HoldUntilUserStops() in out and engine_silent(conv)
    # Frames the engine produced before the hold took effect are not sent.
    assert events(speak(conv, 2)) == []
    out = checked(user_speech_stopped(conv, 3000))
    assert not engine_silent(conv)  # the core's hold ended with the user's speech
    assert "conversation.item.done" in types(out)
    # The next stretch is a new response.
    out = quiet(conv, 4) + speak(conv, 2)
    assert of_type(out, "response.created")[0]["response"]["id"] != response_id


def test_without_interrupt_response_user_speech_does_not_cancel():
    conv, _ = new_conversation()
    send(
        conv,
        type="session.update",
        session={"audio": {"input": {"turn_detection": {"type": "server_vad", "interrupt_response": False}}}},
    )
    speak(conv, 3)
    out = checked(user_speech_started(conv, 1000))
    assert "response.done" not in types(out)
    assert not [a for a in out if isinstance(a, SetSilenced | HoldUntilUserStops)] and not engine_silent(conv)
    assert delta_bytes(speak(conv, 2)) == 2 * FRAME_BYTES


def test_truncate_trims_the_item_to_what_was_played_and_keeps_it_whole_beyond_the_audio_sent():
    conv, _ = new_conversation()
    out = speak(conv, 5, " w") + quiet(conv, 4)
    item_id = of_type(out, "response.output_item.added")[0]["item"]["id"]
    out = send(
        conv,
        type="conversation.item.truncate",
        item_id=item_id,
        content_index=0,
        audio_end_ms=401,
        event_id="tr1",
    )
    # Beyond the 400 ms sent (a client's playback clock runs ahead of a real-time server's audio):
    # the listener heard it all, and the item stays whole, not an error a framework would die of.
    (whole,) = of_type(out, "conversation.item.truncated")
    assert whole["audio_end_ms"] == 400 and conv.items[item_id].text == " w w w w w"
    out = send(conv, type="conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=170)
    (truncated,) = of_type(out, "conversation.item.truncated")
    assert truncated["item_id"] == item_id and truncated["audio_end_ms"] == 170
    assert conv.items[item_id].text == " w w w"  # pieces of frames starting at 0, 80 and 160 ms
    out = send(conv, type="conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=200)
    assert of_type(out, "conversation.item.truncated")[0]["audio_end_ms"] == 170  # cut audio stays cut
    out = send(conv, type="conversation.item.truncate", item_id="item_nope", content_index=0, audio_end_ms=0)
    assert out[0]["error"]["code"] == "item_not_found"


def test_truncating_the_item_still_being_spoken_cancels_its_response():
    conv, _ = new_conversation()
    out = speak(conv, 5)
    item_id = of_type(out, "response.output_item.added")[0]["item"]["id"]
    out = send(conv, type="conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=160)
    assert types(out).index("response.done") < types(out).index("conversation.item.truncated")
    assert of_type(out, "response.done")[0]["response"]["status"] == "cancelled"
    assert SetSilenced(True) in out
    assert events(speak(conv, 3)) == []


def test_retrieve_returns_the_item_as_held_with_its_transcripts_and_an_unknown_id_as_openai_words_it():
    conv, _ = new_conversation()
    send(conv, type="session.update", session={"audio": {"input": {"transcription": {"model": "whisper-1"}}}})
    user_id = of_type(user_turn(conv, 200, 1500), "conversation.item.done")[0]["item"]["id"]
    feed(conv, [UserTranscript("Hello there.", 250, 1400)])
    out = speak(conv, 5, " w") + quiet(conv, 4)
    assistant_id = of_type(out, "response.output_item.added")[0]["item"]["id"]
    send(conv, type="conversation.item.truncate", item_id=assistant_id, content_index=0, audio_end_ms=170)

    (user,) = of_type(
        send(conv, type="conversation.item.retrieve", item_id=user_id), "conversation.item.retrieved"
    )
    assert user["item"]["id"] == user_id and user["item"]["role"] == "user"
    assert user["item"]["status"] == "completed"
    assert user["item"]["content"] == [{"type": "input_audio", "transcript": "Hello there."}]
    out = send(conv, type="conversation.item.retrieve", item_id=assistant_id, event_id="r1")
    (assistant,) = of_type(out, "conversation.item.retrieved")
    assert assistant["item"]["role"] == "assistant" and assistant["item"]["status"] == "completed"
    assert assistant["item"]["content"] == [{"type": "output_audio", "transcript": " w w w"}]  # as heard

    (error,) = of_type(
        send(conv, type="conversation.item.retrieve", item_id="item_gone", event_id="rci_x"), "error"
    )
    assert error["error"]["code"] == "item_retrieve_invalid_item_id"  # what Pipecat and OpenAI's server use
    assert error["error"]["message"] == "Error retrieving item: the item with id 'item_gone' does not exist."
    assert error["error"]["event_id"] == "rci_x"


def test_refusals_clients_match_on_are_worded_as_openai_words_them():
    conv, _ = new_conversation()
    (error,) = of_type(send(conv, type="response.cancel"), "error")
    assert (error["error"]["code"], error["error"]["message"]) == (
        "response_cancel_not_active",
        "Cancellation failed: no active response found",  # LiveKit ignores this barge-in race by it
    )
    (error,) = of_type(send(conv, type="input_audio_buffer.commit"), "error")
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    assert "buffer too small. Expected at least 100ms of audio" in error["error"]["message"]
    response_id = of_type(send(conv, type="response.create"), "response.created")[0]["response"]["id"]
    (error,) = of_type(send(conv, type="response.create"), "error")
    assert error["error"]["code"] == "conversation_already_has_active_response"
    assert error["error"]["message"].startswith(
        f"Conversation already has an active response in progress: {response_id}."
    )


def test_truncating_a_user_item_is_refused():
    conv, _ = new_conversation()
    out = user_turn(conv, 100, 900)
    item_id = of_type(out, "conversation.item.done")[0]["item"]["id"]
    out = send(conv, type="conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=0)
    assert out[0]["error"]["code"] == "invalid_value"


# -- manual turns -------------------------------------------------------------------------------------


def test_manual_turns_speak_only_after_response_create_and_stop_at_response_cancel():
    conv, _ = new_conversation()
    manual(conv)
    # No VAD events, and speech without a response is never sent.
    assert checked(user_speech_started(conv, 100) + user_speech_stopped(conv, 900)) == []
    assert events(speak(conv, 3)) == []
    out = send(conv, type="input_audio_buffer.commit", event_id="c0")
    assert out[0]["error"]["code"] == "input_audio_buffer_commit_empty"
    out = send(conv, type="input_audio_buffer.append", audio=b64(b"\x00\x00" * 2400 * 3))
    assert out == [PushAudio(b"\x00\x00" * 7200)]
    out = send(conv, type="input_audio_buffer.commit")
    assert types(out) == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
    out = send(conv, type="response.create", response={"metadata": {"turn": "1"}})
    assert types(out) == ["response.created"]
    assert out[0]["response"]["metadata"] == {"turn": "1"}
    assert SetSilenced(False) in out
    out = send(conv, type="response.create", event_id="rc2")
    assert out[0]["error"]["code"] == "conversation_already_has_active_response"
    out = speak(conv, 3)
    assert delta_bytes(out) == 3 * FRAME_BYTES
    out = send(conv, type="response.cancel")
    (done,) = of_type(out, "response.done")
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    assert SetSilenced(True) in out
    assert events(speak(conv, 2)) == []
    out = send(conv, type="response.cancel", event_id="rc3")
    assert out[0]["error"]["code"] == "response_cancel_not_active"
    assert out[0]["error"]["event_id"] == "rc3"


def test_a_requested_response_completes_when_the_stretch_ends_and_the_engine_is_held_again():
    conv, _ = new_conversation()
    manual(conv)
    send(conv, type="response.create")
    out = quiet(conv, 2) + speak(conv, 3) + quiet(conv, 4)
    assert of_type(out, "response.done")[0]["response"]["status"] == "completed"
    assert SetSilenced(True) in out


def test_a_requested_response_the_model_never_starts_completes_empty():
    conv, _ = new_conversation(response_start_timeout_ms=800)
    manual(conv)
    send(conv, type="response.create")
    out = quiet(conv, 10)
    (done,) = of_type(out, "response.done")
    assert done["response"]["status"] == "completed" and done["response"]["output"] == []
    assert SetSilenced(True) in out


def test_max_output_tokens_cuts_the_response_as_incomplete():
    conv, _ = new_conversation()
    send(conv, type="session.update", session={"max_output_tokens": 3})
    out = speak(conv, 6)
    assert delta_bytes(out) == 3 * FRAME_BYTES
    (done,) = of_type(out, "response.done")
    assert done["response"]["status"] == "incomplete"
    assert done["response"]["status_details"]["reason"] == "max_output_tokens"
    assert SetSilenced(True) in out
    # Held until the user's next turn.
    assert SetSilenced(False) in checked(user_speech_started(conv, 5000))


def test_create_response_false_holds_the_engine_but_still_reports_vad():
    conv, _ = new_conversation()
    out = send(
        conv,
        type="session.update",
        session={"audio": {"input": {"turn_detection": {"type": "server_vad", "create_response": False}}}},
    )
    assert SetSilenced(True) in out
    assert "input_audio_buffer.speech_started" in types(user_turn(conv, 100, 900))
    assert events(speak(conv, 2)) == []


# -- items and captions -------------------------------------------------------------------------------


def test_user_audio_item_is_fed_paced_and_its_own_vad_turn_is_not_a_second_item():
    conv, _ = new_conversation()
    pcm = b"\x01\x00" * 24_000  # 1 s
    out = send(
        conv,
        type="conversation.item.create",
        item={"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": b64(pcm)}]},
    )
    assert out[0] == PushAudio(pcm, paced=True)
    assert types(out) == ["conversation.item.added", "conversation.item.done"]
    assert checked(user_speech_started(conv, 100) + user_speech_stopped(conv, 1400)) == []


def test_captions_become_input_audio_transcription_completed_on_the_matching_item():
    conv, _ = new_conversation()
    send(conv, type="session.update", session={"audio": {"input": {"transcription": {"model": "whisper-1"}}}})
    first = of_type(user_turn(conv, 200, 1500), "conversation.item.done")[0]["item"]["id"]
    second = of_type(user_turn(conv, 2000, 3000), "conversation.item.done")[0]["item"]["id"]
    out = checked(feed(conv, [UserTranscript("What is it?", 2100, 2900)]))
    (completed,) = of_type(out, "conversation.item.input_audio_transcription.completed")
    assert completed["item_id"] == second and completed["transcript"] == "What is it?"
    out = checked(feed(conv, [UserTranscript("Hello there.", 250, 1400)]))
    assert of_type(out, "conversation.item.input_audio_transcription.completed")[0]["item_id"] == first


def test_caption_words_go_to_the_item_the_speech_becomes_before_and_after_it_is_committed():
    conv, _ = new_conversation()
    assert feed(conv, [UserTranscriptDelta("What", 0, 500)]) == []  # transcription off
    send(conv, type="session.update", session={"audio": {"input": {"transcription": {"model": "whisper-1"}}}})
    first = of_type(user_turn(conv, 200, 1500), "conversation.item.done")[0]["item"]["id"]
    conv.receive(json.dumps({"type": "input_audio_buffer.append", "audio": b64(b"\x00\x00" * 24 * 1000)}))
    started = of_type(checked(user_speech_started(conv, 2000)), "input_audio_buffer.speech_started")[0]
    # While the user still speaks: the item speech_started announced, not committed yet.
    (delta,) = checked(feed(conv, [UserTranscriptDelta("What is", 1700, 2600)]))
    assert (delta["type"], delta["item_id"], delta["delta"]) == (
        "conversation.item.input_audio_transcription.delta",
        started["item_id"],
        "What is",
    )
    # A late delta of the turn before goes to its own item.
    assert checked(feed(conv, [UserTranscriptDelta(" there.", 0, 1400)]))[0]["item_id"] == first
    user_speech_stopped(conv, 3000)
    assert checked(feed(conv, [UserTranscriptDelta(" it?", 1700, 3000)]))[0]["item_id"] == started["item_id"]
    (completed,) = checked(feed(conv, [UserTranscript("What is it?", 1700, 3000)]))
    assert completed["item_id"] == started["item_id"] and completed["transcript"] == "What is it?"


def test_captions_are_not_sent_unless_transcription_is_on():
    conv, _ = new_conversation()
    user_turn(conv, 200, 1500)
    assert feed(conv, [UserTranscript("hello", 200, 1400)]) == []


def test_clear_reports_cleared_and_empties_the_buffer():
    conv, _ = new_conversation()
    manual(conv)
    send(conv, type="input_audio_buffer.append", audio=b64(b"\x00\x00" * 4800))
    assert types(send(conv, type="input_audio_buffer.clear")) == ["input_audio_buffer.cleared"]
    assert (
        send(conv, type="input_audio_buffer.commit")[0]["error"]["code"] == "input_audio_buffer_commit_empty"
    )


def test_event_ids_are_unique():
    conv, out = new_conversation()
    out += user_turn(conv, 100, 900) + speak(conv, 3, "x") + quiet(conv, 4)
    ids = [e["event_id"] for e in events(out)]
    assert len(ids) == len(set(ids))


def test_a_new_vad_configuration_mid_barge_in_gives_the_floor_back():
    conv, _ = new_conversation()
    speak(conv, 3)
    assert HoldUntilUserStops() in checked(user_speech_started(conv, 1000)) and engine_silent(conv)
    # The session restarts its VAD from silence, so no speech_stopped will come for that speech.
    out = send(
        conv,
        type="session.update",
        session={"audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 300}}}},
    )
    assert ConfigureInput(TurnDetection(silence_duration_ms=300), captions=False) in out
    assert not engine_silent(conv)


def test_a_requested_response_not_yet_speaking_gives_way_to_the_user_and_the_engine_is_held():
    conv, _ = new_conversation()
    send(conv, type="response.create")
    out = checked(user_speech_started(conv, 500))
    (done,) = of_type(out, "response.done")
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    assert HoldUntilUserStops() in out and engine_silent(conv)
    checked(user_speech_stopped(conv, 1500))
    assert not engine_silent(conv)


@pytest.mark.parametrize("requested", [False, True])
def test_the_model_starting_over_a_user_already_talking_is_not_an_interruption(requested):
    """Only speech that starts over the response cancels it (the Realtime API's speech_started rule);
    the model choosing to speak while the user talks is its own turn-taking."""
    conv, _ = new_conversation()
    user_speech_started(conv, 100)
    if requested:
        send(conv, type="response.create")
    out = speak(conv, 3)
    assert delta_bytes(out) == 3 * FRAME_BYTES and "response.done" not in types(out)
    # The core saw a barge-in (the model starting over a voiced user), the state machine let it pass.
    assert core_of(conv).turns.state == "user_barging_in" and not engine_silent(conv)
    # Speech that starts over it does interrupt it.
    user_speech_stopped(conv, 400)
    out = checked(user_speech_started(conv, 600))
    assert of_type(out, "response.done")[0]["response"]["status"] == "cancelled"


def test_item_audio_beyond_the_backlog_bound_is_refused_and_nothing_is_queued():
    """Item audio is heard at real-time speed; what waits for that is bounded (memory, and latency of
    the live audio queued behind it)."""
    conv, _ = new_conversation()
    item = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_audio", "audio": b64(b"\x00\x00" * 48_000)}],
    }
    conv.audio_backlog_ms = 58_500.0  # what the adapter reports still waiting
    out = send(conv, type="conversation.item.create", event_id="big", item=item)
    assert types(out) == ["error"] and not [o for o in out if isinstance(o, PushAudio)]
    assert out[0]["error"]["code"] == "input_audio_backlog_full"
    assert out[0]["error"]["param"] == "item.content[0].audio" and out[0]["error"]["event_id"] == "big"
    assert conv.input_ms == 0 and not conv.items
    conv.audio_backlog_ms = 57_000.0  # 2 s more fits
    out = send(conv, type="conversation.item.create", item=item)
    assert out[0] == PushAudio(b"\x00\x00" * 48_000, paced=True)


def test_server_errors_and_the_end_of_the_session_become_error_events_and_the_rest_is_not_sent():
    conv, _ = new_conversation()
    stats = Stats(None, None, 0, 0, 1.0, 0.0, 80.0)
    assert feed(conv, [stats, PlaybackClear("barge_in"), SessionUpdated({})]) == []
    (error,) = checked(feed(conv, [Error("invalid_value", "captions are off on this server")]))
    assert error["error"]["type"] == "server_error" and error["error"]["code"] == "invalid_value"
    for reason, code in [
        ("idle_timeout: no audio for 60 s", "session_ended"),
        ("max_duration: sessions are limited to 3600 s", "session_expired"),
        ("server_shutdown", "session_ended"),
    ]:
        (ended,) = checked(feed(conv, [SessionEnded(reason)]))
        assert ended["error"]["code"] == code and reason in ended["error"]["message"]
    for reason in ("client_ended", "client_disconnected"):  # nobody to tell, or they know
        assert feed(conv, [SessionEnded(reason)]) == []
