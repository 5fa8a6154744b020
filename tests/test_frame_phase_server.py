"""Frame phase through the server: a Kyutai-style /api/chat client that paces its 80 ms frames from
the handshake has each frame stepped just after it arrives, not a frame later.

The client sends a click in one frame; the server's recording (--record: the user's input as the
engine heard it, frame by frame beside the output) says which step heard it, and the client's
own arrival time of that step's audio says how long after sending the click the answer came:
the frame's wait for its tick, the step (the scripted backend's is ~0) and the loopback.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import soundfile as sf
from moshi_client import MoshiChatClient
from server_utils import start_server
from websockets.asyncio.client import connect

from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ

CLICK_FRAME = 6  # the frame of the client's stream that carries the click
FRAMES = 14


@pytest.fixture(scope="module")
def recorded_server(tmp_path_factory):
    records = tmp_path_factory.mktemp("records")
    with start_server("--backend", "scripted", "--record", str(records)) as address:
        yield address, records


async def click_delay(address, records) -> float:
    """Seconds from sending the frame with the click to receiving the audio of the step that heard it."""
    before = set(records.glob("*.wav"))
    pcm = np.zeros(FRAMES * FRAME_SAMPLES, np.float32)
    click = CLICK_FRAME * FRAME_SAMPLES + FRAME_SAMPLES // 2
    pcm[click : click + 120] = 0.8 * np.sign(np.sin(np.arange(120) * 0.7))
    async with connect(f"ws://{address.host}:{address.port}/api/chat") as ws:
        client = MoshiChatClient(ws)
        client.stream_start = await client.wait_handshake()  # paced from the handshake, as Kyutai's
        await client.stream(pcm)
        await asyncio.sleep(0.4)
    sent_at = client.stream_start + (CLICK_FRAME + 1) * FRAME_SAMPLES / SAMPLE_RATE_HZ
    deadline = time.monotonic() + 10
    while not (set(records.glob("*.wav")) - before) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    (path,) = set(records.glob("*.wav")) - before
    await asyncio.sleep(0.6)  # the recording's last flush
    heard = sf.read(path, dtype="float32")[0][:, 0]
    frames = heard[: heard.shape[0] // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    step = int(np.flatnonzero(np.abs(frames).max(axis=1) > 0.1)[0])
    return client.audio[step][0] - sent_at


async def test_a_client_pacing_from_the_handshake_is_answered_in_the_tick_after_its_frame(recorded_server):
    address, records = recorded_server
    delays = [await click_delay(address, records) for _ in range(4)]
    # Each frame is in HANDSHAKE_LEAD_S (12 ms) before its tick; a handshake sent right after a step
    # would have every frame land just after a tick and wait a whole 80 ms period for the next.
    assert np.median(delays) < 0.040, delays
    assert min(delays) >= 0.0, delays
