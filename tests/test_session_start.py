"""The same audio through any endpoint gives the same answer, however late the client speaks.

A session is announced (session.ready, session.created, session.started, the 0x00 handshake) once
its engine slot is open, and the model's first step for it hears the client's first audio, so with
greedy decoding on the tiny random Moshi two runs of one input give the same output to the sample:
one client speaks at once, the other a quarter of a second (three ticks) after the announcement.
What the model said is read from the server's recording (the same for every endpoint: what each
frame's step returned, before any encoding for the wire).
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_utils import load_wav
from server_utils import start_server
from websockets.asyncio.client import connect

from audio.frames import FRAME_MS, FRAME_SAMPLES
from audio.opus import OpusEncoder
from server import moshi_protocol

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEECH_FRAMES = 8  # the input: the first 640 ms of q1.wav, sent in one message
COMPARED_FRAMES = 16  # what the model says over the first 1.28 s is compared
LATE_S = 0.25  # the second run's client speaks this long after the announcement


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    pcm, rate = load_wav("q1.wav")
    assert rate == 24000
    return pcm[: SPEECH_FRAMES * FRAME_SAMPLES]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from moshi_fixtures import random_moshi, tiny_kyutai_kwargs, train_tiny_spm, write_kyutai_checkpoint

    root = tmp_path_factory.mktemp("session_start")
    kwargs = tiny_kyutai_kwargs()
    model_dir = write_kyutai_checkpoint(
        root / "kyutai", random_moshi(kwargs, seed=5), kwargs, train_tiny_spm(root / "spm")
    )
    records = root / "records"
    with start_server(
        "--backend", "moshi", "--model", str(model_dir), "--device", "cpu", "--max-sessions", "1",
        "--temperature", "0", "--text-temperature", "0", "--record", str(records),
        startup_timeout_s=120,
    ) as address:  # fmt: skip
        yield address, records


def pcm16(pcm: np.ndarray) -> bytes:
    return (np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes()


async def next_event(ws, kind: str) -> dict:
    while True:
        message = await asyncio.wait_for(ws.recv(), 30)
        if isinstance(message, str) and (event := json.loads(message))["type"] == kind:
            return event
        assert not (isinstance(message, str) and json.loads(message)["type"] == "error"), message


async def native(url: str, speech: np.ndarray, late_s: float) -> None:
    async with connect(f"{url}/ws") as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 24000}))
        await next_event(ws, "session.ready")
        await asyncio.sleep(late_s)
        await ws.send(pcm16(speech))
        await listen(ws)


async def realtime(url: str, speech: np.ndarray, late_s: float) -> None:
    async with connect(f"{url}/v1/realtime") as ws:
        await next_event(ws, "session.created")
        await asyncio.sleep(late_s)
        audio = base64.b64encode(pcm16(speech)).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        await listen(ws)


async def live(url: str, speech: np.ndarray, late_s: float) -> None:
    session = {"model": "tiny", "audio": {"format": {"type": "audio/pcm", "rate": 24000}}}
    start = {"type": "session.start", "session": session}
    async with connect(f"{url}/v1/live/sessions") as ws:
        await ws.send(json.dumps(start))
        await next_event(ws, "session.started")
        await asyncio.sleep(late_s)
        audio = base64.b64encode(pcm16(speech)).decode()
        await ws.send(json.dumps({"type": "session.input_audio.append", "audio": audio}))
        await listen(ws)


async def moshi_chat(url: str, speech: np.ndarray, late_s: float) -> None:
    async with connect(f"{url}/api/chat") as ws:
        assert await asyncio.wait_for(ws.recv(), 30) == moshi_protocol.HANDSHAKE
        await asyncio.sleep(late_s)
        encoder = OpusEncoder(24000)
        tail = np.zeros((4, FRAME_SAMPLES), np.float32)  # pushes the speech's last pages out of the encoder
        frames = np.concatenate([speech.reshape(-1, FRAME_SAMPLES), tail])
        await ws.send(moshi_protocol.audio_message(b"".join(encoder.encode(frame) for frame in frames)))
        await listen(ws)


async def listen(ws) -> None:
    """Read what comes for as long as the compared frames take, with room for a busy CPU."""
    loop = asyncio.get_running_loop()
    until = loop.time() + (COMPARED_FRAMES + 4) * FRAME_MS / 1000
    while (left := until - loop.time()) > 0:
        try:
            await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            break


async def said(records: Path, before: set[Path]) -> tuple[np.ndarray, list]:
    """The assistant channel and text pieces (frame, text) of the one recording made since `before`."""
    for _ in range(200):
        new = set(records.glob("*.jsonl")) - before
        if new:
            (path,) = new
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            if lines and lines[-1]["event"] == "session.ended":
                audio = sf.read(path.with_suffix(".wav"), dtype="float32")[0][:, 1]
                texts = [
                    (round(e["at_ms"] / FRAME_MS), e["text"]) for e in lines if e["event"] == "assistant.text"
                ]
                return audio, texts
        await asyncio.sleep(0.05)
    raise AssertionError("no finished recording")


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", [native, realtime, live, moshi_chat], ids=lambda f: f.__name__)
async def test_the_same_audio_gives_the_same_answer_however_late_the_client_speaks(server, speech, endpoint):
    address, records = server
    url = f"ws://{address.host}:{address.port}"
    runs = []
    for late_s in (0.0, LATE_S):
        before = set(records.glob("*.jsonl"))
        await endpoint(url, speech, late_s)
        runs.append(await said(records, before))
    (first, first_text), (second, second_text) = runs
    n = COMPARED_FRAMES * FRAME_SAMPLES
    assert first.size >= n and second.size >= n, (first.size, second.size)
    assert np.abs(first[:n]).max() > 0.01  # the model said something
    np.testing.assert_array_equal(first[:n], second[:n])
    assert [t for t in first_text if t[0] < COMPARED_FRAMES] == [
        t for t in second_text if t[0] < COMPARED_FRAMES
    ]
