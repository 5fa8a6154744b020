"""Raw Opus packets (no Ogg), 24 kHz mono, 20 ms each: the native protocol's `audio_format: "opus"`.

A browser's WebCodecs `AudioEncoder` hands out one such packet per `EncodedAudioChunk` and its
`AudioDecoder` takes one per chunk, so the wire carries exactly that: one packet per binary message.

PyAV's libopus does the coding. audio/opus_ogg.py's `sphn` only reads and writes Ogg streams, and
`opuslib` (ctypes over a system libopus) has had no release since 2018 and no wheels; PyAV ships
libopus in its wheels for Linux and macOS (x86_64 and arm64) and costs the same CPU (it is the same
libopus). Two things it does that a server must guard against: its decoder always hands out
48 kHz (halved here), and an empty packet is taken as end of stream, after which every packet
fails, so empty and oversized packets are refused before they reach it. A packet libopus cannot
parse raises `OpusPacketError` and leaves the decoder usable for the next one.
"""

from __future__ import annotations

import numpy as np

from audio.frames import SAMPLE_RATE_HZ

__all__ = [
    "MAX_PACKET_BYTES",
    "PACKET_MS",
    "PACKET_SAMPLES",
    "OpusPacketDecoder",
    "OpusPacketEncoder",
    "OpusPacketError",
]

PACKET_MS = 20
PACKET_SAMPLES = SAMPLE_RATE_HZ * PACKET_MS // 1000  # 480
MAX_PACKET_BYTES = 1275  # the largest packet RFC 6716 allows for one frame (and 120 ms at most)
BITRATE_BPS = 32_000  # a ceiling: libopus' VBR speech at 24 kHz averages ~24 kbit/s
# libopus' speed/quality knob (0-10, default 10). 5 keeps speech transparent at this bitrate and
# costs 0.6-0.8 ms per 80 ms frame against ~1 ms at 10 (`assistant bench server --audio-format opus`).
COMPLEXITY = 5


class OpusPacketError(ValueError):
    """One packet could not be decoded (empty, larger than Opus allows, or not Opus at all)."""


class OpusPacketEncoder:
    """float32 PCM at 24 kHz -> 20 ms Opus packets. Samples short of a packet wait for the next call."""

    def __init__(self, complexity: int = COMPLEXITY, bitrate_bps: int = BITRATE_BPS):
        import av  # here, not at import: a server that never sees an Opus session never loads PyAV

        self._av = av
        self._ctx = av.CodecContext.create("libopus", "w")
        self._ctx.sample_rate = SAMPLE_RATE_HZ
        self._ctx.layout = "mono"
        self._ctx.format = "s16"
        self._ctx.bit_rate = bitrate_bps
        self._ctx.options = {
            "application": "voip",
            "frame_duration": str(PACKET_MS),
            "compression_level": str(complexity),
        }
        self._ctx.open()
        self._pending = np.zeros(0, dtype=np.int16)
        self._pts = 0

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        """pcm: float32 (n,) in [-1, 1] at 24 kHz -> the packets it completes (n // 480 or so)."""
        x = np.clip(np.asarray(pcm, dtype=np.float32).reshape(-1), -1.0, 1.0)
        x16 = np.concatenate([self._pending, (x * 32767.0).astype(np.int16)])
        whole = len(x16) - len(x16) % PACKET_SAMPLES
        self._pending = x16[whole:]
        if not whole:
            return []
        frame = self._av.AudioFrame.from_ndarray(x16[:whole].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE_HZ
        frame.pts = self._pts
        self._pts += whole
        return [bytes(packet) for packet in self._ctx.encode(frame)]


class OpusPacketDecoder:
    """One Opus packet at a time -> float32 (n,) at 24 kHz (480 samples for a 20 ms packet)."""

    def __init__(self):
        import av

        self._av = av
        self._ctx = av.CodecContext.create("libopus", "r")
        self._ctx.open()
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE_HZ)

    def decode(self, packet: bytes) -> np.ndarray:
        """Raises OpusPacketError for a packet that is not one; the next packet decodes as usual."""
        if not packet:
            raise OpusPacketError("an Opus packet cannot be empty (send one packet per binary message)")
        if len(packet) > MAX_PACKET_BYTES:
            raise OpusPacketError(
                f"an Opus packet is at most {MAX_PACKET_BYTES} bytes, got {len(packet)} "
                "(send one packet per binary message)"
            )
        try:
            frames = self._ctx.decode(self._av.Packet(bytes(packet)))
        except self._av.error.FFmpegError as exc:
            raise OpusPacketError(f"not a valid Opus packet ({len(packet)} bytes): {exc}") from None
        out = [o.to_ndarray().reshape(-1) for f in frames for o in self._resampler.resample(f)]
        if not out:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(out).astype(np.float32) / 32768.0
