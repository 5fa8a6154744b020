"""`audio_format: "opus"` on `/ws`: the packet codec, the protocol's checks, and a scripted server
heard through the native client and `assistant talk`, with bad packets refused and the session going on."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from server_utils import REPO, start_server
from websockets.asyncio.client import connect

from audio.opus_packets import PACKET_SAMPLES, OpusPacketDecoder, OpusPacketEncoder, OpusPacketError
from client.native import NativeClient, start_message
from server.protocols.native.wire import ProtocolError, check_audio, decode_text

CONVERSATION_WAV = REPO / "tests" / "data" / "speech" / "conversation.wav"
RATE = 24000

pytestmark = pytest.mark.timeout(90)


def speech() -> np.ndarray:
    """float32 (n,) at 24 kHz: the test conversation (speech, a pause, an interruption)."""
    pcm, rate = sf.read(CONVERSATION_WAV, dtype="float32", always_2d=True)
    assert rate == RATE
    return pcm[:, 0]


def truncated(packet: bytes) -> bytes:
    """`packet` as a two-frame packet cut short: its first frame's length points past the end."""
    return bytes([(packet[0] & 0xFC) | 2, 250]) + b"\x00" * 5


def roundtrip(x: np.ndarray) -> tuple[np.ndarray, list[bytes]]:
    encoder, decoder = OpusPacketEncoder(), OpusPacketDecoder()
    packets = [p for i in range(0, len(x) - 1920, 1920) for p in encoder.encode(x[i : i + 1920])]
    return np.concatenate([decoder.decode(p) for p in packets]), packets


# -- the codec ------------------------------------------------------------------------------------
def test_speech_survives_at_a_fifteenth_of_the_pcm_bitrate_with_little_delay():
    x = speech()
    y, packets = roundtrip(x)
    assert len(packets) == 4 * len(range(0, len(x) - 1920, 1920))  # 20 ms each
    assert all(len(p) <= 1275 for p in packets)
    kbps = sum(map(len, packets)) * 8 / (len(packets) * 20)
    # Algorithmic delay (encoder lookahead + the decoder's 48 -> 24 kHz filter): the peak of the
    # cross-correlation of what went in and what came out.
    n = min(len(y), 5 * RATE)
    corr = np.correlate(y[:n], x[: n - 2400], "valid")
    delay = int(np.argmax(corr))
    aligned = y[delay : delay + n - 2400]
    similarity = float(
        np.dot(aligned, x[: n - 2400]) / np.linalg.norm(aligned) / np.linalg.norm(x[: n - 2400])
    )
    print(
        f"\nopus: {kbps:.1f} kbit/s (pcm16: 384), codec delay {delay / 24:.1f} ms, similarity {similarity:.3f}"
    )
    assert kbps <= 40
    assert delay / 24 <= 30
    assert similarity > 0.9  # the same speech, not just any sound


def test_bad_packets_raise_and_the_decoder_goes_on():
    x = speech()[: RATE // 2]
    _, packets = roundtrip(x)
    decoder = OpusPacketDecoder()
    assert len(decoder.decode(packets[0])) > 0.9 * PACKET_SAMPLES  # the resampler holds a few back
    for bad in (b"", b"\xff" * 10, truncated(packets[3]), b"\x00" * 1276):
        with pytest.raises(OpusPacketError):
            decoder.decode(bad)
    assert len(decoder.decode(packets[1])) > 0.9 * PACKET_SAMPLES


# -- the protocol ---------------------------------------------------------------------------------
def test_audio_format_is_chosen_at_start_and_opus_takes_packets_only():
    start = decode_text('{"type": "session.start", "sample_rate": 24000, "audio_format": "opus"}')
    assert (start.sample_rate, start.options(), start.audio_format) == (24000, {}, "opus")
    assert decode_text('{"type": "session.start", "sample_rate": 48000}').audio_format == "pcm16"
    refusals = [
        ('{"type": "session.start", "sample_rate": 24000, "audio_format": "mp3"}', "invalid_value"),
        (
            '{"type": "session.start", "sample_rate": 48000, "audio_format": "opus"}',
            "unsupported_sample_rate",
        ),
        ('{"type": "session.update", "audio_format": "opus"}', "invalid_value"),
    ]
    for text, code in refusals:
        with pytest.raises(ProtocolError) as exc:
            decode_text(text)
        assert exc.value.code == code, text
    check_audio(b"\x01", started=True, audio_format="opus")  # odd lengths are fine for packets
    for data in (b"", b"\x00" * 1276):
        with pytest.raises(ProtocolError, match="one Opus packet per binary message"):
            check_audio(data, started=True, audio_format="opus")
    assert json.loads(start_message(24000, audio_format="opus"))["audio_format"] == "opus"
    with pytest.raises(ValueError, match="24000"):
        start_message(48000, audio_format="opus")


# -- against a scripted server --------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    record = tmp_path_factory.mktemp("record")
    with start_server("--backend", "scripted", "--record", str(record)) as address:
        address.record_dir = record
        yield address


def voiced_s(pcm: np.ndarray, rate: int, threshold: float = 0.02) -> float:
    """Seconds of 20 ms blocks louder than `threshold` RMS: how much of `pcm` is audible."""
    block = rate // 50
    blocks = pcm[: len(pcm) // block * block].reshape(-1, block)
    return float((np.sqrt((blocks**2).mean(axis=1)) > threshold).sum()) / 50


async def bad_packets_then_silence(url: str) -> tuple[dict, list[dict], int]:
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 24000, "audio_format": "opus"}))
        ready = json.loads(await ws.recv())
        _, packets = roundtrip(np.zeros(RATE // 2, dtype=np.float32))
        for bad in (b"\xff" * 10, truncated(packets[2]), b"\x00" * 1300, b""):
            await ws.send(bad)
        for packet in packets:
            await ws.send(packet)
        errors, audio = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while loop.time() < deadline:
            message = await asyncio.wait_for(ws.recv(), deadline - loop.time() + 1)
            if isinstance(message, bytes):
                audio += 1
            elif (event := json.loads(message))["type"] == "error":
                errors.append(event)
        return ready, errors, audio


def test_bad_packets_get_errors_and_the_session_goes_on(server):
    ready, errors, audio = asyncio.run(bad_packets_then_silence(server.ws_url))
    assert ready["type"] == "session.ready" and ready["audio_format"] == "opus"
    assert [e["code"] for e in errors] == ["bad_audio"] * 4, errors
    assert "Opus" in errors[0]["message"]
    assert audio >= 60  # ~2 s of 20 ms packets kept coming after the refusals


async def speak_then_end_and_leave(url: str) -> str:
    """Two seconds of packets in one burst, then session.end and the close at once, as a page does
    when its tab closes: the packets are still being decoded when the socket is gone."""
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 24000, "audio_format": "opus"}))
        ready = json.loads(await ws.recv())
        _, packets = roundtrip(speech()[: 2 * RATE])
        for packet in packets:
            await ws.send(packet)
        await ws.send(json.dumps({"type": "session.end"}))
    return ready["session_id"]


