"""The server driving the real Moshi engine (a tiny random checkpoint in Kyutai's layout, on CPU):
two sessions batched in one step per frame, each streamed its own audio every 80 ms."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from server_utils import NativeClient, http_get, metric, start_server
from websockets.asyncio.client import connect

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def kyutai_dir(tmp_path_factory):
    from moshi_fixtures import random_moshi, tiny_kyutai_kwargs, train_tiny_spm, write_kyutai_checkpoint

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serve_moshi")
    kwargs = tiny_kyutai_kwargs()
    return write_kyutai_checkpoint(
        root / "kyutai", random_moshi(kwargs, seed=3), kwargs, train_tiny_spm(root / "spm")
    )


async def converse(url: str, seed: int) -> NativeClient:
    async with connect(url) as ws:
        client = NativeClient(ws)
        await client.start(16000, seed=seed)
        t = np.arange(int(2.0 * 16000)) / 16000
        tone = (0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) * 32767).astype("<i2")
        await client.stream(tone, sample_rate=16000)
        await ws.send('{"type": "session.end"}')
        await client.wait_closed()
    return client


@pytest.mark.slow
async def test_two_moshi_sessions_share_the_batch(kyutai_dir):
    with start_server(
        "--backend",
        "moshi",
        "--model",
        str(kyutai_dir),
        "--device",
        "cpu",
        "--max-sessions",
        "2",
        env={"OMP_NUM_THREADS": "1"},
    ) as address:
        info = json.loads(http_get(address, "/healthz")[2])
        assert info["backend"] == "moshi" and info["max_sessions"] == 2
        a, b = await asyncio.gather(converse(address.ws_url, 1), converse(address.ws_url, 2))
        metrics = http_get(address, "/metrics")[2].decode()
        skipped = metric(address, "assistant_skipped_ticks_total")
    for client in (a, b):
        frames = [np.frombuffer(m, "<i2") for _, m in client.audio]
        # About one 80 ms frame (1280 samples at 16 kHz) per tick for the 2 s streamed (a tick a busy
        # CPU made the clock skip sends none).
        assert 20 - skipped <= len(frames) <= 30
        assert sum(len(f) for f in frames) >= (len(frames) - 1) * 1280
        assert max(np.abs(f).max() for f in frames) > 0  # the random model makes sound
        assert client.of("session.ended")[0][1]["reason"] == "client_ended"
    # One batched step per tick served both sessions.
    steps = float(
        next(line.split()[1] for line in metrics.splitlines() if line.startswith("assistant_step_ms_count"))
    )
    session_frames = float(
        next(
            line.split()[1]
            for line in metrics.splitlines()
            if line.startswith("assistant_session_frames_total")
        )
    )
    assert session_frames > 1.5 * steps
