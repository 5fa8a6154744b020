"""Role and voice prompts over the wire: /ws session.start, /v1/realtime via the official SDK, /v1/voices.

One server runs the tiny PersonaPlex checkpoint of tests/data (it takes prompts), one a tiny random
Moshi (it does not): prompts are applied by the first and refused or reported by the second.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from openai import AsyncOpenAI
from server_utils import PERSONAPLEX_TINY, NativeClient, http_get, start_personaplex_server, start_server
from websockets.asyncio.client import connect

DATA = PERSONAPLEX_TINY
TOKEN = "persona-token"
DEFAULT_ROLE = "You are a tiny model for tests."
OPERATOR_VOICE = DATA / "user.wav"


@pytest.fixture(scope="module")
def persona_server():
    with start_personaplex_server(
        "--auth-token",
        TOKEN,
        "--instructions",
        DEFAULT_ROLE,
        "--voice",
        str(OPERATOR_VOICE),  # the operator's own file: offered to clients by its name only
        max_sessions=2,
    ) as address:
        yield address


@pytest.fixture(scope="module")
def moshi_server():
    with start_server(
        "--backend",
        "moshi",
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--no-compile",
        "--max-sessions",
        "1",
        "--auth-token",
        TOKEN,
    ) as address:
        yield address


def ws_url(address, path: str = "/ws") -> str:
    return f"ws://{address.host}:{address.port}{path}"


HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def test_voices_are_listed_and_in_healthz(persona_server, moshi_server):
    status, _, body = http_get(persona_server, "/v1/voices")
    voices = json.loads(body)
    assert status == 200 and voices["takes_prompts"] is True
    assert [v["id"] for v in voices["data"]] == ["TINYF0.pt", "TINYF0.wav", "user.wav"]
    assert voices["default"] == "user.wav" and str(DATA) not in json.dumps(voices)
    health = json.loads(http_get(persona_server, "/healthz")[2])
    assert health["takes_prompts"] is True and health["voices"] == ["TINYF0.pt", "TINYF0.wav", "user.wav"]
    plain = json.loads(http_get(moshi_server, "/v1/voices")[2])
    assert plain == {"object": "list", "takes_prompts": False, "default": None, "data": []}


async def test_native_session_start_takes_instructions_and_voice(persona_server):
    async with connect(ws_url(persona_server), additional_headers=HEADERS) as ws:
        client = NativeClient(ws)
        ready = await client.start(24000, instructions="Talk about films.", voice="TINYF0.pt")
        assert ready["options"]["instructions"] == "Talk about films."
        assert ready["options"]["voice"] == "TINYF0.pt"
        # the server's --instructions / --voice are what a session gets when it sets none
        await ws.send(json.dumps({"type": "session.update", "voice": "NOBODY"}))
        _, error = await client.wait_for("error")
        assert error["code"] == "invalid_value" and "unknown voice 'NOBODY'" in error["message"]
        await ws.send(json.dumps({"type": "session.update", "voice": "TINYF0.wav"}))
        _, updated = await client.wait_for("session.updated")
        assert updated["options"]["voice"] == "TINYF0.wav"
    async with connect(ws_url(persona_server), additional_headers=HEADERS) as ws:
        ready = await NativeClient(ws).start(24000)
        assert ready["options"]["instructions"] == DEFAULT_ROLE
        assert ready["options"]["voice"] == "user.wav"


async def test_native_prompt_on_a_model_without_prompts_is_refused_clearly(moshi_server):
    async with connect(ws_url(moshi_server), additional_headers=HEADERS) as ws:
        await ws.send(
            json.dumps({"type": "session.start", "sample_rate": 24000, "instructions": "Be a pirate."})
        )
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert error["type"] == "error" and error["code"] == "invalid_value"
        assert "takes no role or voice prompt" in error["message"]


async def realtime_update(address, session: dict):
    client = AsyncOpenAI(base_url=f"http://{address.host}:{address.port}/v1", api_key=TOKEN)
    async with client.realtime.connect(model="persona-test") as conn:
        created = await conn.recv()
        assert created.type == "session.created"
        await conn.session.update(session={"type": "realtime", **session})
        while True:
            event = await asyncio.wait_for(conn.recv(), 20)
            if event.type in ("session.updated", "error"):
                return created, event


async def test_realtime_sdk_applies_instructions_and_voice_with_a_personaplex_model(persona_server):
    created, updated = await realtime_update(
        persona_server,
        {"instructions": "You are a pirate.", "audio": {"output": {"voice": "TINYF0.pt"}}},
    )
    assert created.session.instructions == DEFAULT_ROLE
    assert created.session.audio.output.voice == "user.wav"
    assert updated.type == "session.updated"
    assert updated.session.instructions == "You are a pirate."
    assert updated.session.audio.output.voice == "TINYF0.pt"
    warned = {w["param"] for w in (updated.model_extra or {}).get("warnings", [])}
    assert not warned & {"session.instructions", "session.audio.output.voice"}
    # an OpenAI voice name is not one of the model's: reported, and the current voice kept
    _, updated = await realtime_update(persona_server, {"audio": {"output": {"voice": "alloy"}}})
    assert updated.session.audio.output.voice == "user.wav"
    (warning,) = [w for w in updated.model_extra["warnings"] if w["param"] == "session.audio.output.voice"]
    assert "unknown voice 'alloy'" in warning["message"] and "TINYF0.pt" in warning["message"]


async def test_realtime_sdk_still_warns_with_a_plain_moshi_model(moshi_server):
    _, updated = await realtime_update(
        moshi_server, {"instructions": "You are a pirate.", "audio": {"output": {"voice": "alloy"}}}
    )
    assert updated.type == "session.updated"
    assert updated.session.instructions == ""
    warned = {w["param"] for w in updated.model_extra["warnings"]}
    assert {"session.instructions", "session.audio.output.voice"} <= warned


async def test_a_client_cannot_name_a_file_on_the_server_as_its_voice(persona_server):
    voice_file = str(DATA / "voices" / "TINYF0.wav")  # exists on the server: still refused
    async with connect(ws_url(persona_server), additional_headers=HEADERS) as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 24000, "voice": voice_file}))
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert error["code"] == "invalid_value" and "is not a voice name" in error["message"]
    _, event = await realtime_update(persona_server, {"audio": {"output": {"voice": "../voices/TINYF0.wav"}}})
    assert event.type == "error" and event.error.code == "invalid_value"
    assert "not a voice name" in event.error.message


async def test_a_client_names_only_voices_the_server_offers(persona_server):
    async with connect(ws_url(persona_server), additional_headers=HEADERS) as ws:
        # a bare file name is no way around it: "user.wav" is offered, "user2.wav" is not
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 24000, "voice": "user2.wav"}))
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert error["code"] == "invalid_value" and "unknown voice 'user2.wav'" in error["message"]
    # the Realtime echo of what the server said is accepted back
    created, updated = await realtime_update(persona_server, {"audio": {"output": {"voice": "user.wav"}}})
    assert updated.type == "session.updated" and updated.session.audio.output.voice == "user.wav"


async def test_prompts_on_a_model_without_them(moshi_server):
    async with connect(ws_url(moshi_server), additional_headers=HEADERS) as ws:
        client = NativeClient(ws)
        await client.start(24000)
        await ws.send(json.dumps({"type": "session.update", "instructions": "Be a pirate."}))
        _, error = await client.wait_for("error")
        assert error["code"] == "invalid_value" and "takes no role or voice prompt" in error["message"]
    # Realtime clients always send instructions, often long ones: a warning, never an error
    _, updated = await realtime_update(moshi_server, {"instructions": "Be brief. " * 600})
    assert updated.type == "session.updated" and updated.session.instructions == ""
    assert any(w["param"] == "session.instructions" for w in updated.model_extra["warnings"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "moshi", "--model", str(DATA), "--voice", "NOBODY"], "unknown voice 'NOBODY'"),
        (["--backend", "scripted", "--instructions", "Be a pirate."], "takes no role or voice prompt"),
    ],
)
def test_serve_refuses_prompt_defaults_the_model_cannot_use(args, message):
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "-m",
        "assistant",
        "serve",
        "--port",
        "0",
        "--captions",
        "off",
        "--device",
        "cpu",
        *args,
    ]
    if "scripted" in args:
        cmd.remove("--device")
        cmd.remove("cpu")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr


async def next_of(ws, *types: str) -> dict:
    """The next JSON event of one of `types` (others, such as audio deltas, are skipped)."""
    while True:
        message = await asyncio.wait_for(ws.recv(), 20)
        if isinstance(message, str) and (event := json.loads(message))["type"] in types:
            return event


async def test_odd_text_in_a_prompt_is_a_typed_error_on_every_endpoint(persona_server):
    """A lone surrogate (valid JSON: "\\ud800") in a role prompt used to reach SentencePiece, which
    raises a RuntimeError: a traceback and `internal_error` for each such message."""
    odd = "You are \ud800 a pirate."
    async with connect(ws_url(persona_server), additional_headers=HEADERS) as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 24000, "instructions": odd}))
        error = await next_of(ws, "error", "session.ready")
        assert error["code"] == "invalid_value" and error["message"].startswith("instructions"), error
        client = NativeClient(ws)
        await client.start(24000)
        await ws.send(json.dumps({"type": "session.update", "instructions": odd}))
        _, error = await client.wait_for("error")
        assert error["code"] == "invalid_value" and error["message"].startswith("instructions"), error
    async with connect(ws_url(persona_server, "/v1/realtime?model=m"), additional_headers=HEADERS) as ws:
        await next_of(ws, "session.created")
        await ws.send(
            json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": odd}})
        )
        error = (await next_of(ws, "error", "session.updated"))["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "session.instructions"), error
    async with connect(ws_url(persona_server, "/v1/live/sessions"), additional_headers=HEADERS) as ws:
        await ws.send(json.dumps({"type": "session.start", "session": {"model": "m", "instructions": odd}}))
        error = (await next_of(ws, "error", "session.started"))["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "session.instructions"), error
        await ws.send(json.dumps({"type": "session.start", "session": {"model": "m"}}))
        await next_of(ws, "session.started")
        await ws.send(json.dumps({"type": "session.instructions.append", "content": odd}))
        error = (await next_of(ws, "error", "session.instructions.appended"))["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "content"), error
    assert not [line for line in persona_server.output if "Traceback" in line or "internal_error" in line]
