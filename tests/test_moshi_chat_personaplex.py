"""PersonaPlex's `/api/chat` set-up (`text_prompt`, `voice_prompt`, sampling in the query string)
reaches the slot's prompt, on the tiny PersonaPlex checkpoint of tests/data: the answer differs
from the unprompted one and is the one `assistant respond` gives with the same prompt, greedy.

What equality holds, and why. The client streams digital silence: Opus gives it back as noise of
about two 16-bit steps, which Mimi codes exactly as it codes zeros, and every frame the server
fills in (a chunk that is late, the time after the stream ends) is zeros too; so whatever the
network and the frame clock do, the model hears the same codes at every step as `respond` feeding
a silent WAV. Greedy decoding (temperature 0 from the query, `--temperature 0` there) then makes
the same tokens. Both run one slot (batch 1) on one CPU thread, so the floats match too: the text
pieces arrive in the same frames, and the server's recording of what the assistant said (before
Opus) equals respond's output WAV. What the client hears went through Opus, so it is only close.
Speech in would not give equality: Opus is lossy, so the model would hear other codes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import soundfile as sf
from moshi_client import MoshiChatClient, silence
from server_utils import PERSONAPLEX_TINY, REPO, metric, start_personaplex_server
from websockets.asyncio.client import connect

from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ

DATA = PERSONAPLEX_TINY
ROLE = "You are a tiny model for tests. Talk about music and films."
GREEDY = "text_temperature=0&audio_temperature=0&seed=7"
STREAM_S = 2.0


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("persona-records")


@pytest.fixture(scope="module")
def persona_server(record_dir):
    # One slot, as `respond` runs: a batch of one row gives the same floats.
    with start_personaplex_server(
        "--record",
        str(record_dir),
    ) as address:
        yield address


def chat_url(address, query: str) -> str:
    return f"ws://{address.host}:{address.port}/api/chat?{query}"


async def listen(url: str) -> MoshiChatClient:
    async with connect(url) as ws:
        client = MoshiChatClient(ws)
        await client.wait_handshake(30)
        await client.stream(silence(STREAM_S))
        await asyncio.sleep(0.2)
    return client


def pieces(client: MoshiChatClient) -> list[tuple[int, str]]:
    """(frame, text piece) as the client got them: a frame's audio comes first, then its text."""
    return [(frames - 1, piece) for frames, (_, piece) in zip(client.text_frames, client.texts, strict=True)]


def respond(tmp_path: Path, seconds: float) -> tuple[list[tuple[int, str]], np.ndarray]:
    """`assistant respond` with the same prompt, greedy, on `seconds` of silence: (frame, piece), PCM."""
    sf.write(tmp_path / "silence.wav", silence(seconds), SAMPLE_RATE_HZ, subtype="PCM_16")
    cmd = [sys.executable, "-m", "assistant", "respond", "--backend", "moshi", "--model", str(DATA)]
    cmd += ["--device", "cpu", "--instructions", ROLE, "--voice", "TINYF0.pt", "--temperature", "0"]
    cmd += ["--input", str(tmp_path / "silence.wav"), "--output", str(tmp_path / "out.wav")]
    cmd += ["--events-output", str(tmp_path / "events.jsonl"), "--tail-seconds", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the server under tests/server_utils.py
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    texts = [(round(e["at_ms"] / 80), e["text"]) for e in events if e["event"] == "assistant.text"]
    return texts, sf.read(tmp_path / "out.wav", dtype="float32")[0]


async def recording_of(record_dir: Path, instructions: str | None) -> np.ndarray:
    """The assistant's channel of the finished recording whose session had these instructions."""
    for _ in range(100):
        for path in record_dir.glob("*.jsonl"):
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            if lines[0]["options"]["instructions"] == instructions and lines[-1]["event"] == "session.ended":
                return sf.read(path.with_suffix(".wav"), dtype="float32")[0][:, 1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no finished recording with instructions {instructions!r}")


async def test_a_personaplex_query_reaches_the_prompt_and_answers_as_respond_does(
    persona_server, record_dir, tmp_path
):
    skipped_before = metric(persona_server, "assistant_skipped_ticks_total")
    prompted = await listen(
        chat_url(persona_server, f"text_prompt={quote(ROLE)}&voice_prompt=TINYF0.pt&{GREEDY}")
    )
    skipped = metric(persona_server, "assistant_skipped_ticks_total") - skipped_before
    plain = await listen(chat_url(persona_server, GREEDY))
    assert prompted.errors == [] and plain.errors == []
    assert prompted.text() and plain.text() and prompted.text() != plain.text()

    expected, offline = respond(tmp_path, STREAM_S + 1.0)  # longer than the server's run
    frames = len(prompted.audio)  # frames the server sent, from the handshake to the close
    assert STREAM_S * 12.5 - skipped <= frames < offline.size / FRAME_SAMPLES  # a frame per tick run
    # The same text pieces in the same frames, from the first frame on: the handshake came with the
    # first frame that was the model's answer, after the prompt was in.
    assert pieces(prompted) == [(f, p) for f, p in expected if f < frames]
    # The server's recording of what the model said starts with the frames its prompt was fed in
    # (exact silence, not sent: the handshake waited for the prompt), then equals respond's output
    # (PCM16 both, one step of rounding apart at most); the client heard it through Opus, 6.5 ms
    # late, close to it.
    said = await recording_of(record_dir, ROLE)
    prefill = int(np.argmax(np.abs(said.reshape(-1, FRAME_SAMPLES)).max(axis=1) > 0))
    n = frames * FRAME_SAMPLES
    assert said.size >= prefill * FRAME_SAMPLES + n
    np.testing.assert_allclose(said[prefill * FRAME_SAMPLES :][:n], offline[:n], atol=2 / 32768)
    heard = prompted.received()[156 : 156 + n - FRAME_SAMPLES]
    assert np.corrcoef(heard, offline[: heard.size])[0, 1] > 0.5


async def test_an_unknown_voice_preset_is_refused_with_the_reason(persona_server):
    async with connect(chat_url(persona_server, "voice_prompt=NOBODY.pt")) as ws:
        client = MoshiChatClient(ws)
        closed = await client.wait_closed()
    assert client.handshake_at is None
    assert closed.rcvd.code == 1008 and "NOBODY" in closed.rcvd.reason and "NOBODY" in client.errors[0]
