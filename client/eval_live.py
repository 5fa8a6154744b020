"""output.wav from a live server: each sample's input streamed over `/ws` in real time, the reply recorded.

This is FDB's own way of scoring a live system: the input goes out in 80 ms chunks, each when a
microphone would have finished recording it, and everything the server sends back is kept in
order. The server sends one frame every 80 ms, silence included, so that stream is the
listener's timeline; it is placed as the in-process path places its frames
(`assistant.eval.generate.heard_output`). Several samples run at once, one session each, so a set
costs about the wall time of its longest input.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np

from assistant.eval.dataset import Sample
from assistant.eval.generate import heard_output, read_input, write_wav
from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ
from client.native import ClientError, NativeClient, ServerEvent

REPLY_WAIT_S = 3.0  # after the last input chunk, how long the last output frames may take to arrive


async def record_reply(
    url: str, user_24k: np.ndarray, *, token: str | None = None, options: dict | None = None
) -> np.ndarray:
    """Stream float32 (n,) 24 kHz input to a server in real time; what a listener heard, (n,) float32.

    options: session options for session.start (instructions, voice, ...; None values are left out)."""
    client = await NativeClient.connect(url, sample_rate=SAMPLE_RATE_HZ, token=token, **(options or {}))
    received: list[np.ndarray] = []
    refused: list[str] = []

    async def read() -> None:
        async for item in client.receive():
            if isinstance(item, ServerEvent):
                if item.type == "error":
                    refused.append(f"{item.get('code')}: {item.get('message')}")
            else:
                received.append(item)

    reader = asyncio.create_task(read())
    loop = asyncio.get_running_loop()
    n = user_24k.shape[0]
    try:
        start = loop.time()
        for begin in range(0, n, FRAME_SAMPLES):
            chunk = user_24k[begin : begin + FRAME_SAMPLES]
            await asyncio.sleep(max(0.0, start + (begin + chunk.shape[0]) / SAMPLE_RATE_HZ - loop.time()))
            if reader.done():
                break
            await client.send_audio(chunk)
        deadline = loop.time() + REPLY_WAIT_S
        while sum(r.shape[0] for r in received) < n - FRAME_SAMPLES and not reader.done():
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.02)
    finally:
        await client.end()
        await asyncio.wait_for(reader, REPLY_WAIT_S)
    got = sum(r.shape[0] for r in received)
    if got < n - FRAME_SAMPLES:
        why = f"; the server said {refused[-1]}" if refused else ""
        code = client.close_code
        raise ClientError(
            f"{url} sent {got / SAMPLE_RATE_HZ:.2f} s of audio for {n / SAMPLE_RATE_HZ:.2f} s of input "
            f"(session ended: {client.ended.get('reason') if client.ended else f'closed with code {code}'}){why}"
        )
    pcm = np.concatenate(received).astype(np.float32) / 32768.0
    return heard_output(pcm, n)


def generate_live(
    url: str,
    samples: Sequence[Sample],
    *,
    concurrency: int = 8,
    token: str | None = None,
    options: dict | None = None,
    on_done: Callable[[Sample, str | None], None] = lambda sample, error: None,
) -> None:
    """Write output.wav for every sample from the server at `url`, `concurrency` sessions at a time."""

    async def one(sample: Sample, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                user = read_input(sample)
                heard = await record_reply(url, user, token=token, options=options)
            except (ClientError, RuntimeError, ValueError, OSError, asyncio.TimeoutError) as exc:
                on_done(sample, f"generating {sample.output_wav} from {url} failed: {exc}")
                return
            write_wav(sample.output_wav, heard)
            on_done(sample, None)

    async def run_all() -> None:
        gate = asyncio.Semaphore(max(1, concurrency))
        await asyncio.gather(*(one(sample, gate) for sample in samples))

    asyncio.run(run_all())
