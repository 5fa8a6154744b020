"""`assistant talk`: talk to the assistant with a microphone and headphones (or WAV files).

Remote (default): the microphone streams to a server's native `/ws` endpoint at the device's
native rate (declared in session.start; the server resamples) and the assistant's voice plays
through a short playout buffer. `--local` runs an engine in this process instead (one user, the
80 ms frame loop here, engine.step in a worker thread, a VAD for barge-in), behind the same playout.

`playback.position` (every 150 ms) carries the playhead on the server's output timeline: samples
played plus those dropped by `playback.clear` or by the buffer bound, less what the sound device
itself still holds; the server compares it with the `at_ms` of its text to know what was heard.

Headless: `--input-file in.wav --output-file out.wav` replaces both devices with files paced by
the wall clock, then `--tail-seconds` of silence so the reply can finish. The output file is what
the listener would have heard, sample-aligned with the input: output sample i is what the ear hears
while input sample i is being spoken. Each simulated device block of input is sent when it is
complete (like a capture callback), and the block pulled from the playout buffer at that moment
plays during the next block; so output block k+1 is the pull made when input block k was sent,
which is the one-block output latency of a real device with no extra buffering.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from websockets.exceptions import ConnectionClosed

from assistant.backends import BACKENDS
from assistant.client import BARGE_IN_POLICIES, ClientError, NativeClient, ServerEvent, describe_connect_error
from assistant.engine import FRAME_MS, SAMPLE_RATE_HZ
from assistant.playout import PlayoutBuffer
from audio.pcm import FrameChunker
from audio.resample import SUPPORTED_RATES, StreamResampler
from audio.vad import StreamingVad, VadConfig

DEFAULT_SERVER = "ws://127.0.0.1:8998/ws"
POSITION_INTERVAL_S = 0.15  # playback.position cadence: the protocol asks for ~100-200 ms
UI_INTERVAL_S = 0.1
LOCAL_MAX_QUEUED_FRAMES = 3  # local engine slower than real time: drop input beyond this backlog
LOCAL_HANGOVER_FRAMES = 3  # quiet frames that end a stretch of assistant speech (pauses between words do not)


class TalkError(Exception):
    """A failure the user can act on; the message says what went wrong and what to do."""


# -- arguments -------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "With --input-file/--output-file, output sample i is what the listener hears while input sample i "
        "is being spoken (one device block of output latency, as on a real device); the output has the "
        "input's rate and length plus --tail-seconds."
    )
    conn = parser.add_argument_group("server")
    conn.add_argument("--server", default=DEFAULT_SERVER, help=f"native websocket URL (default {DEFAULT_SERVER})")
    conn.add_argument(
        "--token",
        default=os.environ.get("ASSISTANT_AUTH_TOKEN"),
        help="auth token for a server run with --auth-token (default $ASSISTANT_AUTH_TOKEN)",
    )
    conn.add_argument(
        "--barge-in",
        choices=BARGE_IN_POLICIES,
        help="interruption policy sent in session.start (default: the server's)",
    )
    conn.add_argument(
        "--captions",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ask the server for captions of what you say (user.transcript; default on)",
    )
    dev = parser.add_argument_group("audio devices")
    dev.add_argument("--input-device", help="microphone: index or part of the name (see --list-devices)")
    dev.add_argument("--output-device", help="headphones: index or part of the name (see --list-devices)")
    dev.add_argument("--list-devices", action="store_true", help="list the sound devices and exit")
    dev.add_argument(
        "--sample-rate",
        type=int,
        choices=SUPPORTED_RATES,
        help="device rate (default: the input device's native rate when supported)",
    )
    dev.add_argument("--block-ms", type=float, default=20.0, help="device block size in ms, 5-40 (default 20)")
    dev.add_argument(
        "--buffer-ms",
        type=float,
        default=120.0,
        help="playout prebuffer in ms: audio queued before playback starts, absorbs jitter (default 120)",
    )
    files = parser.add_argument_group("files instead of devices (headless, regression tests)")
    files.add_argument("--input-file", type=Path, help="WAV played to the assistant in real time instead of the mic")
    files.add_argument(
        "--output-file",
        type=Path,
        help="WAV of what the listener would have heard, sample-aligned with --input-file",
    )
    files.add_argument(
        "--tail-seconds",
        type=float,
        default=5.0,
        help="silence sent after the input file so the reply can finish (default 5)",
    )
    local = parser.add_argument_group("local engine (no server)")
    local.add_argument("--local", action="store_true", help="run the engine in this process, for one user")
    local.add_argument("--backend", default="moshi", choices=BACKENDS, help="engine backend with --local (default moshi)")
    local.add_argument("--model", help="model with --local: checkpoint dir or Hugging Face repo id")
    local.add_argument("--device", help="torch device with --local (default: cuda when available)")
    local.add_argument("--dtype", help="torch dtype with --local (e.g. bfloat16)")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="print plain lines instead of the live view (automatic when stdout is not a terminal)",
    )


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse inconsistent options with a message that names the fix."""
    if (args.input_file is None) != (args.output_file is None):
        raise TalkError("--input-file and --output-file go together (headless mode replaces both devices)")
    if args.input_file is not None:
        if args.input_device or args.output_device:
            raise TalkError("--input-device/--output-device do not apply with --input-file/--output-file")
        if not args.input_file.is_file():
            raise TalkError(f"input file {args.input_file} does not exist")
        if not args.output_file.parent.is_dir():
            raise TalkError(f"output folder {args.output_file.parent} does not exist")
    if not (math.isfinite(args.tail_seconds) and 0 <= args.tail_seconds <= 600):
        raise TalkError(f"--tail-seconds must be between 0 and 600, got {args.tail_seconds}")
    if not (math.isfinite(args.block_ms) and 5 <= args.block_ms <= 40):
        raise TalkError(f"--block-ms must be between 5 and 40 ms, got {args.block_ms}")
    if not (math.isfinite(args.buffer_ms) and 0 <= args.buffer_ms <= 2000):
        raise TalkError(f"--buffer-ms must be between 0 and 2000 ms, got {args.buffer_ms}")
    if args.local:
        if args.backend == "moshi" and not args.model:
            raise TalkError("--local with the moshi backend needs --model (a checkpoint dir or HF repo id)")


