"""`assistant talk` without a server: device errors, argument checks, the caption view, file clock."""

from __future__ import annotations

import asyncio
import io
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from assistant import cli
from client import devices, talk
from client.native import ServerEvent
from client.playout import PlayoutBuffer


# -- sound device errors --------------------------------------------------------------------
class FakePortAudioError(Exception):
    pass


def fake_sounddevice(
    devices: list[dict] | None,
    default_input: int | None = 0,
    default_output: int | None = 0,
    stereo_only: tuple[int, ...] = (),
):
    """A stand-in for the sounddevice module that answers query_devices like the real one."""

    def query_devices(device=None, kind=None):
        if device is None:
            index = default_input if kind == "input" else default_output
            if index is None or not devices:
                raise FakePortAudioError("Error querying device -1")
            return devices[index]
        if isinstance(device, int):
            if not 0 <= device < len(devices or []):
                raise ValueError(f"Error querying device {device}")
            return devices[device]
        matches = [
            d for d in devices or [] if device.lower() in d["name"].lower() and d[f"max_{kind}_channels"]
        ]
        if not matches:
            raise ValueError(f"No {kind} device matching {device!r}")
        return matches[0]

    def check_settings(device=None, channels=None, samplerate=None, dtype=None):
        if samplerate not in (44100, 48000):
            raise FakePortAudioError(f"Invalid sample rate {samplerate}")
        if device in stereo_only and channels != 2:
            raise FakePortAudioError("Invalid number of channels")

    return SimpleNamespace(
        PortAudioError=FakePortAudioError,
        query_devices=query_devices,
        check_input_settings=check_settings,
        check_output_settings=check_settings,
    )


HEADSET = [
    {
        "index": 0,
        "name": "USB Headset Mic",
        "max_input_channels": 1,
        "max_output_channels": 0,
        "default_samplerate": 44100.0,
    },
    {
        "index": 1,
        "name": "USB Headset Phones",
        "max_input_channels": 0,
        "max_output_channels": 2,
        "default_samplerate": 48000.0,
    },
]


def use_sounddevice(monkeypatch, module):
    real_import = devices.importlib.import_module

    def import_module(name, *a, **k):
        if name == "sounddevice":
            if isinstance(module, BaseException):
                raise module
            return module
        return real_import(name, *a, **k)

    monkeypatch.setattr(devices.importlib, "import_module", import_module)


def test_missing_portaudio_names_the_package_to_install(monkeypatch, capsys):
    use_sounddevice(monkeypatch, OSError("PortAudio library not found"))
    assert cli.main(["talk"]) == 1
    err = capsys.readouterr().err
    assert "PortAudio library not found" in err and "libportaudio2" in err and "--input-file" in err
    assert cli.main(["talk", "--list-devices"]) == 1
    assert "libportaudio2" in capsys.readouterr().err


def test_unknown_device_name_points_to_list_devices(monkeypatch, capsys):
    use_sounddevice(monkeypatch, fake_sounddevice(HEADSET, default_input=0, default_output=1))
    assert cli.main(["talk", "--input-device", "Blue Yeti"]) == 1
    err = capsys.readouterr().err
    assert "unknown input device 'Blue Yeti'" in err and "--list-devices" in err
    assert cli.main(["talk", "--output-device", "7"]) == 1
    assert "unknown output device '7'" in capsys.readouterr().err


def test_no_audio_devices_says_what_to_connect(monkeypatch, capsys):
    use_sounddevice(monkeypatch, fake_sounddevice([], default_input=None, default_output=None))
    assert cli.main(["talk"]) == 1
    err = capsys.readouterr().err
    assert "no input device available" in err and "microphone" in err and "--input-file" in err


def test_output_only_device_is_refused_as_microphone(monkeypatch, capsys):
    use_sounddevice(monkeypatch, fake_sounddevice(HEADSET, default_input=1, default_output=1))
    assert cli.main(["talk"]) == 1
    assert "has no input channels" in capsys.readouterr().err


