"""`assistant talk`: talk to the assistant with a microphone and speakers or headphones (or WAV files).

Remote (default): the microphone streams to a server's native `/ws` endpoint at the mic's
native rate (declared in session.start; the server resamples) and the assistant's voice plays
through a short playout buffer, resampled to the speaker's own rate when it runs at another. `--local` runs an engine in this process instead, through the
same conversation core and frame loop as the server (client/local.py), behind the same playout.

`playback.position` (every 150 ms) carries the playhead on the server's output timeline: samples
played plus those dropped by `playback.clear` or by the buffer bound, less what the sound device
itself still holds; the server compares it with the `at_ms` of its text to know what was heard.

On speakers the mic hears the assistant, which would take its own voice for an interruption; the
echo canceller (audio/echo.py) removes it from the mic audio before it is sent, with every block
handed to the output device as its reference. It is on with sound devices unless the output's
name says headphones: with no echo to learn from, the canceller would take the assistant's level
as possible echo and duck the user who talks over it. Files have no room, so it is off there;
--echo-cancel and --no-echo-cancel decide instead.

Headless: `--input-file in.wav --output-file out.wav` replaces both devices with files paced by
the wall clock, then `--tail-seconds` of silence so the reply can finish; the output file is
sample-aligned with the input (client/devices.py says exactly how).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed

from assistant.engine_args import add_engine_arguments, engine_kwargs
from audio.echo import EchoCanceller
from audio.resample import SUPPORTED_RATES
from client.devices import (
    DeviceAudio,
    FileAudio,
    find_device,
    list_devices,
    load_sounddevice,
    looks_like_headphones,
    pick_channels,
    pick_rates,
)
from client.errors import TalkError
from client.local import build_local
from client.native import BARGE_IN_POLICIES, ClientError, NativeClient, describe_connect_error, image_for_wire
from client.playout import PlayoutBuffer
from client.view import LiveDisplay, PlainDisplay, TalkView, Turn

__all__ = [
    "DeviceAudio",
    "FileAudio",
    "LiveDisplay",
    "PlainDisplay",
    "TalkError",
    "TalkView",
    "Turn",
    "add_arguments",
    "find_device",
    "load_sounddevice",
    "pick_channels",
    "pick_rates",
    "run",
    "talk",
]

DEFAULT_SERVER = "ws://127.0.0.1:8998/ws"
POSITION_INTERVAL_S = 0.15  # playback.position cadence: the protocol asks for ~100-200 ms
UI_INTERVAL_S = 0.1


# -- arguments -------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "With --input-file/--output-file, output sample i is what the listener hears while input sample i "
        "is being spoken (one device block of output latency, as on a real device); the output has the "
        "input's rate and length plus --tail-seconds."
    )
    conn = parser.add_argument_group("server")
    conn.add_argument(
        "--server", default=DEFAULT_SERVER, help=f"native websocket URL (default {DEFAULT_SERVER})"
    )
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
        "--instructions",
        help="who the assistant is, e.g. 'You are a patient teacher.' (PersonaPlex-family models; "
        "default: the server's)",
    )
    conn.add_argument(
        "--voice",
        help="the assistant's voice: a preset of the model (GET /v1/voices, e.g. NATF2) or, with --local, "
        "a .wav / .pt file",
    )
    conn.add_argument(
        "--captions",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ask the server for captions of what you say (user.transcript; default on)",
    )
    conn.add_argument(
        "--image",
        type=Path,
        metavar="FILE",
        help="show the assistant this image (JPEG, PNG or WebP) from the start of the call (a vision model "
        "such as moshika-vis); one too large for a message is sent at 448 x 448, all the model sees",
    )
    conn.add_argument(
        "--audio-format",
        choices=("pcm16", "opus"),
        default="pcm16",
        help="audio on the wire: pcm16 (default, 384 kbit/s) or opus (~24 kbit/s, for slow networks)",
    )
    dev = parser.add_argument_group("audio devices")
    dev.add_argument("--input-device", help="microphone: index or part of the name (see --list-devices)")
    dev.add_argument(
        "--output-device", help="speakers or headphones: index or part of the name (see --list-devices)"
    )
    dev.add_argument("--list-devices", action="store_true", help="list the sound devices and exit")
    dev.add_argument(
        "--sample-rate",
        type=int,
        choices=SUPPORTED_RATES,
        help="run both devices at this rate (default: each at its own native rate when supported); "
        "with files: the rate of the simulated mic and speaker (default: the input file's)",
    )
    dev.add_argument(
        "--block-ms", type=float, default=20.0, help="device block size in ms, 5-40 (default 20)"
    )
    dev.add_argument(
        "--buffer-ms",
        type=float,
        default=120.0,
        help="playout prebuffer in ms: audio queued before playback starts, absorbs jitter (default 120)",
    )
    dev.add_argument(
        "--echo-cancel",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="remove the assistant's voice from the mic, for speakers (default: on with sound devices "
        "unless the output's name says headphones/headset; off with --input-file)",
    )
    dev.add_argument(
        "--echo-delay-ms",
        type=float,
        help="time from audio leaving for the speaker to its echo in the mic (default: the devices' reported "
        "latency); the canceller finds delays up to ~500 ms itself, so this matters past that (Bluetooth)",
    )
    files = parser.add_argument_group("files instead of devices (headless, regression tests)")
    files.add_argument(
        "--input-file", type=Path, help="WAV played to the assistant in real time instead of the mic"
    )
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
    add_engine_arguments(local)
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
    image = getattr(args, "image", None)
    if image is not None and not image.is_file():
        raise TalkError(f"image file {image} does not exist")
    if not (math.isfinite(args.tail_seconds) and 0 <= args.tail_seconds <= 600):
        raise TalkError(f"--tail-seconds must be between 0 and 600, got {args.tail_seconds}")
    if not (math.isfinite(args.block_ms) and 5 <= args.block_ms <= 40):
        raise TalkError(f"--block-ms must be between 5 and 40 ms, got {args.block_ms}")
    if not (math.isfinite(args.buffer_ms) and 0 <= args.buffer_ms <= 2000):
        raise TalkError(f"--buffer-ms must be between 0 and 2000 ms, got {args.buffer_ms}")
    if args.echo_delay_ms is not None:
        if args.echo_cancel is False:
            raise TalkError("--echo-delay-ms tunes the echo canceller; it does not go with --no-echo-cancel")
        if not (math.isfinite(args.echo_delay_ms) and 0 <= args.echo_delay_ms <= 1000):
            raise TalkError(f"--echo-delay-ms must be between 0 and 1000 ms, got {args.echo_delay_ms}")
    if args.local:
        try:
            engine_kwargs(args)
        except ValueError as exc:
            raise TalkError(str(exc)) from exc


def open_echo_canceller(args: argparse.Namespace, audio: Any) -> EchoCanceller | None:
    """The canceller for this session's audio, or None when it is off (see the module docstring)."""
    wanted = getattr(args, "echo_cancel", None)
    if wanted is None:
        wanted = isinstance(audio, DeviceAudio) and not looks_like_headphones(audio.out_info["name"])
    if not wanted:
        return None
    delay_ms = getattr(args, "echo_delay_ms", None)
    if delay_ms is None:
        delay_ms = audio.echo_delay_ms()
    try:
        return EchoCanceller(audio.sample_rate, delay_ms=delay_ms, reference_rate_hz=audio.output_rate)
    except ImportError as exc:
        raise TalkError(f"{exc}; or pass --no-echo-cancel (with headphones)") from exc


