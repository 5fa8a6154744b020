"""Where `assistant talk`'s audio comes from and goes to: sound devices through sounddevice
(PortAudio), or WAV files paced by the wall clock for headless runs and tests.

With files, the output is what the listener would have heard, sample-aligned with the input:
output sample i is what the ear hears while input sample i is being spoken. Each simulated
device block of input is sent when it is complete (like a capture callback), and the block
pulled from the playout buffer at that moment plays during the next block; so output block k+1
is the pull made when input block k was sent, which is the one-block output latency of a real
device with no extra buffering. With a speaker at another rate than the mic, "sample i" reads
"the instant of sample i": output sample i * output_rate // input_rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from audio.frames import SAMPLE_RATE_HZ
from audio.resample import SUPPORTED_RATES
from client.errors import TalkError
from client.playout import PlayoutBuffer

# Output device names that say the sound goes to the ears, not into the room.
HEADPHONE_WORDS = ("headphone", "headset", "earphone", "earbud", "airpods", "buds", "hands-free", "handsfree")


def looks_like_headphones(device_name: str) -> bool:
    """Whether an output device's name says headphones; a generic name ("Built-in Audio") does not."""
    name = device_name.lower()
    return any(word in name for word in HEADPHONE_WORDS)


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
            "the sounddevice package is missing; it comes with the talk extra: "
            "pip install 'duplex-assistant[talk]' (or use --input-file/--output-file)"
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
        raise TalkError(
            f"device {info['name']!r} has no {kind} channels; pick another with {flag} (see --list-devices)"
        )
    return info


def pick_rates(sd, in_info: dict, out_info: dict, wanted: int | None) -> tuple[int, int]:
    """(mic rate, speaker rate): both `wanted` when given, else each device's own native rate
    when supported (a 44.1 kHz mic and a 48 kHz headset each run at theirs; the audio between them
    is resampled), else the first common rate the device opens at."""
    return pick_rate(sd, in_info, "input", wanted), pick_rate(sd, out_info, "output", wanted)


