"""Third-party voice frameworks, unchanged, hold a conversation with `assistant serve --backend
scripted` and report no error: the OpenAI Agents SDK (`agents.realtime`), LiveKit Agents
(`RealtimeModel`, `GPTLiveModel`) and Pipecat (`OpenAIRealtimeLLMService`, `OpenAILiveLLMService`).

Each framework pins versions the project's environment does not hold (websockets, livekit,
protobuf, soundfile), so each runs in a virtualenv of its own (tests/frameworks/README.md):
- `test_the_framework_itself` drives it through its own classes (tests/frameworks/<driver>.py) when
  ASSISTANT_FRAMEWORK_VENVS names the folder of those virtualenvs; skipped otherwise;
- `test_the_recorded_framework` replays, always, what the framework sent in such a run
  (tests/data/frameworks/<driver>.jsonl, made by tests/frameworks/run.py --record): the same events
  in the same order and at the same times, each command sent once the server event it answered has
  come, with the server's ids of this run in place of the recorded ones, and the microphone's audio
  from tests/data/speech. What the framework would make of the answers is checked by its own rules:
  every `error` must be one it ignores (by code or message, as its source does).
Both assert what its user hears and sees: the scripted reply, whole, with its transcript; the
second reply cut where the user talks over it; no error.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from frameworks.driver import TOKEN, timeline
from server_utils import REPO, start_server
from websockets.asyncio.client import connect

from assistant.backends.scripted import load_reply

RECORDINGS = REPO / "tests" / "data" / "frameworks"
DRIVERS = REPO / "tests" / "frameworks"
# driver -> (its virtualenv's name in ASSISTANT_FRAMEWORK_VENVS, the errors its framework ignores, as
# its source tells them apart: LiveKit by the message's start, Pipecat by two codes; the Agents SDK
# hands every error to the application)
FRAMEWORKS = {
    "agents_sdk": ("agents", lambda error: False),
    "livekit_realtime": ("livekit", lambda error: error["message"].startswith("Cancellation failed")),
    "livekit_live": ("livekit", lambda error: False),
    "pipecat_realtime": (
        "pipecat",
        lambda error: (
            error["code"] in ("response_cancel_not_active", "conversation_already_has_active_response")
        ),
    ),
    "pipecat_live": ("pipecat", lambda error: False),
}
SERVE = ("--auth-token", TOKEN, "--captions", "auto")  # the recordings were made with user captions on
REPLY_MS = load_reply().num_frames * 80
_PACED = ("input_audio_buffer.append", "session.input_audio.append")
_NOISE = (  # server events that no command answers
    "response.output_audio.delta",
    "response.output_audio_transcript.delta",
    "session.output_audio.delta",
    "session.output_transcript.delta",
    "session.usage.updated",
)


@pytest.fixture(scope="module")
def server():
    with start_server(*SERVE) as address:
        yield address


# -- what the user hears and sees ---------------------------------------------------------------------


def assert_heard_the_reply_and_the_barge_in(
    audio_s: list[float], audio_ms: float, transcript: str, clips: dict
):
    """audio_s: when each chunk of reply audio reached the framework (s since the microphone started)."""
    reply = load_reply()
    assert transcript.startswith(reply.text), transcript  # the first reply, whole, and its words
    assert audio_ms >= 2 * REPLY_MS, audio_ms  # the first reply and the last, at least
    onset = clips["interrupt.wav"]
    # Talked over, the second reply stops: nothing of it comes from half a second after the onset
    # until the interruption's own reply (interrupt.wav is 3.3 s, the end of its turn 0.5 s more).
    late = [round(t - onset, 2) for t in audio_s if onset + 0.5 < t < onset + 3.3]
    assert not late, f"reply audio kept coming after the barge-in: {late}"


# -- the frameworks themselves --------------------------------------------------------------------------


def _venvs() -> Path | None:
    folder = os.environ.get("ASSISTANT_FRAMEWORK_VENVS")
    return Path(folder) if folder else None


@pytest.mark.slow
@pytest.mark.parametrize("driver", sorted(FRAMEWORKS))
def test_the_framework_itself(driver):
    venvs = _venvs()
    if venvs is None:
        pytest.skip(
            "set ASSISTANT_FRAMEWORK_VENVS to the folder of the frameworks' virtualenvs (tests/frameworks/README.md)"
        )
    python = venvs / FRAMEWORKS[driver][0] / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"no {python}")
    with start_server(*SERVE) as address, tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [
            str(python),
            str(DRIVERS / f"{driver}.py"),
            "--url",
            f"ws://127.0.0.1:{address.port}",
            "--out",
            out.name,
        ]
        subprocess.run(cmd, check=True, timeout=120, capture_output=True)
        report = json.loads(Path(out.name).read_text())
    assert report["connected"]
    assert report["errors"] == []
    assert_heard_the_reply_and_the_barge_in(
        report["reply_audio_s"], report["reply_audio_ms"], report["transcript"], report["clips_s"]
    )


# -- replayed -------------------------------------------------------------------------------------------


def recording(driver: str) -> list[dict]:
    return [json.loads(line) for line in (RECORDINGS / f"{driver}.jsonl").read_text().splitlines()]


def ids_in(event, path: str = "") -> list[tuple[str, str]]:
    """(json path, value) of every server-made id in an event."""
    found = []
    if isinstance(event, dict):
        for key, value in event.items():
            if (
                isinstance(value, str)
                and (key == "id" or key.endswith("_id"))
                and key not in ("event_id", "client_event_id")
            ):
                found.append((f"{path}.{key}", value))
            else:
                found += ids_in(value, f"{path}.{key}")
    elif isinstance(event, list):
        for i, value in enumerate(event):
            found += ids_in(value, f"{path}[{i}]")
    return found


class Ids:
    """Names every id by where it first appeared: (event type, how many of that type came before, path)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.by_place: dict[tuple, str] = {}
        self.seen: set[str] = set()

    def add(self, event: dict) -> None:
        kind = event.get("type", "")
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        for path, value in ids_in(event):
            if value not in self.seen:
                self.seen.add(value)
                self.by_place[(kind, n, path)] = value


