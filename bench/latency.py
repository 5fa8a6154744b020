"""`assistant bench latency`: how soon the model's output reacts to a change in the user's audio.

The perturbation method. One freshly started server (`assistant serve`, any backend and model; the
tiny random Moshi by default), greedy decoding, one session at a time. Each triple streams three
fresh sessions, paced by the wall clock in `--chunk-ms` chunks from the moment the session is ready:
  A  the recording (the first `--seconds` of tests/data/speech/q1.wav),
  A' the same again: greedy decoding makes it identical to A, which this checks,
  B  the same with `--noise-frames` frames of white noise from 2.4 s on.
The delay is the time from sending the first changed sample (B's chunk that starts at 2.4 s) to
receiving B's first output message that differs from A's. The model reacts in the very step that
hears the change, so the delay is the frame still to fill after that chunk, the wait for the tick,
the step (compute), and the network. The step time comes from the server itself (`--clock-stats`
for ours, its log's "frame handled in" lines for Kyutai's), and "waiting" is delay - step. That
waiting also holds the model's own answer: a model that changes its output a step after the one
that hears the change adds a frame. "frame wait" (/ws) is the server's own figure, from its `stats`
events: how long each frame's newest input had been in when its tick came (p50/p95, the medians
over the sessions), the wait the frame clock adds whatever the model does. "reply wait" is the
same from the client's side, for every step and whatever the model does (our server, every
endpoint): it records each session (`--record`), each frame the engine heard is found, sample for
sample, in what the client sent (the bench decodes its own Opus packets and Ogg pages as the server
does), each step's audio among what the client received, and the step's wait is from sending the
chunk that completed its frame to receiving its audio, less the step (median/p95 over every step
of every session; frames ending in silence, and on /v1/realtime and /v1/live the steps outside a
response, which send no audio, left out).

Endpoints: `ws` (/ws, PCM16 or `--audio-format opus`), `realtime` (/v1/realtime), `live`
(/v1/live/sessions), `chat` (/api/chat, Ogg Opus as Kyutai's client sends it). With
`--reference-server CMD` the same /api/chat client then runs against another server started by
CMD (`{port}` in it is replaced by a free port): Kyutai's own `moshi.server` with the same weights,
for instance (bench/kyutai_server.py):

    python tests/reference/write_tiny_checkpoint.py /tmp/tiny
    assistant bench latency --model /tmp/tiny --endpoint chat --chunk-ms 80 \
        --reference-server "python -m bench.kyutai_server --checkpoint /tmp/tiny --port {port}"

Prints figures only; it never fails on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from assistant.engine_args import add_engine_arguments, engine_kwargs, model_of
from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ
from audio.pcm import float32_to_pcm16
from bench.server import SPEECH_DIR, http_get, metric_value, serving

ENDPOINTS = {
    "ws": "/ws",
    "realtime": "/v1/realtime?model=bench",
    "live": "/v1/live/sessions",
    "chat": "/api/chat",
}
CHANGE_S = 2.4  # where B's noise starts
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE_HZ
READY_EVENTS = ("session.ready", "session.created", "session.started")  # /ws, /v1/realtime, /v1/live
GREEDY_QUERY = "text_temperature=0&audio_temperature=0"


@dataclass
class SessionRun:
    """One streamed session: when each chunk went out, and each output message with its arrival."""

    sent_at: list[float] = field(default_factory=list)  # time.monotonic() per chunk, in order
    outputs: list[bytes] = field(default_factory=list)  # output audio payloads, in order
    received_at: list[float] = field(default_factory=list)
    frame_wait_ms: dict | None = None  # /ws: the server's last `stats` figure for the session
    session_id: str | None = None  # its recording is named after it (/api/chat: found by its arrival)
    messages: list = field(default_factory=list, repr=False)  # what was sent, one entry per chunk


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint", choices=tuple(ENDPOINTS), default="ws", help="which endpoint (default ws)"
    )
    parser.add_argument(
        "--audio-format",
        choices=("pcm16", "opus"),
        default="pcm16",
        help="ws only: pcm16 (default) or opus (20 ms packets both ways); chat is always Ogg Opus",
    )
    parser.add_argument(
        "--chunk-ms", type=int, default=20, choices=(10, 20, 40, 80), help="audio message size (default 20)"
    )
    parser.add_argument("--triples", type=int, default=10, help="A/A'/B triples (default 10)")
    parser.add_argument(
        "--sessions",
        type=int,
        default=1,
        help="sessions streaming at once, each at its own random place on the tick grid, kept for "
        "the whole run; every triple runs all of them (default 1; not with --endpoint chat)",
    )
    parser.add_argument(
        "--seconds", type=float, default=3.2, help="seconds of audio per session (default 3.2)"
    )
    parser.add_argument("--noise-frames", type=int, default=3, help="80 ms frames of noise in B (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server (default 1)")
    parser.add_argument(
        "--reference-server",
        metavar="CMD",
        default=None,
        help="also run the /api/chat client against the server CMD starts ({port} is replaced)",
    )
    parser.add_argument("--seed", type=int, default=0, help="noise and start-phase seed (default 0)")
    add_engine_arguments(parser, backend="moshi", model="tiny")


# -- the clients ---------------------------------------------------------------------------------


def _encode_chunks(
    pcm: np.ndarray, chunk: int, endpoint: str, audio_format: str
) -> list[bytes | str | list[bytes]]:
    """What carries `pcm` (float32 at 24 kHz), one entry per `chunk` samples (empty ones kept): a
    message, or for /ws Opus the list of 20 ms packets the chunk completed, each a message of its own."""
    n = len(pcm) // chunk
    pieces = [pcm[i * chunk : (i + 1) * chunk] for i in range(n)]
    pcm16 = [float32_to_pcm16(p) for p in pieces]
    if endpoint == "chat":
        import sphn

        writer = sphn.OpusStreamWriter(SAMPLE_RATE_HZ)
        return [b"\x01" + writer.append_pcm(p) for p in pieces]
    if endpoint == "ws" and audio_format == "opus":
        from audio.opus_packets import OpusPacketEncoder

        encoder = OpusPacketEncoder()
        return [encoder.encode(p) for p in pieces]
    if endpoint == "realtime":
        return [
            json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b).decode()})
            for b in pcm16
        ]
    if endpoint == "live":
        return [
            json.dumps({"type": "session.input_audio.append", "audio": base64.b64encode(b).decode()})
            for b in pcm16
        ]
    return pcm16


def _output_payload(endpoint: str, message: str | bytes) -> bytes | None:
    """The output audio a message carries (None: not audio)."""
    if endpoint in ("ws",):
        return message if isinstance(message, bytes) else None
    if endpoint == "chat":
        return message[1:] if isinstance(message, bytes) and message[:1] == b"\x01" else None
    if isinstance(message, str) and 'output_audio.delta"' in message[:60]:
        return json.loads(message)["delta"].encode()
    return None


async def tick_phase(host: str, port: int, frames: int = 25) -> float:
    """When the server's ticks start, as a time.monotonic() value modulo 80 ms: the earliest arrival of
    an idle /ws session's frames (each less its index times 80 ms), less the mean step (/metrics)."""
    from websockets.asyncio.client import connect

    arrivals = []
    async with connect(f"ws://{host}:{port}/ws", compression=None, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": SAMPLE_RATE_HZ}))
        while len(arrivals) < frames:
            if isinstance(await ws.recv(), bytes):
                arrivals.append(time.monotonic())
    metrics = await asyncio.to_thread(http_get, host, port, "/metrics")
    step_s = metric_value(metrics, "assistant_step_ms_sum") / max(
        metric_value(metrics, "assistant_step_ms_count"), 1
    )
    return min(t - i * FRAME_S for i, t in enumerate(arrivals)) - step_s / 1000


async def stream_session(
    url: str,
    endpoint: str,
    messages: list[bytes | str],
    chunk_s: float,
    tail_s: float,
    opus: bool,
    phase: float | None = None,
) -> SessionRun:
    """Open a session, wait until it is ready, send `messages` one per `chunk_s` (chunk k when its last
    sample would have been recorded), keep reading `tail_s` after the last, and close.
    phase: the first chunk is due one frame after the tick that opens the session's slot (the first
    after it is ready) plus `phase` (seconds modulo 80 ms from a tick, `tick_phase` + an offset), so
    every session of a triple starts at the same place on the server's tick grid, after the same
    number of steps; None: the first chunk is due one chunk after the session is ready."""
    from websockets.asyncio.client import connect

    run = SessionRun(messages=messages)
    async with connect(url, compression=None, max_queue=None, max_size=None) as ws:
        if endpoint == "ws":
            start = {
                "type": "session.start",
                "sample_rate": SAMPLE_RATE_HZ,
                "temperature": 0,
                "text_temperature": 0,
            }
            await ws.send(json.dumps({**start, "audio_format": "opus"} if opus else start))
        elif endpoint == "live":
            await ws.send(json.dumps({"type": "session.start", "session": {"model": "bench"}}))
        while True:  # the session is ready: session.ready / session.created / the handshake
            message = await ws.recv()
            if endpoint == "chat" and message == b"\x00":
                break
            if isinstance(message, str) and (event := json.loads(message)).get("type") in READY_EVENTS:
                run.session_id = event.get("session_id") or (event.get("session") or {}).get("id")
                break
        t0 = time.monotonic()
        if phase is not None:  # the opening tick, then one frame more (the next chunk is due a chunk later)
            t0 = phase + np.ceil((t0 - phase) / FRAME_S) * FRAME_S + FRAME_S - chunk_s

        async def read() -> None:
            async for message in ws:
                payload = _output_payload(endpoint, message)
                if payload is not None:
                    run.outputs.append(payload)
                    run.received_at.append(time.monotonic())
                elif endpoint == "ws" and isinstance(message, str) and '"stats"' in message[:20]:
                    run.frame_wait_ms = json.loads(message).get("frame_wait_ms")

        reader = asyncio.create_task(read())
        for k, message in enumerate(messages):
            wait = t0 + (k + 1) * chunk_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            for part in message if isinstance(message, list) else [message]:
                if not _empty(part):
                    await ws.send(part)
            run.sent_at.append(time.monotonic())
        await asyncio.sleep(tail_s)
        reader.cancel()
    return run


def first_difference(a: SessionRun, b: SessionRun) -> int | None:
    """Index of the first output message of `b` that differs from `a`'s (None: all equal)."""
    for i in range(min(len(a.outputs), len(b.outputs))):
        if a.outputs[i] != b.outputs[i]:
            return i
    return None if len(a.outputs) == len(b.outputs) else min(len(a.outputs), len(b.outputs))


def _empty(message: bytes | str | list[bytes]) -> bool:
    """A chunk that carries no audio yet (an Ogg page or an Opus packet still short): nothing is sent."""
    return message in (b"\x01", b"", [])


def _sent_time_of(run: SessionRun, messages: list, chunk: int, sample: int) -> float:
    """When the message carrying input `sample` went out (an empty Ogg message rides with the next)."""
    k = sample // chunk
    while k < len(messages) - 1 and _empty(messages[k]):
        k += 1
    return run.sent_at[k]


@dataclass
class Triple:
    delay_ms: float | None  # None: B never differed from A
    deterministic: bool  # A == A' (every output)
    valid: bool  # B first differed after the change was sent, where A' still equalled A
    frame_wait_ms: list[dict] = field(default_factory=list)  # /ws: the server's figure, per session
    runs: tuple = field(default=(), repr=False)  # A, A', B
    reply_wait_ms: list[float] = field(default_factory=list)  # our server: every step's, all three sessions


async def run_triples(
    url: str,
    endpoint: str,
    args: argparse.Namespace,
    pcm: np.ndarray,
    grid: float | None,
    records: Path | None = None,
) -> list[Triple]:
    """grid: the server's tick phase (`tick_phase`); each triple then starts its three streams at one
    random place on the grid. None (/api/chat): the client paces from the handshake, as Kyutai's does.
    records: the server's recordings, where a session's id is not on the wire (/api/chat): each
    session is the recording that appeared while it ran."""
    seen = set(records.glob("*.wav")) if records else set()
    rng = np.random.default_rng(args.seed)
    chunk = SAMPLE_RATE_HZ * args.chunk_ms // 1000
    change = round(CHANGE_S * SAMPLE_RATE_HZ)
    plain, changed, opus = _inputs(pcm, chunk, change, endpoint, args, rng)
    triples = []
    for _ in range(args.triples):
        runs = []
        phase = None if grid is None else grid + float(rng.uniform(0, FRAME_S))  # a random place on the grid
        for messages in (plain, plain, changed):
            await asyncio.sleep(float(rng.uniform(0.05, 0.05 + FRAME_S)))
            runs.append(await stream_session(url, endpoint, messages, args.chunk_ms / 1000, 0.8, opus, phase))
            if records is not None and runs[-1].session_id is None:
                new = set(records.glob("*.wav")) - seen
                seen |= new
                if len(new) == 1:
                    runs[-1].session_id = new.pop().stem
        triples.append(_judge(*runs, changed, chunk, change))
        _print_triple(len(triples), triples[-1])
    return triples


async def run_concurrent_triples(
    url: str, endpoint: str, args: argparse.Namespace, pcm: np.ndarray, grid: float
) -> tuple[list[float], list[list[Triple]]]:
    """`args.sessions` sessions streaming at once, each at its own random place on the tick grid for
    the whole run: every triple streams all of them as A, then as A', then as B. Returns each
    session's phase (ms after a tick) and its triples."""
    rng = np.random.default_rng(args.seed)
    chunk = SAMPLE_RATE_HZ * args.chunk_ms // 1000
    change = round(CHANGE_S * SAMPLE_RATE_HZ)
    plain, changed, opus = _inputs(pcm, chunk, change, endpoint, args, rng)
    offsets = [float(rng.uniform(0, FRAME_S)) for _ in range(args.sessions)]
    per_session: list[list[Triple]] = [[] for _ in offsets]
    for n in range(args.triples):
        waves = []
        for messages in (plain, plain, changed):
            await asyncio.sleep(float(rng.uniform(0.05, 0.05 + FRAME_S)))
            waves.append(
                await asyncio.gather(
                    *(
                        stream_session(
                            url, endpoint, messages, args.chunk_ms / 1000, 0.8, opus, grid + offset
                        )
                        for offset in offsets
                    )
                )
            )
        for k, runs in enumerate(zip(*waves, strict=True)):
            per_session[k].append(_judge(*runs, changed, chunk, change))
        delays = [t[-1].delay_ms for t in per_session if t[-1].valid]
        print(
            f"  triple {n + 1}: {len(delays)}/{len(offsets)} sessions reacted, A==A' "
            f"{sum(t[-1].deterministic for t in per_session)}/{len(offsets)}, delay median "
            + (f"{np.median(delays):.1f} ms" if delays else "-"),
            flush=True,
        )
    return [o * 1000 for o in offsets], per_session


def _inputs(pcm, chunk, change, endpoint, args, rng):
    """(A's messages, B's messages, opus?): B has `--noise-frames` frames of noise from `change`."""
    noisy = pcm.copy()
    span = slice(change, change + args.noise_frames * FRAME_SAMPLES)
    noisy[span] = rng.uniform(-0.9, 0.9, noisy[span].shape[0]).astype(np.float32)
    opus = endpoint == "ws" and args.audio_format == "opus"
    plain = _encode_chunks(pcm, chunk, endpoint, args.audio_format)
    changed = _encode_chunks(noisy, chunk, endpoint, args.audio_format)
    return plain, changed, opus


def _judge(a: SessionRun, a2: SessionRun, b: SessionRun, changed: list, chunk: int, change: int) -> Triple:
    i = first_difference(a, b)
    sent = _sent_time_of(b, changed, chunk, change)
    delay = None if i is None or i >= len(b.received_at) else (b.received_at[i] - sent) * 1000
    same_until = first_difference(a, a2)
    valid = delay is not None and delay >= 0 and (same_until is None or same_until > i)
    waits = [r.frame_wait_ms for r in (a, a2, b) if r.frame_wait_ms]
    return Triple(delay, same_until is None, valid, waits, (a, a2, b))


def _print_triple(n: int, t: Triple) -> None:
    print(
        f"  triple {n}: A==A' {t.deterministic}, delay "
        + ("-" if t.delay_ms is None else f"{t.delay_ms:.1f} ms")
        + ("" if t.valid else " (not counted: B differed before the change, or A' differed from A first)"),
        flush=True,
    )


# -- every step's wait, from the server's recording ---------------------------------------------


def _client_stream(messages: list, endpoint: str, opus: bool) -> tuple[np.ndarray, np.ndarray]:
    """The client's audio as the server decoded it (int16 at 24 kHz, as its recording stores it),
    and where each chunk's audio ends in it."""
    if opus:
        from audio.opus_packets import OpusPacketDecoder

        decoder = OpusPacketDecoder()
        pcm16 = [b"".join(float32_to_pcm16(decoder.decode(p)) for p in chunk) for chunk in messages]
    elif endpoint == "chat":  # Ogg Opus pages, as the server reads them
        from audio.opus_ogg import OpusDecoder

        decoder = OpusDecoder()
        pcm16 = [float32_to_pcm16(decoder.decode(m[1:])) for m in messages]
    elif endpoint in ("realtime", "live"):
        pcm16 = [base64.b64decode(json.loads(m)["audio"]) for m in messages]
    else:
        pcm16 = messages
    pieces = [np.frombuffer(b, dtype="<i2") for b in pcm16]
    return np.concatenate(pieces), np.cumsum([len(x) for x in pieces])


def step_arrivals(run: SessionRun, said: np.ndarray, endpoint: str, opus: bool, window: int = 64) -> dict:
    """{step: when the client received that step's audio}. /ws and /api/chat send every step's audio
    as it is made (one PCM16 message, four Opus packets, or one Ogg page); /v1/realtime and /v1/live
    only what falls in a response, a message a frame or more: each is placed by its last `window`
    samples, found in `said` (the recording's assistant channel) at the end of a frame."""
    if endpoint in ("ws", "chat"):  # /api/chat: one Ogg page a step
        per_step = 4 if opus else 1
        return {k: run.received_at[k * per_step] for k in range(len(run.received_at) // per_step)}
    frame_tails = {
        said[(k + 1) * FRAME_SAMPLES - window : (k + 1) * FRAME_SAMPLES].tobytes(): k
        for k in range(said.shape[0] // FRAME_SAMPLES)
    }
    arrivals: dict[int, float] = {}
    for payload, at in zip(run.outputs, run.received_at, strict=True):
        audio = np.frombuffer(base64.b64decode(payload), dtype="<i2")
        tail = audio[-window:]
        step = frame_tails.get(tail.tobytes()) if tail.shape[0] == window and tail.any() else None
        if step is not None:
            arrivals.setdefault(step, at)
    return arrivals


def heard_frame_ends(heard: np.ndarray, sent: np.ndarray, window: int = 64) -> list[int | None]:
    """For each frame the engine heard (`heard`: the recording's user channel, int16), where in the
    client's stream (`sent`) it ends: the position just past its last `window` samples, found
    exactly; None where they are silence (padding, or the client's own digital silence)."""
    views = np.lib.stride_tricks.sliding_window_view(sent, window)
    ends: list[int | None] = []
    expected = FRAME_SAMPLES
    for k in range(heard.shape[0] // FRAME_SAMPLES):
        tail = heard[(k + 1) * FRAME_SAMPLES - window : (k + 1) * FRAME_SAMPLES]
        end = None
        if tail.any():
            lo = max(0, expected - 3 * FRAME_SAMPLES)
            hits = (
                np.flatnonzero((views[lo : expected + 3 * FRAME_SAMPLES] == tail).all(axis=1)) + lo + window
            )
            if hits.size:
                end = int(hits[np.argmin(np.abs(hits - expected))])
        ends.append(end)
        expected = (end if end is not None else expected) + FRAME_SAMPLES
    return ends


def reply_waits_ms(
    run: SessionRun, recording: Path, endpoint: str, opus: bool, step_ms: float
) -> list[float]:
    """Every step's wait beyond compute, as the client saw it: from sending the chunk that completed
    the frame the step heard to receiving that step's audio, less the step. Steps whose frame ends
    in silence are left out (the client's audio there cannot be told apart from padding)."""
    import soundfile as sf

    recorded = sf.read(recording, dtype="int16")[0]
    sent, chunk_ends = _client_stream(run.messages, endpoint, opus)
    arrivals = step_arrivals(run, recorded[:, 1], endpoint, opus)
    waits = []
    for k, end in enumerate(heard_frame_ends(recorded[:, 0], sent)):
        if end is None or k not in arrivals:
            continue
        chunk = int(np.searchsorted(chunk_ends, end))  # the first chunk whose audio reaches `end`
        if chunk < len(run.sent_at):
            waits.append((arrivals[k] - run.sent_at[chunk]) * 1000 - step_ms)
    return waits


def _add_reply_waits(
    triples: list[Triple], records: Path, endpoint: str, opus: bool, step_ms: float | None
) -> None:
    for triple in triples:
        for run in triple.runs:
            path = records / f"{run.session_id}.wav"
            if step_ms is not None and path.is_file():
                triple.reply_wait_ms += reply_waits_ms(run, path, endpoint, opus, step_ms)


# -- servers -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_reference(cmd: str, args: argparse.Namespace, pcm: np.ndarray) -> tuple[list[Triple], list[float]]:
    """The /api/chat triples against the server `cmd` starts; (triples, its per-frame compute in ms)."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        shlex.split(cmd.replace("{port}", str(port))),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise SystemExit(f"the reference server exited: {log.read()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the reference server did not listen within 180 s")
            time.sleep(0.2)
        triples = asyncio.run(run_triples(f"ws://127.0.0.1:{port}/api/chat", "chat", args, pcm, None))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    log.seek(0)
    steps = [float(m) for m in re.findall(r"frame handled in ([0-9.]+)ms", log.read())]
    return triples, steps


def run_ours(args: argparse.Namespace, pcm: np.ndarray) -> tuple[list[Triple] | tuple, dict]:
    """Our server's triples (with --sessions > 1: `run_concurrent_triples`' phases and triples), and
    its frame-clock figures."""
    stats_file = Path(tempfile.mkstemp(suffix=".json")[1])
    most = str(max(8, args.sessions))
    serve_args = ["--backend", args.backend, "--max-sessions", most, "--clock-stats", str(stats_file)]
    for name, value in engine_kwargs(args).items():
        if isinstance(value, bool):
            serve_args.append(f"--{name}" if value else f"--no-{name}")
        elif value is not None:
            serve_args += [f"--{name}", value]
    records = Path(tempfile.mkdtemp(prefix="latency-records-"))
    serve_args += ["--record", str(records)]  # what each step heard: every step's wait, as the client saw it
    if args.backend == "moshi" and args.endpoint in ("realtime", "live"):
        serve_args += ["--temperature", "0", "--text-temperature", "0"]  # their protocols set no sampling
    path = ENDPOINTS[args.endpoint] + (f"?{GREEDY_QUERY}" if args.endpoint == "chat" else "")
    with serving(serve_args, env={"OMP_NUM_THREADS": str(args.threads)}) as (_, port):
        url = f"ws://127.0.0.1:{port}{path}"
        grid = None if args.endpoint == "chat" else asyncio.run(tick_phase("127.0.0.1", port))
        if args.sessions > 1:
            triples = asyncio.run(run_concurrent_triples(url, args.endpoint, args, pcm, grid))
        else:
            triples = asyncio.run(run_triples(url, args.endpoint, args, pcm, grid, records))
    clock = json.loads(stats_file.read_text()) if stats_file.stat().st_size else {}
    stats_file.unlink(missing_ok=True)
    step_ms = (clock.get("step_ms") or {}).get("p50")
    opus = args.endpoint == "ws" and args.audio_format == "opus"
    for session_triples in triples[1] if args.sessions > 1 else [triples]:
        _add_reply_waits(session_triples, records, args.endpoint, opus, step_ms)
    shutil.rmtree(records, ignore_errors=True)
    return triples, clock


def summary(name: str, triples: list[Triple], step_ms: float | None) -> str:
    delays = np.array([t.delay_ms for t in triples if t.valid])
    same = sum(t.deterministic for t in triples)
    replies = [w for t in triples for w in t.reply_wait_ms]
    reply_wait = f"{np.median(replies):.1f}/{np.percentile(replies, 95):.1f}" if replies else "-"
    if delays.size == 0:
        return f"{name:<28} no triple reacted ({same}/{len(triples)} A==A'), reply wait {reply_wait} ms"
    lo, med, p95 = delays.min(), np.median(delays), np.percentile(delays, 95)
    step = "-" if step_ms is None else f"{step_ms:.1f}"
    wait = "-" if step_ms is None else f"{med - step_ms:.1f} / {p95 - step_ms:.1f}"
    # The server's own figure: each session's median and p95, their medians over the sessions.
    waits = [w for t in triples for w in t.frame_wait_ms]
    frame_wait = (
        f"{np.median([w['p50'] for w in waits]):.1f}/{np.median([w['p95'] for w in waits]):.1f}"
        if waits
        else "-"
    )
    return (
        f"{name:<28} {lo:>6.1f} {med:>7.1f} {p95:>6.1f} {step:>8} {wait:>17} {frame_wait:>13}"
        f" {reply_wait:>13} {same:>3}/{len(triples):<3} {len(delays):>3}"
    )


def run(args: argparse.Namespace) -> int:
    try:
        engine_kwargs(args)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.audio_format == "opus" and args.endpoint != "ws":
        print("--audio-format opus is for --endpoint ws (chat always sends Ogg Opus)", file=sys.stderr)
        return 2
    if args.sessions < 1 or (args.sessions > 1 and (args.endpoint == "chat" or args.reference_server)):
        print(
            "--sessions takes 1 or more, and more than 1 only for ws, realtime and live, "
            "without --reference-server",
            file=sys.stderr,
        )
        return 2
    if args.seconds < CHANGE_S + args.noise_frames * 0.08 + 0.16:
        print(f"--seconds must leave room for the noise after {CHANGE_S} s", file=sys.stderr)
        return 2
    import soundfile as sf

    audio, rate = sf.read(SPEECH_DIR / "q1.wav", dtype="float32")
    pcm = np.ascontiguousarray(audio[: round(args.seconds * rate)], dtype=np.float32)
    fmt = "Ogg Opus" if args.endpoint == "chat" else args.audio_format
    print(
        f"latency bench: {args.backend}"
        + (f" ({model_of(args)})" if args.backend == "moshi" else "")
        + f", {args.threads} torch thread(s), /{args.endpoint} {fmt} in {args.chunk_ms} ms chunks, "
        f"{args.triples} triples, {args.noise_frames} frames of noise at {CHANGE_S} s, {os.cpu_count()} CPUs"
        + (f", {args.sessions} sessions at once" if args.sessions > 1 else "")
    )
    ours, clock = run_ours(args, pcm)
    step_ms = (clock.get("step_ms") or {}).get("p50")
    if args.sessions > 1:
        phases, per_session = ours
        rows = [
            summary(f"ours /{args.endpoint} #{k + 1} +{phase:.0f} ms", triples, step_ms)
            for k, (phase, triples) in enumerate(zip(phases, per_session, strict=True))
        ]
        rows.append(summary(f"ours /{args.endpoint}, all", [t for ts in per_session for t in ts], step_ms))
    else:
        rows = [summary(f"ours /{args.endpoint}", ours, step_ms)]
    print(
        f"our server: {clock.get('skipped', '-')} skipped ticks, {clock.get('underruns', '-')} underruns, "
        f"{clock.get('drops', '-')} drops, tick late p50/p99 {clock.get('late_ms', {}).get('p50')}/"
        f"{clock.get('late_ms', {}).get('p99')} ms"
    )
    if args.reference_server:
        print("reference server, /api/chat:")
        theirs, steps = run_reference(args.reference_server, args, pcm)
        rows.append(summary("reference /api/chat", theirs, float(np.median(steps)) if steps else None))
    print(
        f"{'server':<28} {'min':>6} {'median':>7} {'p95':>6} {'step ms':>8} {'wait median/p95':>17}"
        f" {'frame wait':>13} {'reply wait':>13} A==A' n"
    )
    for row in rows:
        print(row)
    return 0