def test_a_session_end_sent_behind_audio_counts_though_the_client_left_at_once(server):
    session_id = asyncio.run(speak_then_end_and_leave(server.ws_url))
    record = server.record_dir / f"{session_id}.jsonl"
    deadline = time.monotonic() + 10
    ended: list[dict] = []
    while not ended and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = record.read_text().splitlines() if record.exists() else []
        ended = [e for e in map(json.loads, lines) if e["event"] == "session.ended"]
    assert [e["reason"] for e in ended] == ["client_ended"]


async def converse(url: str, pcm: np.ndarray, rate: int) -> tuple[NativeClient, np.ndarray, list]:
    client = await NativeClient.connect(url, sample_rate=rate, audio_format="opus")
    heard: list[np.ndarray] = []
    events: list = []

    async def read() -> None:
        async for item in client.receive():
            (heard if isinstance(item, np.ndarray) else events).append(item)

    reader = asyncio.create_task(read())
    chunk = rate // 50
    t0 = asyncio.get_running_loop().time()
    for i, start in enumerate(range(0, len(pcm), chunk)):
        await client.send_audio(pcm[start : start + chunk])
        await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - asyncio.get_running_loop().time()))
    await client.end()
    await reader
    return client, np.concatenate(heard).astype(np.float32) / 32768, events


def test_native_client_hears_the_scripted_reply_and_the_server_records_pcm(server):
    # 48 kHz at the caller, 24 kHz Opus on the wire: the client resamples around the codec.
    question = speech()[: 6 * RATE]
    import soxr

    pcm48 = soxr.resample(np.concatenate([question, np.zeros(4 * RATE, np.float32)]), RATE, 48000)
    client, heard, events = asyncio.run(converse(server.ws_url, pcm48, 48000))
    kinds = [e.type for e in events]
    assert "assistant.speech_started" in kinds, kinds
    assert not [e for e in events if e.type == "error"]
    assert voiced_s(heard, 48000) > 1.0  # the reply was heard, not just silence
    # The recording holds PCM decoded from the packets: the user's speech, on the left.
    wav = server.record_dir / f"{client.session_id}.wav"
    recorded, rate = sf.read(wav, dtype="float32", always_2d=True)
    assert rate == RATE and voiced_s(recorded[:, 0], RATE) > 1.0
    assert voiced_s(recorded[:, 1], RATE) > 1.0


def test_talk_with_opus_hears_the_scripted_reply(server, tmp_path):
    question = tmp_path / "question.wav"
    sf.write(question, speech()[: 6 * RATE], RATE, subtype="PCM_16")
    out = tmp_path / "heard.wav"
    args = ["--server", server.ws_url, "--input-file", str(question), "--output-file", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "assistant", "talk", *args, "--audio-format", "opus", "--tail-seconds", "4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    heard, rate = sf.read(out, dtype="float32")
    assert voiced_s(heard, rate) > 1.0, "talk --audio-format opus heard no reply"


def test_the_server_opens_its_opus_codecs_before_any_session():
    # Loading PyAV (and sphn for /api/chat) when the first Opus caller arrives stalled every live
    # session's audio for 100+ ms (seconds from a cold disk): they are loaded at start-up instead.
    from pathlib import Path

    with start_server("--backend", "silence", "--captions", "off") as fresh:
        maps = Path(f"/proc/{fresh.proc.pid}/maps").read_text()
    assert "libavcodec" in maps and "sphn" in maps


async def refused_start_then_a_packet(url: str) -> list[dict]:
    async with connect(url) as ws:
        start = {"type": "session.start", "sample_rate": 24000, "audio_format": "opus", "temperature": -3}
        await ws.send(json.dumps(start))
        events = [json.loads(await ws.recv())]
        _, packets = roundtrip(np.zeros(RATE // 10, dtype=np.float32))
        await ws.send(packets[0])
        events.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
        return events


def test_a_packet_after_a_refused_opus_start_is_refused_as_audio_before_a_session(server):
    # The refused start chose Opus before its options were checked: the packet still meets a clear
    # error, not an internal one.
    refused, packet = asyncio.run(refused_start_then_a_packet(server.ws_url))
    assert refused["code"] == "invalid_value" and "temperature" in refused["message"]
    assert packet["code"] == "not_started", packet