# -- sound devices ---------------------------------------------------------------------------
def load_sounddevice():
    """Import sounddevice, turning a missing PortAudio into a message that names the fix."""
    try:
        return importlib.import_module("sounddevice")
    except OSError as exc:  # sounddevice raises OSError when the PortAudio shared library is absent
        raise TalkError(
            f"cannot use sound devices: {exc}. Install PortAudio (Debian/Ubuntu: sudo apt-get install "
            "libportaudio2; macOS: brew install portaudio), or use --input-file/--output-file"
        ) from exc
    except ImportError as exc:
        raise TalkError(
            "the sounddevice package is missing: pip install sounddevice (or use --input-file/--output-file)"
        ) from exc


def _device_arg(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.strip().isdigit() else value


def find_device(sd, device: str | None, kind: str) -> dict:
    """sounddevice's info dict of the requested (or default) input/output device, or a TalkError."""
    flag = f"--{kind}-device"
    try:
        info = sd.query_devices(_device_arg(device), kind)
    except ValueError as exc:  # no match, several matches, or a bad index
        raise TalkError(
            f"unknown {kind} device {device!r} ({exc}); run `assistant talk --list-devices` to see the names"
        ) from exc
    except sd.PortAudioError as exc:
        what = "microphone" if kind == "input" else "headphones/speaker"
        raise TalkError(
            f"no {kind} device available ({exc}): connect a {what}, pick one with {flag} "
            "(see `assistant talk --list-devices`), or use --input-file/--output-file"
        ) from exc
    channels = info.get(f"max_{kind}_channels", 0)
    if channels < 1:
        raise TalkError(f"device {info['name']!r} has no {kind} channels; pick another with {flag} (see --list-devices)")
    return info


def pick_sample_rate(sd, in_info: dict, out_info: dict, wanted: int | None) -> int:
    """A rate both devices accept: `wanted`, else the mic's native rate, else a common one."""
    native = int(in_info.get("default_samplerate") or 0)
    candidates = [wanted] if wanted else [native, 48000, 44100, 24000, 16000]
    errors = []
    for rate in dict.fromkeys(r for r in candidates if r in SUPPORTED_RATES):
        try:
            pick_channels(sd, in_info, "input", rate)
            pick_channels(sd, out_info, "output", rate)
            return rate
        except TalkError as exc:
            errors.append(f"{rate} Hz: {exc.__cause__ or exc}")
    raise TalkError(
        f"devices {in_info['name']!r} and {out_info['name']!r} share no usable rate ({'; '.join(errors)}); "
        f"pick others with --input-device/--output-device or a rate with --sample-rate"
    )


def pick_channels(sd, info: dict, kind: str, rate: int) -> int:
    """Mono when the device takes it; else its first two channels (some hardware devices open only in stereo)."""
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    error: Exception | None = None
    for channels in dict.fromkeys((1, min(2, int(info[f"max_{kind}_channels"])))):
        try:
            check(device=info["index"], channels=channels, samplerate=rate, dtype="float32")
            return channels
        except (ValueError, sd.PortAudioError) as exc:
            error = exc
    raise TalkError(f"{kind} device {info['name']!r} does not open at {rate} Hz: {error}") from error


def list_devices() -> str:
    sd = load_sounddevice()
    try:
        devices = sd.query_devices()
    except sd.PortAudioError as exc:
        raise TalkError(f"cannot list sound devices: {exc}") from exc
    if len(devices) == 0:
        return "no sound devices found (connect a microphone and headphones, or use --input-file/--output-file)"
    return f"{devices}\n(> default input, < default output; pass an index or part of a name to --input-device)"


class DeviceAudio:
    """Microphone and headphones through sounddevice, in blocks of `block_ms` at one shared rate."""

    def __init__(self, sd, in_info: dict, out_info: dict, sample_rate: int, block_ms: float,
                 in_channels: int = 1, out_channels: int = 1):
        self.sd = sd
        self.in_info = in_info
        self.out_info = out_info
        self.sample_rate = sample_rate
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.block_samples = max(1, round(sample_rate * block_ms / 1000))
        self._streams: list = []
        self.input_overflows = 0

    @classmethod
    def open(cls, args: argparse.Namespace) -> DeviceAudio:
        sd = load_sounddevice()
        in_info = find_device(sd, args.input_device, "input")
        out_info = find_device(sd, args.output_device, "output")
        rate = pick_sample_rate(sd, in_info, out_info, args.sample_rate)
        in_channels = pick_channels(sd, in_info, "input", rate)
        out_channels = pick_channels(sd, out_info, "output", rate)
        return cls(sd, in_info, out_info, rate, args.block_ms, in_channels, out_channels)

    def describe(self) -> str:
        return f"mic {self.in_info['name']!r}, headphones {self.out_info['name']!r}, {self.sample_rate} Hz"

    async def run(self, on_input: Callable[[np.ndarray], None], playout: PlayoutBuffer) -> None:
        """Stream until cancelled: mic blocks go to on_input (on the loop), playout feeds the output."""
        loop = asyncio.get_running_loop()

        mono = np.zeros(self.block_samples, dtype=np.float32)

        def capture(indata, frames, time_info, status):
            if status.input_overflow:
                self.input_overflows += 1
            loop.call_soon_threadsafe(on_input, indata.mean(axis=1, dtype=np.float32))

        def play(outdata, frames, time_info, status):
            block = mono[:frames] if frames <= mono.shape[0] else np.zeros(frames, dtype=np.float32)
            playout.pull(frames, block)
            outdata[:] = block[:, None]  # the same voice in every channel (both ears)

        common = dict(samplerate=self.sample_rate, blocksize=self.block_samples, dtype="float32", latency="low")
        try:
            self._streams = [
                self.sd.OutputStream(device=self.out_info["index"], channels=self.out_channels, callback=play,
                                     **common),
                self.sd.InputStream(device=self.in_info["index"], channels=self.in_channels, callback=capture,
                                    **common),
            ]
            for stream in self._streams:
                stream.start()
        except self.sd.PortAudioError as exc:
            self.close()
            raise TalkError(f"cannot open the sound devices ({self.describe()}): {exc}") from exc
        await asyncio.Event().wait()  # the callbacks do the work until the caller cancels this

    def output_latency_ms(self) -> float:
        """How long a pulled sample waits in the device before it is heard (PortAudio's estimate)."""
        return float(self._streams[0].latency) * 1000 if self._streams else 0.0

    def close(self) -> None:
        for stream in self._streams:
            with contextlib.suppress(Exception):  # a device unplugged mid-session must not block shutdown
                stream.stop()
                stream.close()
        self._streams = []

    def finish(self) -> None:
        self.close()


class FileAudio:
    """WAV files instead of devices, paced by the wall clock (see the module docstring for alignment)."""

    def __init__(self, input_path: Path, output_path: Path, block_ms: float, tail_seconds: float):
        try:
            pcm, rate = sf.read(input_path, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise TalkError(f"input file {input_path} is not a readable audio file: {exc}") from exc
        pcm = pcm.mean(axis=1)
        if rate not in SUPPORTED_RATES:
            # The session declares the file's rate; an unusual one is converted to the model's own.
            pcm = soxr.resample(pcm, rate, SAMPLE_RATE_HZ).astype(np.float32)
            rate = SAMPLE_RATE_HZ
        self.input = pcm
        self.sample_rate = int(rate)
        self.output_path = output_path
        self.block_samples = max(1, round(rate * block_ms / 1000))
        self.total_samples = pcm.shape[0] + round(tail_seconds * rate)
        self.output = np.zeros(self.total_samples, dtype=np.float32)
        self.late_blocks = 0  # ticks that ran more than one block behind the wall clock (busy machine)
        self.clock_samples = 0  # how far the simulated device clock got (less than total after Ctrl-C)

    def describe(self) -> str:
        seconds = self.input.shape[0] / self.sample_rate
        return f"input file ({seconds:.1f} s, {self.sample_rate} Hz) -> {self.output_path}"

    async def run(self, on_input: Callable[[np.ndarray], None], playout: PlayoutBuffer) -> None:
        """Feed the input in real time and record the playout; returns after input + tail."""
        loop = asyncio.get_running_loop()
        block = self.block_samples
        period_s = block / self.sample_rate
        t0 = loop.time()
        pulled = np.zeros(block, dtype=np.float32)
        for start in range(0, self.total_samples, block):
            # Absolute deadlines: a late tick does not push every later one back (no drift).
            delay = t0 + (start + block) / self.sample_rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -period_s:
                self.late_blocks += 1
            chunk = np.zeros(block, dtype=np.float32)
            piece = self.input[start : start + block]
            chunk[: piece.shape[0]] = piece
            on_input(chunk)
            playout.pull(block, pulled)
            # The pulled block plays while the next input block is spoken.
            out_start = start + block
            n = max(0, min(block, self.total_samples - out_start))
            self.output[out_start : out_start + n] = pulled[:n]
            self.clock_samples = start + block

    def output_latency_ms(self) -> float:
        return 0.0  # the simulated device plays a pulled block at once (see the alignment note)

    def close(self) -> None:
        pass

    def finish(self) -> None:
        """Write what was heard (after Ctrl-C: up to where the clock stopped)."""
        sf.write(self.output_path, self.output[: self.clock_samples], self.sample_rate, subtype="PCM_16")


# -- the in-process engine -------------------------------------------------------------------
class LocalConversation:
    """The engine in this process, behind the same interface as NativeClient (one slot).

    Input at the device rate is resampled to 24 kHz and cut into 80 ms frames; each frame runs
    engine.step in a worker thread; output is resampled back and yielded like server audio, with
    assistant.text / assistant.speech_* / stats events on the output timeline. A VAD on the input
    handles barge-in like the server: when the user starts talking over the assistant, playback is
    cleared (barge_in carries the text not yet heard) and, with policy `vad`, the engine is kept
    silent until the user stops.
    """

    def __init__(self, engine, sample_rate: int, barge_in: str = "model"):
        self.engine = engine
        self.sample_rate = sample_rate
        self.barge_in = barge_in
        self.session_id = "local"
        self._to_model = StreamResampler(sample_rate, engine.sample_rate_hz)
        self._to_device = StreamResampler(engine.sample_rate_hz, sample_rate)
        self._chunker = FrameChunker(engine.frame_samples)
        self._vad = StreamingVad(VadConfig(), sample_rate_hz=engine.sample_rate_hz)
        self._frames: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        self._out: asyncio.Queue[ServerEvent | np.ndarray | None] = asyncio.Queue()
        self._slot = engine.free_slot()
        if self._slot is None:
            raise TalkError("the local engine has no free slot")
        engine.open(self._slot)
        self._loop_task = asyncio.get_running_loop().create_task(self._frame_loop())
        self.drops = 0
        self.frames_out = 0
        self.played_ms = 0.0
        self.error: str | None = None  # why the frame loop stopped, if the engine failed
        self._speaking = False  # within a stretch of assistant speech, hangover included
        self._last_voiced_frame = 0
        self._stretch_text: list[tuple[float, str]] = []  # (at_ms, piece) of the assistant's current stretch
        self._step_ms: list[float] = []

    async def send_audio(self, pcm: np.ndarray) -> None:
        for frame in self._chunker.push(self._to_model.process(pcm)):
            if self._frames.qsize() >= LOCAL_MAX_QUEUED_FRAMES:
                self._frames.get_nowait()  # bounded latency beats a growing backlog
                self.drops += 1
            self._frames.put_nowait(frame)

    async def send_position(self, played_ms: float) -> None:
        self.played_ms = played_ms

    def _turn_taking(self, frame: np.ndarray) -> None:
        """Run the VAD on one input frame; on a barge-in, clear playback and maybe silence the engine."""
        for event in self._vad.push(frame):
            if event.type == "speech_started" and self._speaking:
                # Like the server: a piece counts as heard only when its whole frame was played.
                cut = "".join(t for at, t in self._stretch_text if at + FRAME_MS > self.played_ms).strip()
                self._out.put_nowait(ServerEvent("playback.clear", {"reason": "barge_in"}))
                self._out.put_nowait(ServerEvent("barge_in", {"at_ms": event.at_ms, "cut_text": cut}))
                if self.barge_in == "vad":
                    self.engine.force_silence(self._slot, True)
            elif event.type == "speech_stopped" and self.engine.silenced[self._slot]:
                self.engine.force_silence(self._slot, False)

    async def _frame_loop(self) -> None:
        batch = np.zeros((self.engine.batch_size, self.engine.frame_samples), dtype=np.float32)
        last_stats = time.monotonic()
        try:
            while (frame := await self._frames.get()) is not None:
                self._turn_taking(frame)
                batch[self._slot] = frame
                t = time.perf_counter()
                out = await asyncio.to_thread(self.engine.step, batch)
                self._step_ms.append((time.perf_counter() - t) * 1000)
                index = self.frames_out
                self.frames_out += 1
                at_ms = index * FRAME_MS
                if out.speaking[self._slot]:
                    self._last_voiced_frame = index
                    if not self._speaking:
                        self._speaking = True
                        self._stretch_text.clear()
                        self._out.put_nowait(ServerEvent("assistant.speech_started", {"at_ms": at_ms}))
                elif self._speaking and index - self._last_voiced_frame >= LOCAL_HANGOVER_FRAMES:
                    self._speaking = False
                    self._out.put_nowait(ServerEvent("assistant.speech_stopped", {"at_ms": at_ms}))
                if out.text[self._slot]:
                    self._stretch_text.append((at_ms, out.text[self._slot]))
                    self._out.put_nowait(ServerEvent("assistant.text", {"text": out.text[self._slot], "at_ms": at_ms}))
                self._out.put_nowait(self._to_device.process(out.pcm_out[self._slot]))
                if time.monotonic() - last_stats >= 1.0:
                    last_stats = time.monotonic()
                    step_ms = float(np.mean(self._step_ms))
                    self._step_ms.clear()
                    self._out.put_nowait(ServerEvent("stats", {"step_ms": round(step_ms, 2), "drops": self.drops}))
        except Exception as exc:
            # Surface the failure to the receiver and end its stream; the session cannot go on.
            self.error = f"{type(exc).__name__}: {exc}"
            self._out.put_nowait(ServerEvent("error", {"code": "engine", "message": self.error}))
            self._out.put_nowait(None)
            raise

    async def receive(self) -> AsyncIterator[ServerEvent | np.ndarray]:
        while (item := await self._out.get()) is not None:
            yield item

    async def end(self, timeout: float = 2.0) -> None:
        self._frames.put_nowait(None)
        with contextlib.suppress(Exception):  # a failed engine was already reported as an error event
            await asyncio.wait_for(asyncio.shield(self._loop_task), timeout)
        self._loop_task.cancel()
        self.engine.close(self._slot)
        self._out.put_nowait(ServerEvent("session.ended", {"reason": "client"}))
        self._out.put_nowait(None)


def build_local(args: argparse.Namespace, sample_rate: int) -> LocalConversation:
    from assistant.backends import build_engine

    try:
        engine = build_engine(args.backend, model=args.model, batch_size=1, device=args.device, dtype=args.dtype)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise TalkError(f"cannot build the {args.backend} engine: {exc}") from exc
    return LocalConversation(engine, sample_rate, barge_in=args.barge_in or "model")


# -- what the terminal shows (pure) ----------------------------------------------------------
@dataclass
class Turn:
    """One caption line: who spoke and what; for the assistant, `cut` is what was never heard."""

    role: str
    pieces: list[str] = field(default_factory=list)
    cut: str = ""

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def drop_cut_overlap(self) -> None:
        """Remove trailing pieces that the cut text repeats (heard in part, so the server counts them cut)."""
        cut = self.cut.strip()
        for k in range(len(self.pieces), 0, -1):
            tail = "".join(self.pieces[-k:]).strip()
            if tail and cut.startswith(tail):
                del self.pieces[-k:]
                return


@dataclass
class TalkView:
    """Conversation state for display, fed with server events; knows nothing about terminals.

    Assistant text is revealed as it is played: a piece tagged at_ms (output timeline) shows once
    the playout's stream position reaches at_ms. `lines` collects plain-text lines for output
    without a terminal.
    """

    state: str = "listening"  # listening | speaking | interrupted
    turns: list[Turn] = field(default_factory=list)
    mic_db: float = -120.0
    stats: dict[str, Any] = field(default_factory=dict)
    queued_ms: float = 0.0
    underruns: int = 0
    lines: list[str] = field(default_factory=list)
    _pending: list[tuple[float, str]] = field(default_factory=list)
    _speaking_turn: Turn | None = None
    _closing: bool = False  # the assistant stopped; its turn ends when its pending text is heard
    _last_gap: Any = None

    def on_mic(self, block: np.ndarray) -> None:
        rms = float(np.sqrt(np.mean(np.square(block, dtype=np.float64)))) if block.size else 0.0
        self.mic_db = 20 * math.log10(max(rms, 1e-6))

    def on_event(self, event: ServerEvent) -> None:
        kind = event.type
        if kind == "assistant.speech_started":
            if self.state != "speaking":
                self.lines.append("-- assistant speaking")
            self.state = "speaking"
            if self._closing:
                self._finish_turn(reveal_all=True)  # a new stretch began before the last one was heard out
            self._open_turn()
        elif kind == "assistant.text":
            self._pending.append((float(event.get("at_ms", 0.0)), str(event.get("text", ""))))
            self._open_turn()
        elif kind == "assistant.speech_stopped":
            if self.state == "speaking":
                self.state = "listening"
            # The stretch's last words are still in the playout buffer: finish once they are heard.
            self._closing = self._speaking_turn is not None
        elif kind == "barge_in":
            self.state = "interrupted"
            cut_text = str(event.get("cut_text") or "").strip()
            self._pending.clear()  # what was not yet heard is dropped with the playout buffer
            turn = self._speaking_turn or (self.turns[-1] if self.turns and self.turns[-1].role == "assistant" else None)
            if turn is not None:
                turn.cut = cut_text
                turn.drop_cut_overlap()
                if self._speaking_turn is None:
                    self._emit_turn(turn)
            self._finish_turn(reveal_all=False)
            if turn is None and cut_text:
                self.lines.append(f"assistant: [cut: {cut_text}]")
            self.lines.append("-- interrupted")
        elif kind == "playback.clear":
            self._pending.clear()  # queued audio was dropped: its text will never be heard
        elif kind == "input.speech_stopped" and self.state == "interrupted":
            self.state = "listening"
        elif kind == "user.transcript":
            text = str(event.get("text", "")).strip()
            if text:
                self.turns.append(Turn("user", [text]))
                self.lines.append(f"user: {text}")
        elif kind == "stats":
            self.stats = dict(event.data)
            gap = self.stats.get("response_gap_ms")
            if gap is not None and gap != self._last_gap:
                self._last_gap = gap
                self.lines.append(f"-- latency: {self.latency_text()}")
        elif kind == "error":
            self.lines.append(f"-- server error {event.get('code')}: {event.get('message')}")
        elif kind == "session.ended":
            self._finish_turn(reveal_all=True)
            self.lines.append(f"-- session ended ({event.get('reason', 'unknown')})")

    def on_played(self, stream_position_ms: float) -> None:
        """Reveal assistant text whose audio has reached the listener."""
        while self._pending and self._pending[0][0] <= stream_position_ms and self._speaking_turn is not None:
            self._speaking_turn.pieces.append(self._pending.pop(0)[1])
        if self._closing and not self._pending:
            self._finish_turn(reveal_all=False)

    def _open_turn(self) -> None:
        if self._speaking_turn is None:
            self._speaking_turn = Turn("assistant")
            self.turns.append(self._speaking_turn)

    def _finish_turn(self, reveal_all: bool) -> None:
        turn = self._speaking_turn
        self._closing = False
        if turn is None:
            return
        if reveal_all:
            turn.pieces.extend(text for _, text in self._pending)
        self._pending.clear()
        self._speaking_turn = None
        self._emit_turn(turn)

    def _emit_turn(self, turn: Turn) -> None:
        text = turn.text.strip()
        cut = f" [cut: {turn.cut}]" if turn.cut else ""
        if text or cut:
            self.lines.append(f"assistant: {text}{cut}")

    def latency_text(self) -> str:
        parts = []
        for key, label in (("response_gap_ms", "response gap"), ("server_overhead_ms", "server"), ("step_ms", "step")):
            value = self.stats.get(key)
            if value is not None:
                parts.append(f"{label} {float(value):.0f} ms")
        parts.append(f"buffer {self.queued_ms:.0f} ms")
        return ", ".join(parts)

    def take_lines(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


class PlainDisplay:
    """Plain lines with a time stamp, for logs and pipes (stdout is not a terminal)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.t0 = time.monotonic()

    def say(self, line: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.2f}s] {line}", file=self.stream, flush=True)

    def update(self, view: TalkView) -> None:
        for line in view.take_lines():
            self.say(line)

    def close(self, view: TalkView) -> None:
        self.update(view)


class LiveDisplay:
    """A rich Live panel: state, mic level, latency and the last captions, redrawn ~10 times a second."""

    STATE_STYLE = {"listening": "green", "speaking": "cyan", "interrupted": "bold red"}

    def __init__(self, title: str):
        from rich.console import Console
        from rich.live import Live

        self.title = title
        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=10, transient=False)
        self.live.start()

    def say(self, line: str) -> None:
        self.live.console.print(line, highlight=False, markup=False)

    def render(self, view: TalkView):
        from rich.panel import Panel
        from rich.text import Text

        level = max(0.0, min(1.0, (view.mic_db + 60) / 60))
        header = Text()
        header.append(f" {view.state.upper():<12}", style=self.STATE_STYLE.get(view.state, ""))
        header.append("mic ")
        header.append("#" * round(level * 20), style="green")
        header.append("." * (20 - round(level * 20)), style="dim")
        header.append(f" {view.mic_db:6.1f} dB\n")
        header.append(f"latency: {view.latency_text()}, underruns {view.underruns}", style="dim")
        body = Text()
        for turn in view.turns[-12:]:
            style = "bold" if turn.role == "user" else ""
            body.append(f"{turn.role:>9}: ", style="dim")
            body.append(turn.text.strip(), style=style)
            if turn.cut:
                body.append(f" {turn.cut}", style="strike red")
            body.append("\n")
        body.append(header)
        return Panel(body, title=self.title, subtitle="Ctrl-C to end")

    def update(self, view: TalkView) -> None:
        view.take_lines()  # the panel shows the same information
        self.live.update(self.render(view))

    def close(self, view: TalkView) -> None:
        lines = view.take_lines()  # the end of session summary stays on screen under the panel
        self.live.update(self.render(view))
        self.live.stop()
        for line in lines:
            if line.startswith("--"):
                self.console.print(line, highlight=False, markup=False)


# -- the session -----------------------------------------------------------------------------
async def talk(args: argparse.Namespace, display_factory: Callable[[str], Any] | None = None) -> int:
    """Run one conversation until the input file ends, the server ends it, or Ctrl-C."""
    audio = FileAudio(args.input_file, args.output_file, args.block_ms, args.tail_seconds) if args.input_file \
        else DeviceAudio.open(args)
    rate = audio.sample_rate
    if args.local:
        conv: Any = build_local(args, rate)
        title = f"assistant talk (local {args.backend}) - {audio.describe()}"
    else:
        try:
            conv = await NativeClient.connect(
                args.server, sample_rate=rate, token=args.token, barge_in=args.barge_in, captions=args.captions
            )
        except ClientError as exc:
            raise TalkError(str(exc)) from exc
        title = f"assistant talk - {args.server} session {conv.session_id} - {audio.describe()}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # From here on Ctrl-C ends the session cleanly (session.end, devices closed, output written).
    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers off the main thread
        loop.add_signal_handler(signal.SIGINT, stop.set)
    if display_factory is None:
        plain = args.plain or not sys.stdout.isatty()
        display_factory = (lambda t: PlainDisplay()) if plain else LiveDisplay
    display = display_factory(title)
    display.say(title)
    playout = PlayoutBuffer(rate, prebuffer_ms=args.buffer_ms, max_ms=max(1000.0, 4 * args.buffer_ms))
    view = TalkView()
    mic: asyncio.Queue[np.ndarray] = asyncio.Queue()

    def heard_ms() -> float:
        # The device still holds its own buffer of what was pulled; only what left it has been heard.
        return max(0.0, playout.stream_position_ms - audio.output_latency_ms())

    def on_input(block: np.ndarray) -> None:
        view.on_mic(block)
        mic.put_nowait(block)

    async def send_mic() -> None:
        while True:
            await conv.send_audio(await mic.get())

    async def receive() -> None:
        async for item in conv.receive():
            if isinstance(item, np.ndarray):
                playout.push(item)
                continue
            view.on_played(heard_ms())  # text heard so far, before a clear moves on
            if item.type == "playback.clear":
                playout.clear()
            view.on_event(item)

    async def report_position() -> None:
        last = -1.0
        while True:
            await asyncio.sleep(POSITION_INTERVAL_S)
            # The position on the output timeline: played audio plus what clears dropped (never heard).
            position_ms = heard_ms()
            if position_ms > last:
                last = position_ms
                await conv.send_position(position_ms)

    async def refresh() -> None:
        while True:
            view.queued_ms = playout.queued_ms
            view.underruns = playout.underruns
            view.on_played(heard_ms())
            display.update(view)
            await asyncio.sleep(UI_INTERVAL_S)

    audio_task = loop.create_task(audio.run(on_input, playout))
    receive_task = loop.create_task(receive())
    helpers = [loop.create_task(coro) for coro in (send_mic(), report_position(), refresh())]
    stop_task = loop.create_task(stop.wait())
    failure: BaseException | None = None
    try:
        # Ends when the file (+ tail) is done, the server ends the session or drops, Ctrl-C, or a failure.
        done, _ = await asyncio.wait(
            [audio_task, receive_task, stop_task, *helpers], return_when=asyncio.FIRST_COMPLETED
        )
        failure = next((t.exception() for t in done if not t.cancelled() and t.exception() is not None), None)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
        audio_task.cancel()  # stop the devices / file clock first: nothing more to send
        await asyncio.gather(audio_task, return_exceptions=True)
        audio.close()
        with contextlib.suppress(Exception):  # the server or engine may already be gone; ending is best effort
            await conv.end()
        if not receive_task.done():
            await asyncio.wait([receive_task], timeout=1.0)  # let session.ended reach the view
        for task in (receive_task, stop_task, *helpers):
            task.cancel()
        await asyncio.gather(receive_task, stop_task, *helpers, return_exceptions=True)
        view.on_played(playout.stream_position_ms)  # the end: all that was played has been heard
        audio.finish()
        summary = f"-- played {playout.played_ms / 1000:.1f} s, underruns {playout.underruns}, clears {playout.clears}"
        if isinstance(audio, FileAudio):
            summary += f", wrote {audio.output_path}"
            if audio.late_blocks:
                summary += f" ({audio.late_blocks} blocks ran late: busy machine)"
        view.lines.append(summary)
        display.close(view)
    if failure is not None:
        if isinstance(failure, ConnectionClosed):
            raise TalkError(describe_connect_error(args.server, failure)) from failure
        if isinstance(failure, ClientError):
            raise TalkError(str(failure)) from failure
        raise failure
    if getattr(conv, "error", None):
        raise TalkError(f"the local {args.backend} engine failed: {conv.error}")
    code = getattr(conv, "close_code", None)
    if receive_task.done() and code not in (None, 1000):
        raise TalkError(f"the server closed the connection (code {code})")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.list_devices:
            print(list_devices())
            return 0
        check_arguments(args)
        return asyncio.run(talk(args))
    except TalkError as exc:
        print(f"assistant talk: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
