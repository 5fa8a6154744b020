"""A `/api/chat` test client built as Kyutai's `moshi.client` is, so it checks the server the way
the original clients use it: one `sphn` Ogg Opus stream each way (sphn directly, not the server's
own wrapper), 0x01 audio / 0x02 text / 0x00 handshake framing, 80 ms of audio per message, sent
when a microphone would have finished recording it.

    async with connect(url) as ws:
        client = MoshiChatClient(ws)
        await client.wait_handshake()
        await client.stream(pcm)            # float32 (n,) at 24 kHz, paced in real time
        client.text(), client.received()    # what came back
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import sphn
from audio_utils import load_wav

from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ


def read_clip(name: str) -> np.ndarray:
    """A test recording of tests/data/speech, float32 (n,) at 24 kHz."""
    pcm, rate = load_wav(f"{name}.wav")
    assert rate == SAMPLE_RATE_HZ
    return pcm


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE_HZ), dtype=np.float32)


def voiced(pcm: np.ndarray, threshold: float = 0.01, window: int = 240) -> np.ndarray:
    """Which `window`-sample (10 ms) blocks of pcm carry sound: bool (n // window,)."""
    blocks = pcm[: pcm.shape[0] // window * window].reshape(-1, window)
    return np.sqrt((blocks.astype(np.float64) ** 2).mean(axis=1)) > threshold


class MoshiChatClient:
    """Everything one /api/chat connection receives, with arrival times (time.monotonic())."""

    def __init__(self, ws):
        self.ws = ws
        self.writer = sphn.OpusStreamWriter(SAMPLE_RATE_HZ)
        self.reader = sphn.OpusStreamReader(SAMPLE_RATE_HZ)
        self.handshake_at: float | None = None
        self.audio: list[tuple[float, np.ndarray]] = []  # decoded as it arrived
        self.texts: list[tuple[float, str]] = []
        # per text piece, the audio messages received before it: the server sends a frame's audio,
        # then its text, so piece i belongs to frame text_frames[i] - 1 (one Ogg page per frame)
        self.text_frames: list[int] = []
        self.errors: list[str] = []  # 0x05 messages
        self.other: list[bytes] = []
        self.stream_start: float | None = None
        self.sent_samples = 0
        self.closed = None  # the ConnectionClosed that ended the reader
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in self.ws:
                now = time.monotonic()
                kind, payload = message[0], message[1:]
                if kind == 0x00:
                    self.handshake_at = now
                elif kind == 0x01:
                    self.audio.append((now, self.reader.append_bytes(payload)))
                elif kind == 0x02:
                    self.texts.append((now, payload.decode("utf-8")))
                    self.text_frames.append(len(self.audio))
                elif kind == 0x05:
                    self.errors.append(payload.decode("utf-8"))
                else:
                    self.other.append(message)
        except ConnectionClosed as exc:
            self.closed = exc

    async def wait_handshake(self, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while self.handshake_at is None:
            if self._reader.done() or time.monotonic() > deadline:
                raise AssertionError(f"no handshake within {timeout} s: errors {self.errors}, {self.closed}")
            await asyncio.sleep(0.005)
        return self.handshake_at

    async def stream(self, pcm: np.ndarray) -> None:
        """Send float32 (n,) 24 kHz audio as Kyutai's client does: one Ogg Opus chunk per 80 ms
        frame, each when its last sample is due by the wall clock (from the first call on)."""
        if self.stream_start is None:
            self.stream_start = time.monotonic()
        sent = self.sent_samples
        for begin in range(0, pcm.shape[0], FRAME_SAMPLES):
            frame = pcm[begin : begin + FRAME_SAMPLES]
            due = self.stream_start + (sent + begin + frame.shape[0]) / SAMPLE_RATE_HZ
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            ogg = self.writer.append_pcm(np.ascontiguousarray(frame, dtype=np.float32))
            if ogg:
                await self.ws.send(b"\x01" + ogg)
        self.sent_samples = sent + pcm.shape[0]

    async def wait_closed(self, timeout: float = 10.0):
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.closed

    def received(self) -> np.ndarray:
        """All audio received so far, float32 (n,) at 24 kHz."""
        return np.concatenate([pcm for _, pcm in self.audio]) if self.audio else np.zeros(0, np.float32)

    def text(self) -> str:
        return "".join(piece for _, piece in self.texts)

    def voiced_in_stream(self, threshold: float = 0.01) -> np.ndarray:
        """Where the assistant's voice is in the audio received, as a listener plays it: the start of
        each voiced 10 ms block, in seconds from the stream's first sample (the answer to the first
        frame the model heard, the client's own first 80 ms)."""
        return np.flatnonzero(voiced(self.received(), threshold)) * 240 / SAMPLE_RATE_HZ
