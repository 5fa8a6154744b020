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
import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_utils import load_wav
from server_utils import start_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from audio.frames import FRAME_MS, FRAME_SAMPLES
from audio.opus_ogg import OpusEncoder
from server.protocols.moshi import wire as moshi_wire

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
    ) as address:  # fmt: skip
        yield address, records, model_dir


def pcm16(pcm: np.ndarray) -> bytes:
    return (np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes()


async def next_event(ws, kind: str) -> dict:
    while True:
        message = await asyncio.wait_for(ws.recv(), 30)
        if isinstance(message, str) and (event := json.loads(message))["type"] == kind:
            return event
        assert not (isinstance(message, str) and json.loads(message)["type"] == "error"), message


async def native(url: str, speech: np.ndarray, late_s: float, recording: Recording) -> None:
    async with connect(f"{url}/ws") as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 24000}))
        await next_event(ws, "session.ready")
        await asyncio.sleep(late_s)
        await ws.send(pcm16(speech))
        await listen(ws, recording)


async def realtime(url: str, speech: np.ndarray, late_s: float, recording: Recording) -> None:
    async with connect(f"{url}/v1/realtime") as ws:
        await next_event(ws, "session.created")
        await asyncio.sleep(late_s)
        audio = base64.b64encode(pcm16(speech)).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        await listen(ws, recording)


async def live(url: str, speech: np.ndarray, late_s: float, recording: Recording) -> None:
    session = {"model": "tiny", "audio": {"format": {"type": "audio/pcm", "rate": 24000}}}
    start = {"type": "session.start", "session": session}
    async with connect(f"{url}/v1/live/sessions") as ws:
        await ws.send(json.dumps(start))
        await next_event(ws, "session.started")
        await asyncio.sleep(late_s)
        audio = base64.b64encode(pcm16(speech)).decode()
        await ws.send(json.dumps({"type": "session.input_audio.append", "audio": audio}))
        await listen(ws, recording)


def ogg_stream(speech: np.ndarray) -> bytes:
    """The speech as the start of one Ogg Opus stream (a few frames of silence push its last pages out)."""
    encoder = OpusEncoder(24000)
    frames = np.concatenate([speech.reshape(-1, FRAME_SAMPLES), np.zeros((4, FRAME_SAMPLES), np.float32)])
    return b"".join(encoder.encode(frame) for frame in frames)


async def moshi_chat(url: str, speech: np.ndarray, late_s: float, recording: Recording) -> None:
    async with connect(f"{url}/api/chat") as ws:
        assert await asyncio.wait_for(ws.recv(), 30) == moshi_wire.HANDSHAKE
        await asyncio.sleep(late_s)
        await ws.send(moshi_wire.audio_message(ogg_stream(speech)))
        await listen(ws, recording)


class Recording:
    """The server's recording of the next session: what the model heard and said, frame by frame."""

    def __init__(self, records: Path):
        self.records = records
        self.before = set(records.glob("*.wav"))

    def frames(self) -> int:
        """Frames recorded so far (the file is flushed every half second)."""
        frames = 0
        for path in set(self.records.glob("*.wav")) - self.before:
            with contextlib.suppress(RuntimeError):  # caught while its header is being rewritten
                frames = max(frames, sf.info(str(path)).frames // FRAME_SAMPLES)
        return frames

    async def said(self) -> tuple[np.ndarray, list]:
        """Once the session has ended: the assistant channel and its text pieces (frame, text)."""
        for _ in range(200):
            new = set(self.records.glob("*.wav")) - self.before
            if new:
                (wav,) = new
                lines = [json.loads(line) for line in wav.with_suffix(".jsonl").read_text().splitlines()]
                if lines and lines[-1]["event"] == "session.ended":
                    audio = sf.read(wav, dtype="float32")[0][:, 1]
                    texts = [
                        (round(e["at_ms"] / FRAME_MS), e["text"])
                        for e in lines
                        if e["event"] == "assistant.text"
                    ]
                    return audio, texts
            await asyncio.sleep(0.05)
        raise AssertionError("no finished recording")


async def listen(ws, recording: Recording) -> None:
    """Read what comes until the recording holds the compared frames (however slowly a busy CPU steps
    them), then hang up."""

    async def read_all() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    reader = asyncio.create_task(read_all())
    try:
        for _ in range(1200):
            if recording.frames() > COMPARED_FRAMES:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the session's recording never held the compared frames")
    finally:
        reader.cancel()


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", [native, realtime, live, moshi_chat], ids=lambda f: f.__name__)
async def test_the_same_audio_gives_the_same_answer_however_late_the_client_speaks(server, speech, endpoint):
    address, records, _ = server
    url = f"ws://{address.host}:{address.port}"
    runs = []
    for late_s in (0.0, LATE_S):
        recording = Recording(records)
        await endpoint(url, speech, late_s, recording)
        runs.append(await recording.said())
    (first, first_text), (second, second_text) = runs
    n = COMPARED_FRAMES * FRAME_SAMPLES
    assert first.size >= n and second.size >= n, (first.size, second.size)
    assert np.abs(first[:n]).max() > 0.01  # the model said something
    np.testing.assert_array_equal(first[:n], second[:n])
    assert [t for t in first_text if t[0] < COMPARED_FRAMES] == [
        t for t in second_text if t[0] < COMPARED_FRAMES
    ]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # moshi's own torch.jit use
async def test_api_chat_answers_as_kyutais_server_does_from_the_first_frame(server, speech):
    """Kyutai's server steps its model on every whole frame of the decoded stream, the first included,
    and starts Mimi's encoder over after that first frame: its text, step by step, is the server's."""
    pytest.importorskip("moshi.models.loaders", reason="Kyutai's moshi package is not installed")
    import torch
    from moshi_fixtures import kyutai_reference

    from assistant.moshi.checkpoint import KYUTAI_TOKENIZER_NAME
    from assistant.moshi.tokenizer import TextTokenizer
    from audio.opus_ogg import OpusDecoder

    address, records, model_dir = server
    recording = Recording(records)
    await moshi_chat(f"ws://{address.host}:{address.port}", speech, 0.0, recording)
    _, served = await recording.said()

    heard = OpusDecoder(24000).decode(ogg_stream(speech))  # what the server decoded, sample for sample
    frames = heard[: heard.size // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    mimi, lm_gen = kyutai_reference(model_dir)
    tokenizer = TextTokenizer.from_file(model_dir / KYUTAI_TOKENIZER_NAME, {0, 3})
    expected = []
    with torch.no_grad(), mimi.streaming(1), lm_gen.streaming(1):
        for k, frame in enumerate(frames):
            codes = mimi.encode(torch.from_numpy(frame)[None, None])
            if k == 0:
                mimi.reset_streaming()  # Kyutai's "skip": the first frame is heard, then Mimi starts over
            tokens = lm_gen.step(codes)
            if tokens is not None and (piece := tokenizer.piece(int(tokens[0, 0, 0]))):
                expected.append((k, piece))
    assert len(frames) >= SPEECH_FRAMES and expected
    assert [t for t in served if t[0] < len(frames)] == expected, (served, expected)
