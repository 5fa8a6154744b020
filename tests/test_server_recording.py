"""`--record DIR`: stereo 24 kHz WAV (user left, assistant right, sample-aligned) and JSONL events per
session, readable while the session runs, complete after a graceful shutdown, and valid (missing at
most ~1 s) after the server is killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import signal

import numpy as np
import soundfile as sf
from audio_utils import load_wav
from server_utils import NativeClient, start_server
from websockets.asyncio.client import connect

PLAYOUT_MS = 1000  # the simulated listener plays audio this long after it arrives


async def report_playback(ws, client: NativeClient, stop: asyncio.Event) -> None:
    while not stop.is_set():
        played = max(0.0, len(client.audio) * 80 - PLAYOUT_MS)
        await ws.send(json.dumps({"type": "playback.position", "played_ms": played}))
        await asyncio.sleep(0.1)


def voiced_ranges(x: np.ndarray, threshold: float = 0.02) -> tuple[int, int]:
    idx = np.flatnonzero(np.abs(x) > threshold)
    return int(idx[0]), int(idx[-1])


async def test_recording_is_valid_while_running_and_complete_after_shutdown(tmp_path):
    q1, _ = load_wav("q1.wav")
    interrupt, _ = load_wav("interrupt.wav")
    as16 = lambda x: (x * 32767).astype("<i2")  # noqa: E731
    with start_server("--backend", "scripted", "--record", str(tmp_path)) as address:
        async with connect(address.ws_url) as ws:
            client = NativeClient(ws)
            ready = await client.start(24000)
            stop = asyncio.Event()
            reporter = asyncio.create_task(report_playback(ws, client, stop))
            await client.stream(as16(np.concatenate([q1, np.zeros(int(1.8 * 24000), np.float32)])))
            # Mid-session, the WAV on disk is already a valid file holding all but the last second.
            wav = tmp_path / f"{ready['session_id']}.wav"
            info = sf.info(wav)
            assert info.channels == 2 and info.samplerate == 24000
            assert info.frames >= (len(client.audio) * 80 / 1000 - 1.3) * 24000
            await client.stream(as16(interrupt[:36000]))
            await client.wait_for("barge_in")
            stop.set()
            await reporter
            address.proc.send_signal(signal.SIGTERM)  # drain: the live session is told and closed
            _, ended = await client.wait_for("session.ended")
            await client.wait_closed()
            assert ended["reason"] == "server_shutdown" and ws.close_code == 1000
        assert address.proc.wait(10) == 0

    pcm, rate = sf.read(wav, dtype="float32")
    sent_frames = len(client.audio)
    assert pcm.shape == (sent_frames * 1920, 2)  # every frame sent is in the file
    user, assistant = pcm[:, 0], pcm[:, 1]
    # Sample-aligned: the reply starts on the right channel once the question has ended on the left,
    # after the end-of-turn silence (500 ms) and within a frame or two more.
    reply_start, _ = voiced_ranges(assistant)
    _, q_end = voiced_ranges(user[:reply_start])
    assert 0.45 <= (reply_start - q_end) / rate <= 0.8

    events = [
        json.loads(line) for line in (tmp_path / f"{ready['session_id']}.jsonl").read_text().splitlines()
    ]
    kinds = [e["event"] for e in events]
    for kind in (
        "session.ready",
        "input.speech_started",
        "input.speech_stopped",
        "assistant.text",
        "latency",
        "barge_in",
        "session.ended",
    ):
        assert kind in kinds
    i_barge = kinds.index("barge_in")
    barge = events[i_barge]
    said = "".join(e["text"] for e in events[:i_barge] if e["event"] == "assistant.text")
    # The listener was PLAYOUT_MS behind: what it had not heard yet is the cut, the rest was heard.
    assert barge["cut_text"] and barge["heard_text"].strip()
    assert (barge["heard_text"] + " " + barge["cut_text"]).split() == said.split()
    assert events[-1]["event"] == "session.ended" and events[-1]["reason"] == "server_shutdown"


async def test_recording_survives_sigkill(tmp_path):
    with start_server("--backend", "silence", "--record", str(tmp_path)) as address:
        async with connect(address.ws_url) as ws:
            client = NativeClient(ws)
            ready = await client.start(24000)
            await client.stream(np.zeros(int(3.2 * 24000), dtype="<i2"))
            received = len(client.audio)
            address.proc.send_signal(signal.SIGKILL)
            address.proc.wait(5)
    wav = tmp_path / f"{ready['session_id']}.wav"
    pcm, rate = sf.read(wav, dtype="float32")
    assert rate == 24000 and pcm.shape[1] == 2
    # Every frame is recorded as it is sent, and flushed within a second (12.5 frames).
    assert received >= 30
    assert (received - 14) * 1920 <= pcm.shape[0] <= (received + 3) * 1920
    lines = (tmp_path / f"{ready['session_id']}.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["event"] == "session.ready"
    assert all(json.loads(line) for line in lines)
