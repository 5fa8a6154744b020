"""Odd text in every field that reaches the model's tokenizer or names a voice, on all four protocols:
any string a JSON text can carry (lone surrogates such as "\\ud800", NUL, any code point, any
length) is either refused with a typed `invalid_value` naming the field, or accepted as text the
model takes. Nothing else escapes: SentencePiece raises a RuntimeError on a lone surrogate, which no
protocol may let through to the engine (a traceback, `internal_error`, 1011 after ten).

The engine's prompt check is the one a PersonaPlex-family model runs on a client's prompt: its voice
must be one of the model's, its role is tokenized by the real SentencePiece model of the tiny
checkpoint (tests/data/personaplex_tiny).
"""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_utils import PERSONAPLEX_TINY

from assistant.moshi.prompts import system_text
from assistant.moshi.tokenizer import TextTokenizer
from server.protocols.live.state_machine import LiveConversation, OpenSession
from server.protocols.moshi.query import QueryError, session_options
from server.protocols.native.wire import ProtocolError, decode_text
from server.protocols.realtime.state_machine import RealtimeConversation

TOKENIZER = TextTokenizer.from_file(PERSONAPLEX_TINY / "tokenizer.model", set())
VOICES = ("TINYF0.pt", "TINYF0.wav")
PCM = "AAAAAA=="  # two samples of silence, base64


def check_prompt(instructions: str | None, voice: str | None) -> None:
    """A PersonaPlex engine's check of a client's prompt: ValueError for one it cannot use."""
    if voice is not None and voice not in VOICES:
        raise ValueError(f"unknown voice {voice!r}")
    if instructions and instructions.strip():
        TOKENIZER.encode(system_text(instructions))


# Any text, lone surrogates (which st.characters() leaves out) mixed in; and the classic odd ones.
ODD_TEXT = st.one_of(
    st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=24),
    st.sampled_from(
        ["You are \ud800 a pirate.", "\udcff", "a\x00b", "TINYF0.pt\x00", "\udbff\udfff", "x" * 4001]
    ),
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    ODD_TEXT, st.sampled_from(["instructions", "voice"]), st.sampled_from(["session.start", "session.update"])
)
def test_native_prompt_fields(text, field, kind):
    try:
        event = decode_text(json.dumps({"type": kind, "sample_rate": 24000, field: text}))
    except ProtocolError as err:
        assert err.code == "invalid_value" and err.message.startswith(field), err.message
        return
    options = event.options()
    try:  # what the adapter asks the engine before the session (re)starts
        check_prompt(options.get("instructions"), options.get("voice"))
    except ValueError:
        pass  # the adapter's invalid_value


def realtime_messages(text: str) -> dict[str, dict]:
    """Every Realtime field that carries prompt text, by its parameter path."""
    item = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_audio", "audio": PCM, "transcript": text}],
    }
    return {
        "session.instructions": {"type": "session.update", "session": {"instructions": text}},
        "session.audio.output.voice": {
            "type": "session.update",
            "session": {"audio": {"output": {"voice": text}}},
        },
        "session.audio.output.voice.id": {
            "type": "session.update",
            "session": {"audio": {"output": {"voice": {"id": text}}}},
        },
        "item.content[0].transcript": {"type": "conversation.item.create", "item": item},
    }


@FUZZ
@given(ODD_TEXT)
def test_realtime_prompt_fields(text):
    for param, message in realtime_messages(text).items():
        conv = RealtimeConversation(
            session_id="s",
            model="m",
            voice="TINYF0.pt",
            id_prefix="o",
            takes_prompts=True,
            check_prompt=check_prompt,
        )
        conv.start()
        for out in conv.receive(json.dumps(message)):
            if isinstance(out, dict) and out["type"] == "error":
                error = out["error"]
                # the engine's own refusal of a whole prompt names the instructions
                assert error["code"] == "invalid_value" and error["param"] in (
                    param,
                    "session.instructions",
                ), error


def live_conversation() -> LiveConversation:
    return LiveConversation(
        id_prefix="o",
        engine_name="m",
        takes_prompts=True,
        check_prompt=check_prompt,
        default_voice="TINYF0.pt",
    )


@FUZZ
@given(ODD_TEXT)
def test_live_prompt_fields(text):
    starts = {
        "session.instructions": {"model": "m", "instructions": text},
        "session.audio.output.voice": {"model": "m", "audio": {"output": {"voice": text}}},
        "session.audio.output.voice.id": {"model": "m", "audio": {"output": {"voice": {"id": text}}}},
    }
    for param, session in starts.items():
        for out in live_conversation().receive(json.dumps({"type": "session.start", "session": session})):
            if isinstance(out, dict):
                assert out["type"] == "error" and out["error"]["code"] == "invalid_value", out
                # the engine's refusal names the voice or the instructions, however the voice was given
                assert out["error"]["param"] in (
                    param,
                    "session.audio.output.voice",
                    "session.instructions",
                ), out
    conv = live_conversation()
    assert any(
        isinstance(o, OpenSession)
        for o in conv.receive(json.dumps({"type": "session.start", "session": {"model": "m"}}))
    )
    conv.started("sess", 0.0)
    for out in conv.receive(json.dumps({"type": "session.instructions.append", "content": text})):
        if isinstance(out, dict) and out["type"] == "error":
            assert (out["error"]["code"], out["error"]["param"]) == ("invalid_value", "content"), out


@FUZZ
@given(ODD_TEXT, st.sampled_from(["text_prompt", "voice_prompt"]))
def test_moshi_query_prompt_fields(text, name):
    # As a client percent-encodes it, and raw: a server that decodes the request target with
    # surrogateescape hands non-ASCII bytes on as lone surrogates.
    raw = text.replace("%", "%25").replace("&", "%26").replace("#", "%23").replace("+", "%2B")
    for query in (f"{name}={quote(text, safe='', errors='surrogatepass')}", f"{name}={raw}"):
        try:
            options = session_options(query)
        except QueryError as err:
            assert str(err).startswith(name), str(err)
            continue
        try:  # what the adapter asks the engine before the conversation opens
            check_prompt(options.get("instructions"), options.get("voice"))
        except ValueError:
            pass  # refused with 0x05 and close 1008
