"""How often a session may change its prompt (`--prompt-changes-per-second`, default 1).

Each new prompt (instructions or voice) starts the model's context over and feeds the prompt again.
A client used to be able to do that at every message; now a change sooner than the limit allows is
refused with `rate_limited`, naming when to retry, in each protocol's error shape, and the session
goes on with the prompt it had. /api/chat sets its prompt once, in the query string.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import numpy as np
import pytest
from busy_box import Contention, busy_reason, checked_unless_late
from server_utils import NativeClient, http_get, start_personaplex_server
from websockets.asyncio.client import connect

from assistant.conversation import Conversation, ConversationLimits, PromptChangeLimited, SessionUpdated
from server.protocols.live.state_machine import LiveConversation
from server.protocols.realtime.records import SendEvent, SetPrompt
from server.protocols.realtime.state_machine import RealtimeConversation


# -- the conversation core ---------------------------------------------------------------------------
def conversation(now: list[float], per_s: float | None = 1.0) -> Conversation:
    return Conversation(
        "s", 24000, limits=ConversationLimits(prompt_changes_per_s=per_s), clock=lambda: now[0]
    )


def test_a_second_prompt_within_the_second_is_refused_and_changes_nothing():
    now = [100.0]
    conv = conversation(now)
    conv.start()
    assert isinstance(conv.update(instructions="Be a pirate.")[-1], SessionUpdated)
    now[0] += 0.3
    with pytest.raises(PromptChangeLimited) as refused:
        conv.update(instructions="Be a poet.", temperature=0.5)
    assert refused.value.code == "rate_limited" and refused.value.retry_after_s == pytest.approx(0.7)
    assert "retry in 0.70 s" in str(refused.value)
    assert conv.options.instructions == "Be a pirate." and conv.options.temperature is None
    # What is not a new prompt is not limited: other options, or the same prompt again.
    conv.update(temperature=0.5, instructions="Be a pirate.")
    assert conv.options.temperature == 0.5
    now[0] += 0.7
    conv.update(voice="NATF2.pt")
    assert conv.options.voice == "NATF2.pt"


def test_the_limit_can_be_turned_off_and_set_higher():
    now = [0.0]
    unlimited = conversation(now, None)
    for k in range(20):
        unlimited.update(instructions=f"Role {k}.")
    faster = conversation(now, 4.0)
    faster.update(instructions="a")
    now[0] += 0.25
    faster.update(instructions="b")
    with pytest.raises(PromptChangeLimited):
        faster.update(instructions="c")


def test_realtime_refuses_the_whole_update_in_its_error_shape():
    now = [0.0]
    conv = conversation(now)
    realtime = RealtimeConversation(
        session_id="s",
        model="m",
        voice="NATF2.pt",
        id_prefix="x",
        takes_prompts=True,
        check_prompt_change=conv.check_prompt_change,
    )
    realtime.start()

    def update(session: dict) -> list:
        return realtime.receive(
            json.dumps({"type": "session.update", "session": {"type": "realtime", **session}})
        )

    out = update({"instructions": "Be a pirate."})
    (prompt,) = [o for o in out if isinstance(o, SetPrompt)]
    conv.update(instructions=prompt.instructions, voice=prompt.voice)  # the adapter's part
    now[0] += 0.5
    out = update({"instructions": "Be a poet.", "max_output_tokens": 5})
    assert len(out) == 1 and isinstance(out[0], SendEvent)
    error = out[0].event["error"]
    assert (error["code"], error["param"]) == ("rate_limited", "session.instructions")
    assert "retry in 0.50 s" in error["message"]
    assert realtime.instructions == "Be a pirate." and realtime.max_output_tokens is None
    out = update({"audio": {"output": {"voice": "NATM1.pt"}}})
    assert out[0].event["error"]["param"] == "session.audio.output.voice"
    now[0] += 0.5
    assert any(isinstance(o, SetPrompt) for o in update({"instructions": "Be a poet."}))


def test_live_refuses_an_append_in_its_error_shape():
    now = [0.0]
    conv = conversation(now)
    live = LiveConversation(
        id_prefix="x", engine_name="m", takes_prompts=True, check_prompt_change=conv.check_prompt_change
    )
    live.receive(json.dumps({"type": "session.start", "session": {"model": "m"}}))
    live.started("s", 0.0)

    def append(text: str) -> list:
        return live.receive(json.dumps({"type": "session.instructions.append", "content": text}))

    (prompt,) = [o for o in append("Be brief.") if isinstance(o, SetPrompt)]
    conv.update(instructions=prompt.instructions)
    now[0] += 0.2
    (refused,) = append("Be loud.")
    error = refused.event["error"]
    assert (error["code"], error["param"]) == ("rate_limited", "content") and "retry in 0.80 s" in error[
        "message"
    ]
    assert live.instructions == "Be brief."


# -- over the wire, on the tiny PersonaPlex checkpoint ------------------------------------------------
async def next_of(ws, *types: str, timeout: float = 20) -> dict:
    """The next JSON event of one of `types` (audio and other events are skipped)."""
    while True:
        message = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(message, str) and (event := json.loads(message))["type"] in types:
            return event


async def test_every_protocol_says_rate_limited_and_keeps_its_prompt():
    with start_personaplex_server(max_sessions=3) as address:
        base = f"ws://{address.host}:{address.port}"
        async with connect(f"{base}/ws") as ws:
            client = NativeClient(ws)
            await client.start(24000)
            for role in ("Be a pirate.", "Be a poet."):
                await ws.send(json.dumps({"type": "session.update", "instructions": role}))
            _, error = await client.wait_for("error")
            assert error["code"] == "rate_limited" and "retry in" in error["message"]
            updated = client.of("session.updated")
            assert len(updated) == 1 and updated[0][1]["options"]["instructions"] == "Be a pirate."
            # The session goes on: its frames keep coming.
            frames = len(client.audio)
            await client.stream(np.zeros(24000, dtype="<i2"))
            assert len(client.audio) - frames >= 8
        async with connect(f"{base}/v1/realtime?model=m") as ws:
            await next_of(ws, "session.created")
            for role in ("Be a pirate.", "Be a poet."):
                update = {"type": "session.update", "session": {"type": "realtime", "instructions": role}}
                await ws.send(json.dumps(update))
            assert (await next_of(ws, "session.updated", "error"))["session"][
                "instructions"
            ] == "Be a pirate."
            error = (await next_of(ws, "session.updated", "error"))["error"]
            assert (error["code"], error["param"]) == ("rate_limited", "session.instructions")
        async with connect(f"{base}/v1/live/sessions") as ws:
            await ws.send(json.dumps({"type": "session.start", "session": {"model": "m"}}))
            await next_of(ws, "session.started")
            for content in ("Be brief.", "Be loud."):
                await ws.send(json.dumps({"type": "session.instructions.append", "content": content}))
            await next_of(ws, "session.instructions.appended")
            error = (await next_of(ws, "session.instructions.appended", "error"))["error"]
            assert (error["code"], error["param"]) == ("rate_limited", "content")
        metrics = http_get(address, "/metrics")[2].decode()
        assert 'assistant_errors_total{code="rate_limited"} 3.0' in metrics
    assert not [line for line in address.output if "Traceback" in line]


STORMERS = 8
STORM_S = 4.0


async def storm(address, k: int, stop: asyncio.Event) -> tuple[int, int]:
    """A /ws session asking for a new prompt every 80 ms until `stop`: (accepted, refused)."""
    async with connect(address.ws_url) as ws:
        client = NativeClient(ws)
        await client.start(24000)
        n = 0
        while not stop.is_set():
            n += 1
            await ws.send(json.dumps({"type": "session.update", "instructions": f"Role {k}.{n}."}))
            await ws.send(np.zeros(1920, dtype="<i2").tobytes())
            await asyncio.sleep(0.08)
        await asyncio.sleep(0.3)
        refused = [e for _, e in client.of("error") if e["code"] == "rate_limited"]
        return len(client.of("session.updated")), len(refused)


@dataclass
class Storm:
    results: list[tuple[int, int]]  # per stormer: (accepted, refused)
    arrivals: np.ndarray  # when the healthy client got each frame while the storm lasted (s)
    elapsed_s: float
    busy: float | None  # the share of the storm during which runnable tasks waited for a CPU
    tracebacks: list[str]


async def eight_stormers_beside_a_healthy_session() -> Storm:
    with start_personaplex_server(max_sessions=STORMERS + 1) as address:
        async with connect(address.ws_url) as ws:
            healthy = NativeClient(ws)
            await healthy.start(24000)
            await healthy.stream(np.zeros(24000, dtype="<i2"))  # 1 s to settle
            stop = asyncio.Event()
            with Contention() as box:
                t0 = time.monotonic()
                storms = [asyncio.create_task(storm(address, k, stop)) for k in range(STORMERS)]
                frames_before = len(healthy.audio)
                await healthy.stream(np.zeros(int(STORM_S * 24000), dtype="<i2"))
                stop.set()
                results = await asyncio.gather(*storms)
                frames = healthy.audio[frames_before:]
                elapsed_s = time.monotonic() - t0
    arrivals = np.array([t for t, _ in frames])
    tracebacks = [line for line in address.output if "Traceback" in line]
    return Storm(results, arrivals, elapsed_s, box.share, tracebacks)


def check_storm(s: Storm) -> None:
    print(
        f"\n{STORMERS} stormers over {s.elapsed_s:.1f} s: accepted {[a for a, _ in s.results]}, "
        f"healthy client {len(s.arrivals)} frames; busy box {s.busy:.0%}"
    )
    assert not s.tracebacks, s.tracebacks
    # Each stormer got about one new prompt a second; the rest were refused, none lost silently.
    for accepted, refused in s.results:
        assert 1 <= accepted <= s.elapsed_s + 1 and refused >= 1
    # The healthy session kept its real-time stream: a frame for each 80 ms it streamed.
    assert len(s.arrivals) >= 0.9 * STORM_S * 12.5


@pytest.mark.timeout(400)
def test_eight_storming_clients_get_a_restart_a_second_and_the_healthy_clock_goes_on():
    # Nine tiny PersonaPlex sessions take most of a core; on a box whose cores are all taken besides
    # (measured: busy 5% here alone, 51% beside two spinning processes), the frame clock starves
    # whatever the prompts do. A run that fails on such a box is made again once it quiets down.
    checked_unless_late(
        lambda: asyncio.run(eight_stormers_beside_a_healthy_session()),
        check_storm,
        lambda s: busy_reason(s.busy),
    )
