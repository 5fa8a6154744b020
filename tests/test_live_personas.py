"""Role and voice prompts on /v1/live/sessions through the official SDK, with the tiny PersonaPlex
checkpoint of tests/data (it takes prompts): instructions and voice are applied at session.start,
an OpenAI voice name falls back to the model's default with an `info` notice, an unknown voice is
refused, and session.instructions.append restarts the model with the longer role. The server's
recording (--record) shows what the conversation was actually given. (A model without prompts
reports them as not applied: tests/test_live_sdk.py, tests/test_live_ws.py.)"""

from __future__ import annotations

import json

import pytest
from live_utils import LiveInbox
from openai import AsyncOpenAI
from server_utils import PERSONAPLEX_TINY, start_personaplex_server

TOKEN = "live-persona-token"
DEFAULT_ROLE = "You are a tiny model for tests."


@pytest.fixture(scope="module")
def persona_server(tmp_path_factory):
    record = tmp_path_factory.mktemp("record")
    with start_personaplex_server(
        "--auth-token",
        TOKEN,
        "--instructions",
        DEFAULT_ROLE,
        "--voice",
        "TINYF0.wav",
        "--record",
        str(record),
    ) as address:
        address.record = record
        yield address


async def start_session(server, event_id: str = "s1", **session):
    """Start a session; returns (connection manager, connection, inbox, first answer, what followed)."""
    client = AsyncOpenAI(base_url=f"http://{server.host}:{server.port}/v1", api_key=TOKEN)
    manager = client.live.connect()
    conn = await manager.enter()
    inbox = LiveInbox(conn.recv_bytes)
    await conn.session.start(session={"model": "persona-live", **session}, event_id=event_id)
    first = await inbox.next("session.started", "error", timeout=60)
    await inbox.drain(0.2)
    return conn, inbox, first


def recorded(server, session_id: str) -> list[dict]:
    path = server.record / f"{session_id}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def test_instructions_and_voice_are_applied_and_append_restarts_the_model_with_more(persona_server):
    conn, inbox, started = await start_session(
        persona_server, instructions="Talk about films.", audio={"output": {"voice": "TINYF0.pt"}}
    )
    try:
        assert started.type == "session.started", started
        assert started.session.instructions == "Talk about films."
        assert started.session.audio.output.voice == "TINYF0.pt"
        assert {e.code for e in inbox.of("info")} == {"input_transcripts_off"}  # nothing ignored
        await conn.session.instructions.append(
            content="Answer in one sentence.", delegation_id=None, event_id="a1"
        )
        appended = await inbox.next("session.instructions.appended", "error", timeout=30)
        assert appended.type == "session.instructions.appended", appended
        assert appended.client_event_id == "a1" and appended.start_ms == appended.end_ms >= 0
        await conn.session.close()
        closed = await inbox.next("session.closed", timeout=30)
        assert closed.session.instructions == "Talk about films.\nAnswer in one sentence."
    finally:
        await conn.close()
    log = recorded(persona_server, started.session.id)
    ready = next(e for e in log if e["event"] == "session.ready")
    assert (ready["options"]["instructions"], ready["options"]["voice"]) == ("Talk about films.", "TINYF0.pt")
    (updated,) = [e for e in log if e["event"] == "session.updated"]  # the model was given the new role
    assert updated["options"]["instructions"] == "Talk about films.\nAnswer in one sentence."
    assert updated["options"]["voice"] == "TINYF0.pt"


async def test_an_openai_voice_gets_the_servers_default_and_an_unknown_voice_is_refused(persona_server):
    conn, inbox, refused = await start_session(
        persona_server, event_id="bad", audio={"output": {"voice": "NOBODY"}}
    )
    try:
        assert refused.type == "error" and refused.error.param == "session.audio.output.voice"
        assert refused.error.client_event_id == "bad" and "unknown voice 'NOBODY'" in refused.error.message
        # The same connection starts fine with an OpenAI voice name: the model's default, said so.
        await conn.session.start(session={"model": "persona-live", "audio": {"output": {"voice": "marin"}}})
        started = await inbox.next("session.started", timeout=60)
        await inbox.drain(0.2)
        assert started.session.audio.output.voice == "TINYF0.wav"  # the server's --voice
        assert started.session.instructions == DEFAULT_ROLE  # the server's --instructions
        (notice,) = [e for e in inbox.of("info") if e.code == "voice_not_available"]
        assert "'marin' is an OpenAI voice" in notice.message
    finally:
        await conn.close()


async def test_usage_counts_the_prompt_in_how_full_the_context_is(persona_server):
    """The context window holds the prompt too: with a long prompt in the checkpoint's 200-frame
    window, the first usage event (about 5 s in) reports the prompt and the frames since."""
    from assistant.backends.moshi import MoshiEngine
    from server.protocols.live.state_machine import USAGE_EVERY_FRAMES

    engine = MoshiEngine.from_pretrained(str(PERSONAPLEX_TINY), device="cpu", compile=False)
    n = engine.prompter.length("Talk about films.", "TINYF0.pt")
    conn, inbox, started = await start_session(
        persona_server, instructions="Talk about films.", audio={"output": {"voice": "TINYF0.pt"}}
    )
    try:
        assert started.type == "session.started", started
        usage = await inbox.next("session.usage.updated", timeout=60)
        ratio = usage.context_window.usage_ratio
        # the engine stepped the session for every frame but the few its prompt took to go in
        assert (n + USAGE_EVERY_FRAMES - 5) / 200 <= ratio <= (n + USAGE_EVERY_FRAMES) / 200, (n, ratio)
    finally:
        await conn.close()