async def talk(
    args: argparse.Namespace, display_factory: Callable[[str], Any] | None = None, audio: Any = None
) -> int:
    """Run one conversation until the input file ends, the server ends it, or Ctrl-C.

    audio: the device layer (DeviceAudio, FileAudio or one like them); default: what args name.
    """
    if audio is None:
        audio = (
            FileAudio(args.input_file, args.output_file, args.block_ms, args.tail_seconds, args.sample_rate)
            if args.input_file
            else DeviceAudio.open(args)
        )
    rate = audio.sample_rate
    echo = open_echo_canceller(args, audio)
    sound = audio.describe() + (f", {echo.describe()}" if echo else "")
    if args.local:
        conv: Any = build_local(args, rate)
        title = f"assistant talk (local {args.backend}) - {sound}"
    else:
        try:
            conv = await NativeClient.connect(
                args.server,
                sample_rate=rate,
                token=args.token,
                barge_in=args.barge_in,
                captions=args.captions,
                instructions=getattr(args, "instructions", None),
                voice=getattr(args, "voice", None),
                audio_format=getattr(args, "audio_format", "pcm16"),
            )
        except ClientError as exc:
            raise TalkError(str(exc)) from exc
        title = f"assistant talk - {args.server} session {conv.session_id} - {sound}"
    if getattr(args, "image", None) is not None:
        try:
            await conv.show_image(image_for_wire(args.image.read_bytes()))
        except (ClientError, OSError) as exc:
            await conv.end()
            raise TalkError(f"--image {args.image}: {exc}") from exc
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
    playout = PlayoutBuffer(
        audio.output_rate,
        input_rate_hz=rate,  # the session's audio comes back at the mic's rate
        prebuffer_ms=args.buffer_ms,
        max_ms=max(1000.0, 4 * args.buffer_ms),
        on_pull=echo.played if echo else None,
    )
    view = TalkView()
    ready = getattr(conv, "ready", None)
    if ready is not None:
        view.on_event(ready)  # a server's session.ready came before the view: it says if captions come
    mic: asyncio.Queue[np.ndarray] = asyncio.Queue()

    def heard_ms() -> float:
        # The device still holds its own buffer of what was pulled; only what left it has been heard.
        return max(0.0, playout.stream_position_ms - audio.output_latency_ms())

    def on_input(block: np.ndarray) -> None:
        if echo is not None:
            block = echo.process(block)  # whole 10 ms frames: a block may wait for the next one
            if block.size == 0:
                return
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
        # The server or engine may already be gone; ending is best effort.
        with contextlib.suppress(Exception):
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
                late = audio.late_blocks
                summary += f" ({late} block{'s' if late != 1 else ''} ran late: busy machine)"
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
