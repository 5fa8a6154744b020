"""What `assistant talk` plays and what the server hears, compared with what was sent, at the
rates sound devices really run at.

`talk --input-file --output-file` stands in for a mic and a speaker at `--sample-rate` (24, 44.1
and 48 kHz), over PCM16 and Opus, against a real server that records what it sent and what the
model heard (`--record`). The output file must be the server's audio at the device's rate: the
reply's voiced span as long as sent (within 3 %) and one lag matching all of it (correlation
> 0.9), which a wrong rate (other speed and pitch) or a dropped stretch cannot pass; the question
must reach the model at its own speed and pitch, matched a quarter second at a time (the server
may pad late input and trim piled-up silence, which moves the pauses and so the voiced span).
A mic and a speaker at different rates (44.1 kHz in, 48 kHz out) go the same way in-process.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from busy_box import checked_unless_late
from listening_utils import compare, recorded_session, window_correlations
from server_utils import start_server

from client import talk
from client.devices import FileAudio

REPO = Path(__file__).resolve().parents[1]
QUESTION_WAV = REPO / "tests" / "data" / "speech" / "q1.wav"
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not QUESTION_WAV.exists(), reason=f"test speech {QUESTION_WAV} is absent"),
]
LEAD_S, TAIL_S = 0.5, 7.0  # the reply (about 4.2 s) starts well within a second of the question's end
BUFFER_MS = 500


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    record = tmp_path_factory.mktemp("record")
    with start_server("--backend", "scripted", "--record", str(record)) as address:
        address.record_dir = record
        yield address


@pytest.fixture(scope="module")
def question(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The question with silence around it, long enough for the whole reply: nothing interrupts it."""
    q1, rate = sf.read(QUESTION_WAV, dtype="float32")
    pcm = np.concatenate(
        [np.zeros(int(LEAD_S * rate), np.float32), q1, np.zeros(int(TAIL_S * rate), np.float32)]
    )
    path = tmp_path_factory.mktemp("mic") / "question.wav"
    sf.write(path, pcm, rate, subtype="PCM_16")
    return path, q1


def check_listening(label: str, server, session_id: str, out: Path, device_rate: int, q1: np.ndarray) -> None:
    heard_by_model, sent, record_rate = recorded_session(server.record_dir, session_id)
    played, out_rate = sf.read(out, dtype="float32")
    assert out_rate == device_rate, f"the output is written at the speaker's rate, {device_rate} Hz"
    playback = compare(played, out_rate, sent, record_rate)
    capture = compare(heard_by_model, record_rate, q1, 24000)
    windows = window_correlations(heard_by_model, record_rate, q1, 24000)
    matched = float(np.mean(windows > 0.9))
    print(
        f"\n{label}: played: {playback}; model heard: {capture}, {matched:.0%} of {len(windows)} windows match"
    )
    assert abs(playback.duration_ratio - 1) <= 0.03, playback
    assert playback.correlation > 0.9, playback
    assert matched >= 0.8, np.round(windows, 3)


def listened(label: str, server, q1: np.ndarray, run_once) -> None:
    """`check_listening` on `run_once()` -> (session id, output file, device rate, blocks that ran late).
    The simulated speaker plays by the wall clock: when the whole process was starved (a busy
    machine), it plays on time what had not yet been taken off the network, as a real sound card
    would. Such a session is run again, at most three times; one whose clock kept time must
    pass at once, and the checks are never relaxed."""
    checked_unless_late(
        run_once,
        lambda run: check_listening(label, server, run[0], run[1], run[2], q1),
        lambda run: f"{run[3]} blocks ran late (the process was starved)" if run[3] else None,
    )


# Each format at the wire's own 24 kHz and at a rate it is resampled to (by the server for PCM16, by
# the client around Opus's 24 kHz on the wire); 48 kHz out again in the mixed-rate test below.
@pytest.mark.parametrize(
    ("audio_format", "device_rate"), [("pcm16", 24000), ("pcm16", 48000), ("opus", 24000), ("opus", 44100)]
)
def test_the_output_file_is_what_the_server_sent_at_the_device_rate(
    server, question, audio_format, device_rate, tmp_path
):
    path, q1 = question

    def run_once():
        out = tmp_path / "heard.wav"
        cmd = [
            sys.executable,
            "-m",
            "assistant",
            "talk",
            *("--server", server.ws_url, "--input-file", str(path)),
        ]
        cmd += ["--output-file", str(out), "--tail-seconds", "0", "--sample-rate", str(device_rate)]
        # A deep playout buffer: on a busy machine a late block must not leave a gap (an underrun
        # breaks the single-lag match below just as a wrong rate does).
        cmd += ["--audio-format", audio_format, "--no-captions", "--buffer-ms", str(BUFFER_MS)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, result.stdout + result.stderr
        title, summary = result.stdout.splitlines()[0], result.stdout.splitlines()[-1]
        assert f"{device_rate} Hz" in title, title
        print(summary)
        late = re.search(r"\((\d+) blocks? ran late", summary)
        session_id = re.search(r"session (sess_\w+)", title).group(1)
        return session_id, out, device_rate, int(late.group(1)) if late else 0

    listened(f"{audio_format} @ {device_rate} Hz", server, q1, run_once)


class Lines:
    """A display that keeps what it would print."""

    def __init__(self):
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)

    def update(self, view) -> None:
        self.lines += view.take_lines()

    def close(self, view) -> None:
        self.update(view)


def test_a_mic_and_a_speaker_at_different_rates(server, question, tmp_path):
    """A 44.1 kHz mic beside 48 kHz headphones: each runs at its own rate, the speaker gets the
    server's audio resampled to 48 kHz (not the mic's rate played at 48 kHz, too fast and high)."""
    path, q1 = question
    out = tmp_path / "heard.wav"
    args = SimpleNamespace(
        local=False,
        server=server.ws_url,
        token=None,
        barge_in=None,
        captions=False,
        audio_format="pcm16",
        buffer_ms=BUFFER_MS,
        echo_cancel=None,
        plain=True,
    )

    def run_once():
        audio = FileAudio(path, out, block_ms=20.0, tail_seconds=0.0, sample_rate=44100, output_rate=48000)
        display = Lines()
        assert asyncio.run(talk.talk(args, display_factory=lambda title: display, audio=audio)) == 0
        assert "44100 Hz -> 48000 Hz" in display.lines[0], display.lines[0]
        print(display.lines[-1])
        session_id = re.search(r"session (sess_\w+)", display.lines[0]).group(1)
        return session_id, out, 48000, audio.late_blocks

    listened("mic 44.1 kHz, speaker 48 kHz", server, q1, run_once)