def test_each_device_runs_at_its_own_native_rate_unless_one_is_asked_for(monkeypatch):
    sd = fake_sounddevice(HEADSET)
    mic = talk.find_device(sd, "headset mic", "input")
    phones = talk.find_device(sd, "1", "output")
    assert (mic["name"], phones["name"]) == ("USB Headset Mic", "USB Headset Phones")
    assert talk.pick_rates(sd, mic, phones, None) == (44100, 48000), "each at its native rate"
    assert talk.pick_rates(sd, mic, phones, 48000) == (48000, 48000)
    odd = {**mic, "default_samplerate": 22050.0}
    assert talk.pick_rates(sd, odd, phones, None) == (48000, 48000), "else a common rate it opens at"
    with pytest.raises(talk.TalkError, match="--sample-rate"):
        talk.pick_rates(sd, mic, phones, 16000)


# -- arguments ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input-file", "in.wav"], "--input-file and --output-file go together"),
        (["--input-file", "/nonexistent/in.wav", "--output-file", "out.wav"], "does not exist"),
        (["--local", "--backend", "scripted", "--dtype", "bf16"], "only --backend moshi takes --dtype"),
        (["--block-ms", "100"], "--block-ms must be between"),
        (["--no-echo-cancel", "--echo-delay-ms", "50"], "does not go with --no-echo-cancel"),
        (["--echo-delay-ms", "5000"], "--echo-delay-ms must be between"),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(argv, message, capsys):
    assert cli.main(["talk", *argv]) == 1
    assert message in capsys.readouterr().err


