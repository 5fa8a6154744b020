"""The same audio through any endpoint gives the same answer, however late the client speaks.

A session is announced (session.ready, session.created, session.started, the 0x00 handshake) once
its engine slot is open, and the model's first step for it hears the client's first audio, so with
greedy decoding on the tiny random Moshi every run of one input gives the same output to the
sample: six runs per endpoint, the client speaking at once, at points across a tick, or three ticks
after the announcement. What the model said is read from the server's recording (the same for every
endpoint: what each frame's step returned, before any encoding for the wire). /api/chat's answer
is also compared with Kyutai's own server's on the same Ogg stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_utils import load_wav
from server_utils import start_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from audio.frames import FRAME_MS, FRAME_SAMPLES
from audio.opus_ogg import OpusDecoder, OpusEncoder
from server.protocols.moshi import wire as moshi_wire

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]

SPEECH_FRAMES = 8  # the input: the first 640 ms of q1.wav, sent in one message
COMPARED_FRAMES = 12  # what the model says over the first 960 ms is compared
# When each run's client speaks after the announcement: at once, across one 80 ms tick, three ticks on.
LATE_S = (0.0, 0.25, 0.01, 0.05, 0.09, 0.13)


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
    n = COMPARED_FRAMES * FRAME_SAMPLES
    first = first_text = None
    for run, late_s in enumerate(LATE_S):
        recording = Recording(records)
        await endpoint(url, speech, late_s, recording)
        audio, text = await recording.said()
        assert audio.size >= n, (run, audio.size)
        text = [t for t in text if t[0] < COMPARED_FRAMES]
        if first is None:
            first, first_text = audio[:n], text
            assert np.abs(first).max() > 0.01  # the model said something
            continue
        assert np.array_equal(audio[:n], first), f"run {run} (late by {late_s} s) differs from the first"
        assert text == first_text, (run, late_s, text, first_text)


@contextlib.contextmanager
def kyutai_server(model_dir: Path) -> Iterator[str]:
    """Kyutai's own moshi.server on the checkpoint (tests/reference/kyutai_server.py): its ws:// URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = REPO / "tests" / "reference" / "kyutai_server.py"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(model_dir), str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        for line in proc.stdout:
            if "Running on" in line:
                break
        else:
            raise AssertionError(f"Kyutai's server exited ({proc.wait()}) before it listened")
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # its log must not fill the pipe
        yield f"ws://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


async def kyutai_text(url: str, ogg: bytes) -> list[str]:
    """Send one Ogg stream to Kyutai's server; the text pieces it answers. It steps once per whole
    frame it decoded, all of them before it reads on: quiet for 5 s means done."""
    texts = []
    async with connect(f"{url}/api/chat") as ws:
        assert await asyncio.wait_for(ws.recv(), 60) == moshi_wire.HANDSHAKE
        await ws.send(moshi_wire.audio_message(ogg))
        with contextlib.suppress(TimeoutError):
            while True:
                message = await asyncio.wait_for(ws.recv(), 5)
                if message[:1] == b"\x02":
                    texts.append(message[1:].decode())
    return texts


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # moshi's own torch.jit use
async def test_api_chat_answers_as_kyutais_server_does(server, speech):
    """The same Ogg stream to Kyutai's moshi.server (greedy, float32, on the CPU) and to ours: the
    same text, piece by piece and frame by frame, over every frame Kyutai's server heard. (The voice
    is compared at the engine, tests/test_moshi_engine.py: on the wire each server's Opus encoder
    codes it its own way, and the random model's voice is far beyond full scale.)"""
    pytest.importorskip("moshi.models.loaders", reason="Kyutai's moshi package is not installed")
    address, records, model_dir = server
    ogg = ogg_stream(speech)
    with kyutai_server(model_dir) as url:
        kyutais = await kyutai_text(url, ogg)
    recording = Recording(records)
    await moshi_chat(f"ws://{address.host}:{address.port}", speech, 0.0, recording)
    _, served = await recording.said()

    heard = OpusDecoder(24000).decode(ogg).size // FRAME_SAMPLES  # the frames both servers stepped on
    # Kyutai's server sends control pieces (the random model's "</s>") as text; ours shows none.
    kyutais = [t for t in kyutais if not (t.startswith("<") and t.endswith(">"))]
    assert heard >= SPEECH_FRAMES and kyutais
    assert [text for frame, text in served if frame < heard] == kyutais
