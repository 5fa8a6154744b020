"""One conversation core: the same user audio through the server over /ws, `talk --local` and
`respond` (scripted backend) gives the same turn events at the same frame indices.

Each path hears tests/data/speech/conversation.wav (a question, the assistant's turn, an interruption)
plus 2 s of silence, in whole 80 ms frames, and reports its events in its own words: the server
and the local client as native protocol events, `respond` in its event log. Frame indices:
- the user's turns (VAD) sit on the input timeline: `at_ms` -> the frame holding that sample;
- a barge-in is placed at the input frame during which it was detected;
- the assistant's stretches carry `input_ms`, how much of the user's audio the engine had heard
  when it produced the stretch's first (or last) frame: frame = input_ms / 80 - 1.
The server is driven in lock step with its frame clock (the next 80 ms chunk goes out when a frame
of the assistant's audio arrives), so every tick hears one whole chunk, as on the other paths. No
path reports what the listener played (no playback.position), so cut text is judged the same way.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from audio_utils import speech_dir
from server_utils import REPO, start_server
from websockets.asyncio.client import connect

from client import talk

FRAME_SAMPLES = 1920
FRAME_MS = 80
TAIL_SECONDS = 2.0
TURN_EVENTS = (
    "input.speech_started",
    "input.speech_stopped",
    "barge_in",
    "assistant.speech_started",
    "assistant.speech_stopped",
)


def frame_of(event: dict) -> int:
    kind = event["type"]
    if kind.startswith("input."):
        return int(event["at_ms"] * 24) // FRAME_SAMPLES
    if kind == "barge_in":
        return math.ceil(event["at_ms"] * 24 / FRAME_SAMPLES) - 1
    return round(event["input_ms"] / FRAME_MS) - 1


def turn_events(events: list[dict]) -> list[tuple]:
    """(type, frame index[, cut text]) of every turn event, in order."""
    out = []
    for e in events:
        if e["type"] in TURN_EVENTS:
            row = (e["type"], frame_of(e))
            out.append(row + (e["cut_text"],) if e["type"] == "barge_in" else row)
    return out


def conversation_audio() -> np.ndarray:
    pcm, rate = sf.read(speech_dir() / "conversation.wav", dtype="int16")
    assert rate == 24000 and pcm.ndim == 1
    frames = math.ceil(pcm.shape[0] / FRAME_SAMPLES) + math.ceil(TAIL_SECONDS * 24000 / FRAME_SAMPLES)
    padded = np.zeros(frames * FRAME_SAMPLES, dtype="<i2")
    padded[: pcm.shape[0]] = pcm
    return padded


# -- (a) the server over /ws ---------------------------------------------------------------------
async def server_events(url: str, pcm16: np.ndarray) -> list[dict]:
    chunks = [pcm16[i : i + FRAME_SAMPLES].tobytes() for i in range(0, len(pcm16), FRAME_SAMPLES)]
    events: list[dict] = []
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 24000}))
        sent = 0
        async for message in ws:
            if isinstance(message, str) and json.loads(message)["type"] == "session.ready":
                await ws.send(chunks[0])  # before the session's first tick (80 ms away at most)
                sent = 1
            if isinstance(message, bytes):
                # Lock step: the next chunk right after each tick, well before the next one.
                if sent < len(chunks):
                    await ws.send(chunks[sent])
                    sent += 1
                elif sent == len(chunks):
                    sent += 1
                    await ws.send(json.dumps({"type": "session.end"}))
                continue
            event = json.loads(message)
            events.append(event)
            if event["type"] == "session.ended":
                break
    return events


def in_lock_step(events: list[dict]) -> bool:
    """Whether output frame k was made from input chunk k throughout (no tick without its chunk)."""
    stretches = [e for e in events if e["type"].startswith("assistant.speech_")]
    return bool(stretches) and all(e["at_ms"] == e["input_ms"] - FRAME_MS for e in stretches)


def run_server_path(pcm16: np.ndarray) -> list[dict]:
    with start_server("--backend", "scripted") as server:
        for _attempt in range(3):
            events = asyncio.run(server_events(server.ws_url, pcm16))
            # A tick that ran before its chunk arrived (the first one, or a hiccup of this machine)
            # shifts what the engine heard by a frame: that run says nothing, so run again.
            if in_lock_step(events):
                return events
    pytest.fail("the server path could not run in lock step with its frame clock in three tries")


# -- (b) talk --local ----------------------------------------------------------------------------
def run_local_path(tmp_path, pcm16: np.ndarray, monkeypatch) -> list[dict]:
    wav = tmp_path / "in.wav"
    sf.write(wav, pcm16, 24000, subtype="PCM_16")
    events: list[dict] = []
    build_local = talk.build_local

    def tapped(args, rate):
        conv = build_local(args, rate)
        receive = conv.receive

        async def receive_and_record():
            async for item in receive():
                if not isinstance(item, np.ndarray):
                    events.append({"type": item.type, **item.data})
                yield item

        conv.receive = receive_and_record
        return conv

    monkeypatch.setattr(talk, "build_local", tapped)
    monkeypatch.setattr(talk, "POSITION_INTERVAL_S", 3600.0)  # report no playback position, as (a) and (c)
    args = talk.argparse.Namespace(
        server=None,
        token=None,
        barge_in=None,
        captions=False,
        input_device=None,
        output_device=None,
        sample_rate=None,
        block_ms=20.0,
        buffer_ms=120.0,
        input_file=wav,
        output_file=tmp_path / "out.wav",
        tail_seconds=0.0,
        local=True,
        backend="scripted",
        model=None,
        device=None,
        dtype=None,
        compile=None,
        quantize=None,
        context_policy=None,
        plain=True,
    )

    class Quiet:
        def __init__(self, title):
            pass

        def say(self, line):
            pass

        def update(self, view):
            view.take_lines()

        close = update

    assert asyncio.run(talk.talk(args, display_factory=Quiet)) == 0
    return events


# -- (c) respond ---------------------------------------------------------------------------------
def run_respond_path(tmp_path, pcm16: np.ndarray) -> list[dict]:
    wav = tmp_path / "in.wav"
    sf.write(wav, pcm16, 24000, subtype="PCM_16")
    log = tmp_path / "events.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "assistant",
            "respond",
            "--backend",
            "scripted",
            "--input",
            str(wav),
            "--output",
            str(tmp_path / "out.wav"),
            "--tail-seconds",
            "0",
            "--events-output",
            str(log),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [{"type": r.pop("event"), **r} for r in map(json.loads, log.read_text().splitlines())]


def test_server_local_and_respond_report_the_same_turns_at_the_same_frames(tmp_path, monkeypatch):
    pcm16 = conversation_audio()
    for path in ("respond", "local"):
        (tmp_path / path).mkdir()
    respond = turn_events(run_respond_path(tmp_path / "respond", pcm16))
    local = turn_events(run_local_path(tmp_path / "local", pcm16, monkeypatch))
    server = turn_events(run_server_path(pcm16))
    print("\nturn events (type, frame[, cut text]):", *respond, sep="\n  ")
    kinds = [row[0] for row in respond]
    # The conversation as a user would notice it: two user turns, a reply after the first, a barge-in
    # that stops it, and a reply after the second.
    assert kinds.count("input.speech_started") == 2 and kinds.count("input.speech_stopped") == 2
    assert kinds.count("barge_in") == 1 and kinds.count("assistant.speech_started") == 2
    assert kinds.index("assistant.speech_started") > kinds.index("input.speech_stopped")
    assert kinds.index("barge_in") < kinds.index("assistant.speech_stopped")
    assert local == respond, "talk --local and respond disagree"
    assert server == respond, "the server over /ws and respond disagree"