def replay_plan(log: list[dict]) -> tuple[list[tuple[float, dict, tuple | None]], dict[str, tuple]]:
    """The client's messages as (when, event, the server event it waited for as (type, ordinal)), and
    where each recorded id first appeared."""
    ids, plan, cause = Ids(), [], None
    for entry in log:
        event = entry["event"]
        if entry["from"] == "server":
            ids.add(event)
            if event.get("type") not in _NOISE:
                cause = (event["type"], ids.counts[event["type"]])
        else:
            plan.append((entry["t"], event, None if event.get("type") in _PACED else cause))
    return plan, {value: place for place, value in ids.by_place.items()}


async def replay(port: int, log: list[dict]) -> tuple[list[dict], float]:
    """Send the recorded client side to a live server; the server's events, and when the mic started."""
    plan, recorded_ids = replay_plan(log)
    live_path = (
        "/v1/live/sessions" if plan[0][1]["type"] == "session.start" else "/v1/realtime?model=gpt-realtime"
    )
    pcm16, _ = timeline()
    got: list[dict] = []
    live = Ids()
    arrived = asyncio.Event()
    async with connect(
        f"ws://127.0.0.1:{port}{live_path}", additional_headers={"Authorization": f"Bearer {TOKEN}"}
    ) as ws:
        t0 = time.monotonic()

        async def receive() -> None:
            async for message in ws:
                event = json.loads(message)
                event["_t"] = time.monotonic() - t0
                got.append(event)
                live.add(event)
                arrived.set()

        async def has(cause: tuple) -> None:
            while live.counts.get(cause[0], 0) < cause[1]:
                arrived.clear()
                await arrived.wait()

        reader = asyncio.create_task(receive())
        offset = 0
        mic_t0 = None
        for at, event, cause in plan:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
            if cause is not None:
                await asyncio.wait_for(has(cause), timeout=15)
            event = json.loads(json.dumps(event))
            field = "audio" if isinstance(event.get("audio"), dict) else None
            if field:
                n = event[field]["$bytes"]
                event[field] = base64.b64encode(pcm16[offset : offset + n].ljust(n, b"\0")).decode()
                offset += n
                mic_t0 = time.monotonic() - t0 if mic_t0 is None else mic_t0
            text = json.dumps(event)
            for recorded, place in sorted(recorded_ids.items(), key=lambda kv: -len(kv[0])):
                if recorded in text:
                    text = text.replace(recorded, live.by_place[place])
            await ws.send(text)
        await asyncio.sleep(1.5)
        reader.cancel()
    return got, mic_t0 or 0.0


@pytest.fixture(scope="module")
def replays(server) -> dict[str, tuple[list[dict], float]]:
    """Every recording replayed at once, each a conversation of its own on the one server (as many
    users would be): {driver: what `replay` returns}."""

    async def all_at_once():
        drivers = sorted(FRAMEWORKS)
        results = await asyncio.gather(*(replay(server.port, recording(d)) for d in drivers))
        return dict(zip(drivers, results, strict=True))

    return asyncio.run(all_at_once())


@pytest.mark.parametrize("driver", sorted(FRAMEWORKS))
def test_the_recorded_framework(replays, driver):
    got, mic_t0 = replays[driver]
    ignores = FRAMEWORKS[driver][1]
    errors = [e["error"] for e in got if e["type"] == "error"]
    assert [e for e in errors if not ignores(e)] == []
    if driver.endswith("live"):
        deltas = [e for e in got if e["type"] == "session.output_audio.delta"]
        transcript = "".join(e["delta"] for e in got if e["type"] == "session.output_transcript.delta")
        assert [e for e in got if e["type"] == "session.started"]
    else:
        deltas = [e for e in got if e["type"] == "response.output_audio.delta"]
        transcript = "".join(e["delta"] for e in got if e["type"] == "response.output_audio_transcript.delta")
        # Cancelled by the user's speech only (a response asked for before anyone spoke gives way to the
        # first turn), and so is the reply talked over.
        cancelled = [
            e for e in got if e["type"] == "response.done" and e["response"]["status"] == "cancelled"
        ]
        assert {e["response"]["status_details"]["reason"] for e in cancelled} == {"turn_detected"}
        onset = mic_t0 + timeline()[1]["interrupt.wav"]  # a client sends its audio a little ahead
        assert [e for e in cancelled if onset - 0.3 < e["_t"] < onset + 0.5]
    _, clips = timeline()
    audio_ms = sum(len(base64.b64decode(e["delta"])) / 48 for e in deltas)
    assert_heard_the_reply_and_the_barge_in([e["_t"] - mic_t0 for e in deltas], audio_ms, transcript, clips)
