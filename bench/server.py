"""`assistant bench server`: server CPU per session, frame-clock jitter and capacity.

For each session count N: start `assistant serve` as its own process, connect N websocket clients
from this process (so the server's CPU time is its own), stream speech (tests/data/speech/
conversation.wav on a loop when present, else silence) paced by the wall clock, and measure over
`--seconds` after a short warm-up:
- server CPU ms per session per 80 ms frame (the server process's user+system time), and the
  event loop's share (its thread's time: what stalls every session when it grows),
- how late the frame-clock ticks started (p50/p99/max) and the engine step time,
- underruns and drops (the server's counters) and skipped ticks,
- with `--captions MODEL`: the clients ask for captions, so every finished utterance is transcribed
  on the server's caption thread; compare the frame-clock figures with `--captions off`,
- with `--protocol live`: the clients speak the OpenAI Live API (/v1/live/sessions: JSON events,
  base64 audio) instead of the native protocol (/ws: binary PCM); the CPU difference is the price of
  the JSON protocol. Live sends only the assistant's speech, so `recv` is the share of frames it spoke,
- with `--audio-format opus`: the native clients send 20 ms Opus packets (encoded once, before the
  run) and get four per frame back, so the server decodes and encodes every session's audio, on its
  codec worker threads; compare the columns with `--audio-format pcm16` for the codec's share, and see
  "Opus alone" and the workers' throughput with 1 and 2 threads.
The largest N held without underruns, drops or skipped ticks is the capacity figure. Prints
figures only; it never fails on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from assistant.engine_args import add_engine_arguments, engine_kwargs, model_of
from audio.frames import SAMPLE_RATE_HZ

FRAME_S = 0.08
# protocol -> (websocket path, the session.start it sends, the caption event's type as it appears in JSON)
PROTOCOLS = {
    "native": ("/ws", {"type": "session.start", "sample_rate": 24000}, '"user.transcript"'),
    "live": (
        "/v1/live/sessions",
        {
            "type": "session.start",
            "session": {"model": "bench", "audio": {"format": {"type": "audio/pcm", "rate": 24000}}},
        },
        '"session.input_transcript.delta"',
    ),
}
CHUNK_MS = 40  # default size of the clients' audio messages (the web page sends 20 ms)
SPEECH_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "speech"  # in a checkout
CONVERSATION_WAV = SPEECH_DIR / "conversation.wav"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sessions", default="1,16,64", help="comma-separated session counts (default 1,16,64)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per count (default 20)")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds streamed before measuring (default: 2)"
    )
    add_engine_arguments(parser, backend="silence", model="tiny")  # handed to each `assistant serve`
    parser.add_argument(
        "--audio",
        type=Path,
        default=None,
        help="24 kHz mono WAV the clients stream on a loop (default: the checkout's tests/data/speech/conversation.wav)",
    )
    parser.add_argument(
        "--vad", choices=("webrtc", "silero"), default="webrtc", help="the server's VAD (default: webrtc)"
    )
    parser.add_argument(
        "--captions",
        default="off",
        metavar="MODEL",
        help="user captions on the server: off (default), auto, a faster-whisper size (tiny.en) or a "
        "CTranslate2 model dir; the clients then ask for captions on every utterance",
    )
    parser.add_argument(
        "--protocol",
        choices=tuple(PROTOCOLS),
        default="native",
        help="what the clients speak: native (/ws, default) or live (/v1/live/sessions, the OpenAI Live API)",
    )
    parser.add_argument(
        "--chunk-ms",
        type=int,
        default=CHUNK_MS,
        choices=(10, 20, 40, 80),
        help=f"audio message size the clients send (default {CHUNK_MS}; Opus: always 20, one packet a message)",
    )
    parser.add_argument(
        "--audio-format",
        choices=("pcm16", "opus"),
        default="pcm16",
        help="native clients' audio on the wire: pcm16 (default) or opus (20 ms packets, both ways)",
    )


def opus_packets(audio: np.ndarray) -> list[bytes]:
    """`audio` (int16 at 24 kHz) as the 20 ms Opus packets a client sends."""
    from audio.opus_packets import OpusPacketEncoder

    return OpusPacketEncoder().encode(audio.astype(np.float32) / 32768.0)


def bench_opus(audio: np.ndarray) -> tuple[float, float]:
    """CPU ms per 80 ms frame of `audio` (24 kHz int16) to encode it into packets and decode them back."""
    from audio.opus_packets import OpusPacketDecoder, OpusPacketEncoder

    x = audio.astype(np.float32) / 32768.0
    frames = len(x) // 1920
    encoder, decoder = OpusPacketEncoder(), OpusPacketDecoder()
    t = time.process_time()
    packets = [p for i in range(frames) for p in encoder.encode(x[i * 1920 : (i + 1) * 1920])]
    encode_ms = (time.process_time() - t) * 1000 / frames
    t = time.process_time()
    for packet in packets:
        decoder.decode(packet)
    return encode_ms, (time.process_time() - t) * 1000 / frames


def process_cpu_s(pid: int, thread: int | None = None) -> float:
    """CPU seconds of process `pid`, or of its thread `thread` (the main thread, the event loop's, is pid)."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def codec_throughput(
    audio: np.ndarray, threads: int, sessions: int = 8, frames: int = 60
) -> dict[str, float]:
    """80 ms frames per second that the server's codec workers (server/codec_lanes.py) encode and
    decode for `sessions` sessions at once, per codec: PyAV's packets (/ws) and sphn's Ogg (/api/chat)."""
    from concurrent.futures import ThreadPoolExecutor

    from audio.opus_ogg import OpusDecoder, OpusEncoder
    from audio.opus_packets import OpusPacketDecoder, OpusPacketEncoder

    x = audio.astype(np.float32) / 32768.0
    pcm = [x[i * 1920 : (i + 1) * 1920] for i in range(min(frames, len(x) // 1920))]

    def packets() -> None:
        encoder, decoder = OpusPacketEncoder(), OpusPacketDecoder()
        for frame in pcm:
            for packet in encoder.encode(frame):
                decoder.decode(packet)

    def ogg() -> None:
        encoder, decoder = OpusEncoder(), OpusDecoder()
        for frame in pcm:
            if data := encoder.encode(frame):
                decoder.decode(data)

    result = {}
    with ThreadPoolExecutor(threads) as pool:  # as many threads as the server's codec workers
        for name, work in (("packets", packets), ("ogg", ogg)):
            work()  # warm
            t = time.perf_counter()
            for job in [pool.submit(work) for _ in range(sessions)]:
                job.result()
            result[name] = sessions * len(pcm) / (time.perf_counter() - t)
    return result


def metric_value(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def http_get(host: str, port: int, path: str) -> str:
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def load_audio(path: Path | None) -> tuple[np.ndarray, str]:
    """int16 samples at 24 kHz to stream, and what they are."""
    path = path or (CONVERSATION_WAV if CONVERSATION_WAV.is_file() else None)
    if path is None:
        return np.zeros(24000 * 10, dtype="<i2"), "silence"
    import soundfile as sf

    pcm, rate = sf.read(path, dtype="int16", always_2d=True)
    if rate != SAMPLE_RATE_HZ:
        raise SystemExit(f"{path} is {rate} Hz; the benchmark streams 24 kHz audio")
    return np.ascontiguousarray(pcm[:, 0]), path.name


async def _client(
    url: str,
    audio: np.ndarray,
    t0: float,
    phase_s: float,
    stop: asyncio.Event,
    received: list[int],
    chunk_ms: int = CHUNK_MS,
    captions: bool = False,
    transcripts: list[float] | None = None,
    protocol: str = "native",
    packets: list[bytes] | None = None,
) -> None:
    from websockets.asyncio.client import connect

    if packets:  # 20 ms each, one a message: chunk_ms is 20 (run sets it)
        start_msg = {**PROTOCOLS[protocol][1], "audio_format": "opus"}
    chunk = SAMPLE_RATE_HZ * chunk_ms // 1000
    start = t0 + phase_s  # chunk i is sent at start + (i + 1) * chunk_ms
    _, native_start, caption_type = PROTOCOLS[protocol]
    start_msg = start_msg if packets else native_start
    live = protocol == "live"  # live captions need no asking: the server makes them when it can
    async with connect(url, compression=None, max_queue=None) as ws:
        await ws.send(json.dumps({**start_msg, "captions": True} if captions and not live else start_msg))

        async def read() -> None:
            async for message in ws:
                if isinstance(message, bytes) or '"session.output_audio.delta"' in message[:40]:
                    received[0] += 1
                elif transcripts is not None and caption_type in message:
                    # Caption latency: the VAD's end of speech (end_ms) was due to be sent at
                    # start + its chunk's end; the clients keep to that schedule.
                    end_sample = json.loads(message)["end_ms"] * 24
                    sent = start + math.ceil(end_sample / chunk) * chunk_ms / 1000
                    transcripts.append(time.monotonic() - sent)

        reader = asyncio.create_task(read())
        i = 0
        while not stop.is_set():
            due = start + (i + 1) * chunk_ms / 1000
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            offset = (i * chunk) % (len(audio) - chunk)
            pcm = audio[offset : offset + chunk].tobytes()
            if packets:
                await ws.send(packets[i % len(packets)])
            elif live:
                await ws.send(
                    json.dumps(
                        {"type": "session.input_audio.append", "audio": base64.b64encode(pcm).decode()}
                    )
                )
            else:
                await ws.send(pcm)
            i += 1
        reader.cancel()


async def _measure(
    url: str,
    host: str,
    port: int,
    pid: int,
    n: int,
    audio: np.ndarray,
    warmup_s: float,
    seconds: float,
    chunk_ms: int,
    captions: bool = False,
    protocol: str = "native",
    packets: list[bytes] | None = None,
) -> dict:
    stop = asyncio.Event()
    received = [0]
    transcripts: list[float] = []  # speech end -> user.transcript received, s, in arrival order
    t0 = time.monotonic() + 0.5
    rng = np.random.default_rng(0)
    tasks = [
        asyncio.create_task(
            _client(
                url,
                audio,
                t0,
                float(rng.uniform(0, FRAME_S)),
                stop,
                received,
                chunk_ms,
                captions,
                transcripts,
                protocol,
                packets,
            )
        )
        for _ in range(n)
    ]

    def reading(first: bool) -> tuple[str, float, float, int, float]:
        # The event loop's window lies inside the process's (its counter read after the process's at
        # the start, before it at the end), so its share never reads more than the whole.
        metrics = http_get(host, port, "/metrics")
        if first:
            cpu = process_cpu_s(pid)
            loop_cpu = process_cpu_s(pid, pid)
        else:
            loop_cpu = process_cpu_s(pid, pid)
            cpu = process_cpu_s(pid)
        return metrics, cpu, loop_cpu, received[0], time.monotonic()

    await asyncio.sleep(0.5 + warmup_s)
    metrics0, cpu0, loop0, recv0, w0 = reading(first=True)
    captions0 = len(transcripts)
    await asyncio.sleep(seconds)
    metrics1, cpu1, loop1, recv1, w1 = reading(first=False)
    captions1 = len(transcripts)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    # Opus sessions get each frame as four 20 ms packets.
    frames = n * (w1 - w0) / FRAME_S * (4 if packets else 1)
    delta = {
        k: metric_value(metrics1, f"assistant_{k}_total") - metric_value(metrics0, f"assistant_{k}_total")
        for k in ("underruns", "drops", "skipped_ticks", "session_frames", "captions_dropped")
    }
    return {
        "sessions": n,
        # Per frame the server actually processed: skipped ticks do no work and must not flatter it.
        "cpu_ms_per_session_frame": (cpu1 - cpu0) * 1000 / max(delta["session_frames"], 1),
        # the event loop's thread alone (sockets, protocol, conversation core; Opus now on workers)
        "loop_ms_per_session_frame": (loop1 - loop0) * 1000 / max(delta["session_frames"], 1),
        "server_cpu_percent": 100 * (cpu1 - cpu0) / (w1 - w0),
        "frames_received_ratio": (recv1 - recv0) / frames,
        "captions_received": captions1 - captions0,
        "caption_latency_s": transcripts[captions0:captions1],
        **delta,
    }


def bench_vad(audio: np.ndarray, backend: str, chunk_ms: int = CHUNK_MS) -> float:
    """CPU ms one StreamingVad spends per 80 ms frame of `audio` (24 kHz), fed in chunk_ms chunks."""
    from audio.vad import StreamingVad, VadConfig

    vad = StreamingVad(VadConfig(backend=backend), sample_rate_hz=24000)
    x = audio.astype(np.float32) / 32768.0
    chunk = SAMPLE_RATE_HZ * chunk_ms // 1000
    t = time.process_time()
    for i in range(0, len(x) - chunk, chunk):
        vad.push(x[i : i + chunk])
    return (time.process_time() - t) * 1000 / (len(x) / 1920)


def wait_captions_ready(port: int, timeout_s: float = 120.0) -> None:
    """Wait until the server's caption model has loaded, so loading it is not measured as clock jitter."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        captions = json.loads(http_get("127.0.0.1", port, "/healthz")).get("captions") or {}
        if captions.get("ready"):
            return
        if captions.get("error"):
            raise SystemExit(f"the server's caption model failed to load: {captions['error']}")
        time.sleep(0.1)
    raise SystemExit(f"the server's caption model did not load within {timeout_s:g} s (see its log)")


@contextlib.contextmanager
def serving(
    serve_args: list[str], env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen, int]]:
    """`assistant serve --host 127.0.0.1 --port 0 *serve_args` as its own process (its CPU time is
    its own): yields (process, port) once it listens; SIGTERM (then kill) when the block ends."""
    cmd = [sys.executable, "-m", "assistant", "serve", "--host", "127.0.0.1", "--port", "0", *serve_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        port = None
        for line in proc.stdout:
            m = re.search(r"open https?://[^:]+:(\d+)/", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            raise SystemExit(f"the server did not start: {proc.stdout.read()}")
        yield proc, port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_one(n: int, args: argparse.Namespace, audio: np.ndarray, packets: list[bytes] | None = None) -> dict:
    stats_file = Path(tempfile.mkstemp(suffix=".json")[1])
    serve_args = [
        "--backend",
        args.backend,
        "--max-sessions",
        str(n),
        "--vad",
        args.vad,
        "--idle-timeout",
        "3600",
        "--captions",
        args.captions,
        "--clock-stats",
        str(stats_file),
    ]
    for name, value in engine_kwargs(args).items():
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            serve_args.append(f"--{flag}" if value else f"--no-{flag}")
        elif value is not None:
            serve_args += [f"--{flag}", value]
    with serving(serve_args) as (proc, port):
        if args.captions != "off":
            wait_captions_ready(port)
        result = asyncio.run(
            _measure(
                f"ws://127.0.0.1:{port}{PROTOCOLS[args.protocol][0]}",
                "127.0.0.1",
                port,
                proc.pid,
                n,
                audio,
                args.warmup,
                args.seconds,
                args.chunk_ms,
                args.captions != "off",
                args.protocol,
                packets,
            )
        )
    clock = json.loads(stats_file.read_text()) if stats_file.stat().st_size else {}
    stats_file.unlink(missing_ok=True)
    result["late_ms"] = clock.get("late_ms", {})
    result["step_ms"] = clock.get("step_ms", {})
    return result


def run(args: argparse.Namespace) -> int:
    try:
        counts = [int(s) for s in args.sessions.split(",") if s.strip()]
    except ValueError:
        print(f"--sessions must be comma-separated integers, got {args.sessions!r}", file=sys.stderr)
        return 2
    if not counts or min(counts) < 1 or args.seconds <= 0:
        print("--sessions needs counts >= 1 and --seconds > 0", file=sys.stderr)
        return 2
    try:
        engine_kwargs(args)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.audio_format == "opus" and args.protocol != "native":
        print("--audio-format opus is a native-protocol option (--protocol native)", file=sys.stderr)
        return 2
    audio, what = load_audio(args.audio)
    packets = opus_packets(audio) if args.audio_format == "opus" else None
    if packets:  # one 20 ms Opus packet per message, whatever was asked (the clients, VAD, header read it)
        args.chunk_ms = 20
    print(
        f"server bench: backend {args.backend}"
        + (f" ({model_of(args)}, {args.device or 'default device'})" if args.backend == "moshi" else "")
        + f", {args.protocol} protocol, {args.audio_format} audio, VAD {args.vad}, captions {args.captions}, clients stream {what} in "
        f"{args.chunk_ms} ms chunks from a separate process, {args.seconds:g} s measured per count, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"VAD alone: webrtc {bench_vad(audio, 'webrtc', args.chunk_ms):.3f} ms CPU per 80 ms frame"
        + (f", silero {bench_vad(audio, 'silero', args.chunk_ms):.3f} ms" if args.vad == "silero" else "")
    )
    if packets:
        encode_ms, decode_ms = bench_opus(audio)
        print(
            f"Opus alone: encode {encode_ms:.3f} + decode {decode_ms:.3f} = {encode_ms + decode_ms:.3f} ms "
            f"CPU per 80 ms frame, {sum(map(len, packets)) * 8 / (len(packets) * 20):.1f} kbit/s"
        )
        one, two = codec_throughput(audio, 1), codec_throughput(audio, 2)
        print(
            "Opus on the codec workers (8 sessions, 80 ms frames encoded + decoded per second): "
            + ", ".join(
                f"{name} {one[name]:.0f} with 1 thread, {two[name]:.0f} with 2 (x{two[name] / one[name]:.2f})"
                for name in ("packets", "ogg")
            )
        )
    header = (
        f"{'sessions':>8} {'CPU ms/sess/frame':>18} {'event loop ms':>13} {'server CPU %':>12} {'tick late p50/p99/max ms':>25} "
        f"{'step p50/p99 ms':>16} {'underruns':>9} {'underrun %':>10} {'drops':>6} {'skipped':>7} {'recv':>5}"
        + (
            f" {'captions made/dropped':>21} {'caption latency p50/max s':>25}"
            if args.captions != "off"
            else ""
        )
    )
    print(header)
    held = held_loosely = 0
    for n in counts:
        r = run_one(n, args, audio, packets)
        late, step = r["late_ms"], r["step_ms"]
        fmt = lambda d, *ks: "/".join("-" if d.get(k) is None else f"{d[k]:.1f}" for k in ks)  # noqa: E731
        print(
            f"{n:>8} {r['cpu_ms_per_session_frame']:>18.3f} {r['loop_ms_per_session_frame']:>13.3f} "
            f"{r['server_cpu_percent']:>12.1f} "
            f"{fmt(late, 'p50', 'p99', 'max'):>25} {fmt(step, 'p50', 'p99'):>16} {r['underruns']:>9.0f} "
            f"{100 * r['underruns'] / max(r['session_frames'], 1):>10.2f} "
            f"{r['drops']:>6.0f} {r['skipped_ticks']:>7.0f} {r['frames_received_ratio']:>5.2f}"
            + (
                f" {r['captions_received']:>13.0f}/{r['captions_dropped']:<7.0f} "
                + (
                    f"{np.median(r['caption_latency_s']):>21.1f}/{max(r['caption_latency_s']):<3.1f}"
                    if r["caption_latency_s"]
                    else f"{'-':>25}"
                )
                if args.captions != "off"
                else ""
            ),
            flush=True,
        )
        if r["drops"] == 0 and r["skipped_ticks"] == 0:
            held_loosely = max(held_loosely, n)
            if r["underruns"] == 0:
                held = max(held, n)
    print(f"largest session count held without underruns, drops or skipped ticks: {held or 'none'}")
    print(
        f"largest held without drops or skipped ticks (underruns allowed: they are client chunks that came "
        f"late, see underrun %): {held_loosely or 'none'}"
    )
    return 0