def test_unreachable_server_says_to_start_one(tmp_path, capsys, free_port):
    wav = tmp_path / "in.wav"
    sf.write(wav, np.zeros(2400, dtype=np.float32), 24000)
    url = f"ws://127.0.0.1:{free_port}/ws"
    assert (
        cli.main(
            ["talk", "--server", url, "--input-file", str(wav), "--output-file", str(tmp_path / "o.wav")]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert url in err and "assistant serve" in err


@pytest.fixture
def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the caption view -----------------------------------------------------------------------
def ev(type_: str, **data) -> ServerEvent:
    return ServerEvent(type_, data)


def test_assistant_text_appears_as_it_is_played_and_the_line_ends_with_the_stretch():
    view = talk.TalkView()
    view.on_event(ev("assistant.speech_started", at_ms=0))
    for i, piece in enumerate(["Hello", " there", " friend."]):
        view.on_event(ev("assistant.text", text=piece, at_ms=80 * i))
    view.on_event(ev("assistant.speech_stopped", at_ms=240))
    assert view.state == "listening"
    view.on_played(100)
    assert view.turns[-1].text == "Hello there", "only the words whose audio was played are shown"
    assert view.take_lines() == ["-- assistant speaking"]
    view.on_played(170)
    assert view.take_lines() == ["assistant: Hello there friend."]


def test_barge_in_marks_what_was_cut_and_the_state():
    view = talk.TalkView()
    view.on_event(ev("assistant.speech_started", at_ms=0))
    for i, piece in enumerate(["Once", " upon", " a", " time"]):
        view.on_event(ev("assistant.text", text=piece, at_ms=80 * i))
    view.on_played(90)  # "Once" and " upon" reached the listener
    view.on_event(ev("playback.clear", reason="barge_in"))
    view.on_played(10_000)  # the clear moved the stream past the dropped audio: nothing more is revealed
    # The server counts a word cut unless its whole frame was played, so " upon" is in both.
    view.on_event(ev("barge_in", at_ms=5000, cut_text="upon a time"))
    assert view.state == "interrupted"
    assert view.turns[-1].text == "Once" and view.turns[-1].cut == "upon a time"
    assert view.take_lines() == [
        "-- assistant speaking",
        "assistant: Once [cut: upon a time]",
        "-- interrupted",
    ]
    view.on_event(ev("input.speech_stopped", at_ms=6000))
    assert view.state == "listening"


def test_user_transcript_and_latency_lines():
    view = talk.TalkView()
    view.on_event(ev("user.transcript", text=" What is the capital? ", start_ms=0, end_ms=900))
    view.on_event(ev("stats", response_gap_ms=None, server_overhead_ms=None))
    view.on_event(ev("stats", response_gap_ms=612.4, server_overhead_ms=21.0, step_ms=3.2))
    view.on_event(ev("stats", response_gap_ms=612.4, server_overhead_ms=21.0, step_ms=3.1))
    lines = view.take_lines()
    assert lines[0] == "user: What is the capital?"
    assert len(lines) == 2, "a latency line per new turn, not per stats event"
    assert "response gap 612 ms" in lines[1] and "server 21 ms" in lines[1]


def test_mic_level_in_dbfs():
    view = talk.TalkView()
    view.on_mic(np.full(480, 0.1, dtype=np.float32))
    assert view.mic_db == pytest.approx(-20.0, abs=0.01)
    view.on_mic(np.zeros(480, dtype=np.float32))
    assert view.mic_db <= -100


def test_live_panel_shows_state_captions_and_cut_text():
    from rich.console import Console

    view = talk.TalkView()
    view.on_event(ev("user.transcript", text="Tell me a story"))
    view.on_event(ev("assistant.text", text="Once upon", at_ms=0))
    view.on_played(0)
    view.on_event(ev("barge_in", at_ms=100, cut_text="a time"))
    display = talk.LiveDisplay.__new__(talk.LiveDisplay)  # render only: no live terminal needed
    display.title = "t"
    console = Console(file=io.StringIO(), width=100, record=True)
    console.print(display.render(view))
    text = console.export_text()
    assert "INTERRUPTED" in text and "Tell me a story" in text and "Once upon" in text and "a time" in text


# -- the simulated device clock -------------------------------------------------------------
def test_file_clock_is_real_time_and_sample_aligned(tmp_path):
    """An echo (input pushed straight to the playout) comes out exactly one device block later."""
    rate, block_ms = 24000, 20
    rng = np.random.default_rng(0)
    signal = (rng.uniform(-0.5, 0.5, 12_000)).astype(np.float32)  # 0.5 s
    wav = tmp_path / "in.wav"
    sf.write(wav, signal, rate, subtype="FLOAT")
    audio = talk.FileAudio(wav, tmp_path / "out.wav", block_ms=block_ms, tail_seconds=0.1)
    playout = PlayoutBuffer(rate, prebuffer_ms=0)
    start = time.monotonic()
    asyncio.run(audio.run(playout.push, playout))
    elapsed = time.monotonic() - start
    assert elapsed >= 0.59, f"0.6 s of audio must take 0.6 s of wall clock, took {elapsed:.3f}"
    block = rate * block_ms // 1000
    assert audio.output.shape[0] == 12_000 + 2400
    np.testing.assert_array_equal(audio.output[:block], 0)
    np.testing.assert_array_equal(audio.output[block : 12_000 + block], signal)
    audio.finish()
    written, written_rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert written_rate == rate and written.shape == audio.output.shape


# -- the device path with a stand-in sounddevice ---------------------------------------------
class FakeStream:
    """Calls its callback every block from a thread, like PortAudio; input streams feed a ramp."""

    def __init__(
        self,
        kind: str,
        log: list,
        device=None,
        callback=None,
        samplerate=None,
        blocksize=None,
        channels=None,
        dtype=None,
        latency=None,
    ):
        self.kind, self.log, self.callback, self.blocksize, self.channels = (
            kind,
            log,
            callback,
            blocksize,
            channels,
        )
        self.period_s = blocksize / samplerate
        self.thread = None
        self.running = False
        self.played: list[np.ndarray] = []
        log.append((kind, device, samplerate, blocksize, channels))

    def start(self):
        import threading

        self.running = True
        self.thread = threading.Thread(target=self._loop)
        self.thread.start()

    def _loop(self):
        status = SimpleNamespace(input_overflow=False)
        k = 0
        while self.running:
            if self.kind == "input":
                block = np.full((self.blocksize, self.channels), 0.1, dtype=np.float32)
                self.callback(block, self.blocksize, None, status)
            else:
                out = np.full((self.blocksize, self.channels), 9.0, dtype=np.float32)
                self.callback(out, self.blocksize, None, status)
                self.played.append(out.copy())
            k += 1
            time.sleep(self.period_s)

    def stop(self):
        self.running = False
        self.thread.join()
        self.log.append((self.kind, "stopped"))

    def close(self):
        self.log.append((self.kind, "closed"))


async def test_device_audio_feeds_mic_blocks_and_plays_the_buffer(monkeypatch):
    sd = fake_sounddevice(HEADSET, default_input=0, default_output=1, stereo_only=(1,))  # phones: stereo only
    log: list = []
    streams: list[FakeStream] = []

    def make(kind):
        def factory(**kw):
            streams.append(FakeStream(kind, log, **kw))
            return streams[-1]

        return factory

    sd.InputStream, sd.OutputStream = make("input"), make("output")
    args = SimpleNamespace(input_device="mic", output_device="phones", sample_rate=None, block_ms=10.0)
    use_sounddevice(monkeypatch, sd)
    audio = talk.DeviceAudio.open(args)
    assert (audio.sample_rate, audio.block_samples) == (44100, 441), "the mic at its 44.1 kHz"
    assert (audio.output_rate, audio.out_block_samples) == (48000, 480), "the phones at their 48 kHz"
    playout = PlayoutBuffer(audio.output_rate, prebuffer_ms=0)
    playout.push(np.full(480 * 3, 0.5, dtype=np.float32))
    mic: list[np.ndarray] = []
    task = asyncio.create_task(audio.run(mic.append, playout))
    await asyncio.sleep(0.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    audio.close()
    assert ("input", 0, 44100, 441, 1) in log and ("output", 1, 48000, 480, 2) in log
    assert ("input", "closed") in log and ("output", "closed") in log, "devices are closed at the end"
    assert len(mic) >= 5 and all(block.shape == (441,) and (block == 0.1).all() for block in mic)
    played = np.concatenate(next(s for s in streams if s.kind == "output").played)
    assert (played[: 480 * 3] == 0.5).all(), "the output callback plays the buffer, in both ears"
    assert not played[480 * 3 :].any(), "and silence (not stale memory) once it runs dry"


async def test_the_echo_reference_is_exactly_what_the_output_device_plays(monkeypatch):
    sd = fake_sounddevice(HEADSET, default_input=0, default_output=1)
    streams: list[FakeStream] = []

    def make(kind):
        def factory(**kw):
            streams.append(FakeStream(kind, [], **kw))
            return streams[-1]

        return factory

    sd.InputStream, sd.OutputStream = make("input"), make("output")
    use_sounddevice(monkeypatch, sd)
    audio = talk.DeviceAudio.open(
        SimpleNamespace(input_device=None, output_device=None, sample_rate=None, block_ms=10.0)
    )
    reference: list[np.ndarray] = []
    playout = PlayoutBuffer(
        audio.output_rate, prebuffer_ms=0, on_pull=lambda block: reference.append(block.copy())
    )
    playout.push(np.linspace(-0.5, 0.5, 480 * 4, dtype=np.float32))
    task = asyncio.create_task(audio.run(lambda block: None, playout))
    await asyncio.sleep(0.15)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    audio.close()
    played = np.concatenate(next(s for s in streams if s.kind == "output").played)[:, 0]
    assert played.shape[0] >= 480 * 5, "the voice and then silence were played"
    np.testing.assert_array_equal(np.concatenate(reference)[: played.shape[0]], played)


def device_audio(output_name: str, latency_s: float = 0.0) -> talk.DeviceAudio:
    mic = {**HEADSET[0], "default_low_input_latency": latency_s}
    out = {**HEADSET[1], "name": output_name, "default_low_output_latency": latency_s}
    return talk.DeviceAudio(fake_sounddevice(HEADSET), mic, out, 48000, block_ms=20.0)


def test_echo_cancellation_is_on_for_speakers_and_off_for_headphones_and_files(tmp_path):
    auto = SimpleNamespace(echo_cancel=None, echo_delay_ms=None)
    assert talk.open_echo_canceller(auto, device_audio("MacBook Pro Speakers")) is not None
    assert talk.open_echo_canceller(auto, device_audio("Built-in Audio Analog Stereo")) is not None
    for name in ("USB Headset Phones", "Sony WH-1000XM4 Headphones", "Galaxy Buds2", "AirPods Pro"):
        assert talk.open_echo_canceller(auto, device_audio(name)) is None, name
    wav = tmp_path / "in.wav"
    sf.write(wav, np.zeros(2400, dtype=np.float32), 24000)
    files = talk.FileAudio(wav, tmp_path / "out.wav", 20.0, 0.0)
    assert talk.open_echo_canceller(auto, files) is None, "a file has no room to echo in"
    forced_on = SimpleNamespace(echo_cancel=True, echo_delay_ms=None)
    assert talk.open_echo_canceller(forced_on, files) is not None
    assert talk.open_echo_canceller(SimpleNamespace(echo_cancel=False), device_audio("Speakers")) is None


def test_the_echo_delay_comes_from_the_devices_or_the_option():
    auto = SimpleNamespace(echo_cancel=None, echo_delay_ms=None)
    # 2 x 30 ms of reported latency + one 20 ms capture block; the canceller keeps a 30 ms margin.
    assert talk.open_echo_canceller(auto, device_audio("Speakers", latency_s=0.030)).hold_back_ms == 50
    told = SimpleNamespace(echo_cancel=None, echo_delay_ms=300.0)
    assert talk.open_echo_canceller(told, device_audio("Speakers")).hold_back_ms == 270


def test_a_missing_sounddevice_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # as if not installed: importing it fails
    with pytest.raises(talk.TalkError, match=r"talk extra: pip install 'duplex-assistant\[talk\]'"):
        talk.load_sounddevice()


def test_a_missing_echo_canceller_package_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "livekit", None)  # as if not installed: importing it fails
    with pytest.raises(
        talk.TalkError, match=r"livekit package.*talk extra.*duplex-assistant\[talk\].*--no-echo-cancel"
    ):
        talk.open_echo_canceller(
            SimpleNamespace(echo_cancel=None, echo_delay_ms=None), device_audio("Speakers")
        )


# -- the in-process engine ------------------------------------------------------------------
def local_args(tmp_path, seconds: float, rate: int = 16000) -> SimpleNamespace:
    wav = tmp_path / "in.wav"
    sf.write(wav, np.zeros(int(seconds * rate), dtype=np.float32), rate)
    return SimpleNamespace(
        server=None,
        token=None,
        barge_in=None,
        captions=True,
        input_device=None,
        output_device=None,
        sample_rate=None,
        block_ms=20.0,
        buffer_ms=100.0,
        input_file=wav,
        output_file=tmp_path / "out.wav",
        tail_seconds=0.0,
        local=True,
        backend="silence",
        model=None,
        device=None,
        dtype=None,
        compile=None,
        quantize=None,
        context_policy=None,
        _default_model=None,
        plain=True,
    )


class Lines:
    def __init__(self, title):
        self.lines: list[str] = []

    def say(self, line):
        self.lines.append(line)

    def update(self, view):
        self.lines.extend(view.take_lines())

    close = update


async def test_local_engine_runs_80_ms_frames_at_the_device_rate(tmp_path, monkeypatch):
    from assistant.backends import build_engine

    engines, steps = [], []

    def build(backend, **kw):
        engine = build_engine(backend, **kw)
        step = engine.step
        engine.step = lambda pcm: (steps.append(pcm.shape), step(pcm))[1]
        engines.append(engine)
        return engine

    monkeypatch.setattr("assistant.backends.build_engine", build)
    args = local_args(tmp_path, seconds=1.0)
    assert await talk.talk(args, display_factory=Lines) == 0
    out, rate = sf.read(args.output_file, dtype="float32")
    assert rate == 16000 and out.shape[0] == 16000, "output at the file's rate, aligned with the input"
    assert not engines[0].live.any(), "the slot is closed at the end"
    # 1 s of 16 kHz input is 12.5 frames of 24 kHz; the resampler holds a few ms back.
    assert len(steps) in (11, 12) and set(steps) == {(1, 1920)}


async def test_local_engine_failure_ends_the_session_with_its_reason(tmp_path, monkeypatch):
    from assistant.backends.silence import SilenceEngine

    class Failing(SilenceEngine):
        steps = 0

        def _step(self, pcm_in):
            Failing.steps += 1
            if Failing.steps == 3:
                raise RuntimeError("CUDA out of memory")
            return super()._step(pcm_in)

    monkeypatch.setattr("assistant.backends.build_engine", lambda backend, **kw: Failing(1))
    args = local_args(tmp_path, seconds=3.0)
    display: list[Lines] = []
    start = time.monotonic()
    with pytest.raises(talk.TalkError, match="engine failed: RuntimeError: CUDA out of memory"):
        await talk.talk(args, display_factory=lambda t: display.append(Lines(t)) or display[0])
    assert time.monotonic() - start < 2.0, "the session stops at the failure, not at the end of the file"
    assert any("CUDA out of memory" in line for line in display[0].lines)


@pytest.mark.slow  # imports torch + transformers (shared with the Moshi tests in a full run)
async def test_local_with_a_tiny_moshi_checkpoint(tmp_path):
    """--local --backend moshi loads a checkpoint (tiny, random, written here) and talks on a file."""
    torch = pytest.importorskip("torch")
    from moshi_fixtures import random_moshi, tiny_kyutai_kwargs, train_tiny_spm, write_kyutai_checkpoint

    torch.set_num_threads(1)
    kwargs = tiny_kyutai_kwargs()
    checkpoint = write_kyutai_checkpoint(
        tmp_path / "kyutai", random_moshi(kwargs, seed=1), kwargs, train_tiny_spm(tmp_path / "spm")
    )
    args = local_args(tmp_path, seconds=1.2, rate=24000)
    args.backend, args.model, args.device = "moshi", str(checkpoint), "cpu"
    display = Lines("")
    assert await talk.talk(args, display_factory=lambda t: display) == 0
    out, rate = sf.read(args.output_file, dtype="float32")
    assert rate == 24000 and out.shape[0] == int(1.2 * 24000)
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.0
    assert display.lines[-1].startswith("-- played"), display.lines


async def test_local_conversation_that_cannot_take_the_engine_output_ends_with_an_error(
    tmp_path, monkeypatch
):
    """A failure inside the frame loop (not the engine step) still ends talk --local with its reason."""
    from assistant.backends.silence import SilenceEngine

    class Malformed(SilenceEngine):
        def _step(self, pcm_in):
            out = super()._step(pcm_in)
            out.text = []  # no text row for the slot: the conversation cannot take this output
            return out

    monkeypatch.setattr("assistant.backends.build_engine", lambda backend, **kw: Malformed(1))
    args = local_args(tmp_path, seconds=3.0)
    start = time.monotonic()
    with pytest.raises(talk.TalkError, match="engine failed"):
        await talk.talk(args, display_factory=Lines)
    assert time.monotonic() - start < 2.0, "the session stops at the failure, not at the end of the file"


def test_live_display_keeps_the_end_of_the_session_even_if_a_refresh_came_first():
    class Recorder:
        def __init__(self):
            self.printed: list[str] = []

        def print(self, line, **kw):
            self.printed.append(line)

        def update(self, panel):
            pass

        def stop(self):
            pass

    display = talk.LiveDisplay.__new__(talk.LiveDisplay)
    display.title, display.console, display.live, display._ending = "t", Recorder(), Recorder(), []
    view = talk.TalkView()
    view.on_event(ServerEvent("session.ended", {"reason": "client_ended"}))
    display.update(view)  # the refresh task ran between session.ended and the end of talk()
    view.lines.append("-- played 1.0 s")
    display.close(view)
    assert display.console.printed == ["-- session ended (client_ended)", "-- played 1.0 s"]