def pick_rate(sd, info: dict, kind: str, wanted: int | None) -> int:
    """The rate one device runs at: `wanted`, else its native rate, else a common one it opens at."""
    native = int(info.get("default_samplerate") or 0)
    candidates = [wanted] if wanted else [native, 48000, 44100, 24000, 16000]
    errors = []
    for rate in dict.fromkeys(r for r in candidates if r in SUPPORTED_RATES):
        try:
            pick_channels(sd, info, kind, rate)
            return rate
        except TalkError as exc:
            errors.append(f"{rate} Hz: {exc.__cause__ or exc}")
    tried = "; ".join(errors) or f"its native {native} Hz is not one of {SUPPORTED_RATES}"
    raise TalkError(
        f"{kind} device {info['name']!r} opens at no usable rate ({tried}); pick another with "
        f"--{kind}-device or a rate with --sample-rate"
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
        return (
            "no sound devices found (connect a microphone and headphones, or use --input-file/--output-file)"
        )
    return (
        f"{devices}\n(> default input, < default output; pass an index or part of a name to --input-device)"
    )


class DeviceAudio:
    """Microphone and headphones through sounddevice, in blocks of `block_ms`, each device at its rate.

    sample_rate: the mic's rate, which the session runs at (what is sent and what comes back);
    output_rate: the speaker's, which the playout buffer resamples to.
    """

    def __init__(
        self,
        sd,
        in_info: dict,
        out_info: dict,
        sample_rate: int,
        block_ms: float,
        in_channels: int = 1,
        out_channels: int = 1,
        output_rate: int | None = None,
    ):
        self.sd = sd
        self.in_info = in_info
        self.out_info = out_info
        self.sample_rate = sample_rate
        self.output_rate = output_rate or sample_rate
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.block_samples = max(1, round(sample_rate * block_ms / 1000))
        self.out_block_samples = max(1, round(self.output_rate * block_ms / 1000))
        self._streams: list = []
        self.input_overflows = 0

    @classmethod
    def open(cls, args: argparse.Namespace) -> DeviceAudio:
        sd = load_sounddevice()
        in_info = find_device(sd, args.input_device, "input")
        out_info = find_device(sd, args.output_device, "output")
        in_rate, out_rate = pick_rates(sd, in_info, out_info, args.sample_rate)
        in_channels = pick_channels(sd, in_info, "input", in_rate)
        out_channels = pick_channels(sd, out_info, "output", out_rate)
        return cls(sd, in_info, out_info, in_rate, args.block_ms, in_channels, out_channels, out_rate)

    def describe(self) -> str:
        if self.output_rate == self.sample_rate:
            return f"mic {self.in_info['name']!r}, output {self.out_info['name']!r}, {self.sample_rate} Hz"
        return (
            f"mic {self.in_info['name']!r} at {self.sample_rate} Hz, "
            f"output {self.out_info['name']!r} at {self.output_rate} Hz"
        )

    async def run(self, on_input: Callable[[np.ndarray], None], playout: PlayoutBuffer) -> None:
        """Stream until cancelled: mic blocks go to on_input (on the loop), playout feeds the output."""
        loop = asyncio.get_running_loop()

        mono = np.zeros(self.out_block_samples, dtype=np.float32)

        def capture(indata, frames, time_info, status):
            if status.input_overflow:
                self.input_overflows += 1
            loop.call_soon_threadsafe(on_input, indata.mean(axis=1, dtype=np.float32))

        def play(outdata, frames, time_info, status):
            block = mono[:frames] if frames <= mono.shape[0] else np.zeros(frames, dtype=np.float32)
            playout.pull(frames, block)
            outdata[:] = block[:, None]  # the same voice in every channel (both ears)

        try:
            self._streams = [
                self.sd.OutputStream(
                    device=self.out_info["index"],
                    channels=self.out_channels,
                    callback=play,
                    samplerate=self.output_rate,
                    blocksize=self.out_block_samples,
                    dtype="float32",
                    latency="low",
                ),
                self.sd.InputStream(
                    device=self.in_info["index"],
                    channels=self.in_channels,
                    callback=capture,
                    samplerate=self.sample_rate,
                    blocksize=self.block_samples,
                    dtype="float32",
                    latency="low",
                ),
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

    def echo_delay_ms(self) -> float:
        """From a block pulled for the speaker to its echo reaching on_input, as PortAudio reports the
        devices (the streams open at their low latency) plus one capture block; the air adds ~1 ms."""
        latency_s = self.in_info.get("default_low_input_latency", 0.0) + self.out_info.get(
            "default_low_output_latency", 0.0
        )
        return float(latency_s) * 1000 + self.block_samples * 1000 / self.sample_rate

    def close(self) -> None:
        for stream in self._streams:
            with contextlib.suppress(Exception):  # a device unplugged mid-session must not block shutdown
                stream.stop()
                stream.close()
        self._streams = []

    def finish(self) -> None:
        self.close()


class FileAudio:
    """WAV files instead of devices, paced by the wall clock (see the module docstring for alignment).

    sample_rate: the simulated mic's rate (the input is resampled to it; default: the file's own,
    or 24 kHz for a rate the server does not take); output_rate: the simulated speaker's, at which
    the output file is written (default: sample_rate).
    """

    def __init__(
        self,
        input_path: Path,
        output_path: Path,
        block_ms: float,
        tail_seconds: float,
        sample_rate: int | None = None,
        output_rate: int | None = None,
    ):
        try:
            pcm, rate = sf.read(input_path, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise TalkError(f"input file {input_path} is not a readable audio file: {exc}") from exc
        pcm = pcm.mean(axis=1)
        target = sample_rate or (rate if rate in SUPPORTED_RATES else SAMPLE_RATE_HZ)
        if rate != target:
            pcm = soxr.resample(pcm, rate, target).astype(np.float32)
        self.input = pcm
        self.sample_rate = int(target)
        self.output_rate = int(output_rate or target)
        self.output_path = output_path
        self.block_samples = max(1, round(target * block_ms / 1000))
        self.total_samples = pcm.shape[0] + round(tail_seconds * target)
        self.output = np.zeros(self.output_index(self.total_samples), dtype=np.float32)
        self.late_blocks = 0  # ticks that ran more than one block behind the wall clock (busy machine)
        self.clock_samples = 0  # how far the simulated device clock got (less than total after Ctrl-C)

    def output_index(self, input_sample: int) -> int:
        """The output sample played at the instant of input sample `input_sample` (exact, no drift)."""
        return input_sample * self.output_rate // self.sample_rate

    def describe(self) -> str:
        seconds = self.input.shape[0] / self.sample_rate
        rates = f"{self.sample_rate} Hz" + (
            f" -> {self.output_rate} Hz" if self.output_rate != self.sample_rate else ""
        )
        return f"input file ({seconds:.1f} s, {rates}) -> {self.output_path}"

    async def run(self, on_input: Callable[[np.ndarray], None], playout: PlayoutBuffer) -> None:
        """Feed the input in real time and record the playout; returns after input + tail."""
        loop = asyncio.get_running_loop()
        block = self.block_samples
        period_s = block / self.sample_rate
        t0 = loop.time()
        for start in range(0, self.total_samples, block):
            # Absolute deadlines: a late tick does not push every later one back (no drift).
            delay = t0 + (start + block) / self.sample_rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                # Behind the clock (the process was starved): catch up, but let the network hand over
                # what has already come in between blocks, as a device's own thread would find it.
                await asyncio.sleep(0)
                if delay < -period_s:
                    self.late_blocks += 1
            on_input(self.capture(start, block))
            # The pulled block plays while the next input block is spoken.
            out_start, out_end = self.output_index(start + block), self.output_index(start + 2 * block)
            pulled = playout.pull(out_end - out_start)
            n = max(0, min(out_end, self.output.shape[0]) - out_start)
            self.output[out_start : out_start + n] = pulled[:n]
            self.clock_samples = start + block

    def capture(self, start: int, n: int) -> np.ndarray:
        """What the mic hears over input samples [start, start + n): float32 (n,), zeros past the file."""
        chunk = np.zeros(n, dtype=np.float32)
        piece = self.input[start : start + n]
        chunk[: piece.shape[0]] = piece
        return chunk

    def output_latency_ms(self) -> float:
        return 0.0  # the simulated device plays a pulled block at once (see the alignment note)

    def echo_delay_ms(self) -> float:
        """A pulled block plays at once; an input block is handed over when complete, one block later."""
        return self.block_samples * 1000 / self.sample_rate

    def close(self) -> None:
        pass

    def finish(self) -> None:
        """Write what was heard (after Ctrl-C: up to where the clock stopped)."""
        end = self.output_index(self.clock_samples)
        sf.write(self.output_path, self.output[:end], self.output_rate, subtype="PCM_16")
