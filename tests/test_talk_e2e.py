"""`assistant talk` end to end on files, paced in real time: against `assistant serve --backend
scripted` on a loopback port, and with the scripted engine in-process (`--local`).

Each test runs the real CLI in a subprocess (stdout is a pipe, so it prints plain lines) and
checks what the listener would have heard: the output WAV, sample-aligned with the input.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from busy_box import checked_unless_late

from assistant.backends.scripted import load_reply
from audio.resample import resample

REPO = Path(__file__).resolve().parents[1]
AUDIO = Path(__file__).resolve().parent / "data" / "speech"
WINDOW_MS = 10
SILENT_DB = -70.0  # the scripted engine's silence is digital zero; anything audible is far above this
VOICED_DB = -45.0


def envelope_db(pcm: np.ndarray, rate: int) -> np.ndarray:
    """Energy in dBFS per WINDOW_MS window: float (ceil(n / window),)."""
    window = rate * WINDOW_MS // 1000
    padded = np.zeros(-(-pcm.shape[0] // window) * window, dtype=np.float64)
    padded[: pcm.shape[0]] = pcm
    return 10 * np.log10(np.mean(padded.reshape(-1, window) ** 2, axis=1) + 1e-12)


def span_db(env: np.ndarray, start_ms: float, end_ms: float) -> float:
    """Energy in dBFS of the windows in [start_ms, end_ms)."""
    seg = env[int(start_ms // WINDOW_MS) : int(end_ms // WINDOW_MS)]
    return float(10 * np.log10(np.mean(10 ** (seg / 10))))


def talk(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "assistant", "talk", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def reply_words() -> list[str]:
    return load_reply().text.split()


def test_talk_to_scripted_server_hears_the_reply_and_silence_after_barge_in(tmp_path):
    from server_utils import start_server

    conversation = AUDIO / "conversation.wav"
    out = tmp_path / "out.wav"
    with start_server("--backend", "scripted") as server:

        def run_once() -> subprocess.CompletedProcess:
            # A deep playout buffer (500 ms) so that only playback.clear, not the buffer running dry,
            # can silence the reply within the time allowed below.
            result = talk(
                *("--server", server.ws_url, "--input-file", str(conversation), "--output-file", str(out)),
                *("--tail-seconds", "1", "--buffer-ms", "500"),
            )
            assert result.returncode == 0, result.stdout + result.stderr
            return result

        # The file mic and speaker keep the wall clock; a process starved past a block sends its
        # speech late, and the server rightly hears pauses in it. Such a session is run again.
        checked_unless_late(
            run_once,
            lambda result: check_barge_in(result, conversation, out),
            lambda result: (
                f"{late.group(1)} blocks ran late (the process was starved)"
                if (late := re.search(r"\((\d+) blocks? ran late", result.stdout))
                else None
            ),
        )


def check_barge_in(result: subprocess.CompletedProcess, conversation: Path, out: Path) -> None:
    pcm_in, rate = sf.read(conversation, dtype="float32")
    pcm_out, out_rate = sf.read(out, dtype="float32")
    assert out_rate == rate and pcm_out.shape[0] == pcm_in.shape[0] + rate, "input + 1 s tail, same rate"

    # The input's layout, measured rather than assumed: q1, a 3 s gap, then the interruption.
    env_in, env_out = envelope_db(pcm_in, rate), envelope_db(pcm_out, rate)
    voiced = np.flatnonzero(env_in > VOICED_DB) * WINDOW_MS
    gap_start = voiced[np.flatnonzero(np.diff(voiced) > 2000)[0]]  # end of q1: the only pause over 2 s
    onset = voiced[voiced > gap_start + 2000][0]  # the interruption starts
    turn_end = voiced[-1] + WINDOW_MS
    assert 2500 < onset - gap_start < 4000, "conversation.wav: q1, ~3 s pause, then the interruption"

    # Nothing plays while the user asks; the scripted reply fills the gap after q1.
    assert span_db(env_out, 0, gap_start) < SILENT_DB
    assert span_db(env_out, gap_start + 600, onset) > -35.0, "the reply must be heard in the gap after q1"
    # Barge-in: playback is cleared within ~300 ms of the interruption's onset (400 ms for a busy
    # CI box) and stays silent until the user's turn ends.
    cut = onset + np.flatnonzero(env_out[onset // WINDOW_MS :] < -100)[0] * WINDOW_MS
    assert cut - onset <= 400, f"playback went silent {cut - onset} ms after the interruption began"
    reply_onset = gap_start + np.flatnonzero(env_out[gap_start // WINDOW_MS :] > VOICED_DB)[0] * WINDOW_MS
    print(
        f"\nheard: reply starts {reply_onset - gap_start} ms after q1's last voiced sample "
        f"(500 ms playout buffer included); playback silent {cut - onset} ms after the interruption's onset"
    )
    assert span_db(env_out, onset + 400, turn_end) < SILENT_DB, "audio played over the user's interruption"

    lines = result.stdout.splitlines()
    assert all(line.startswith("[") for line in lines), (
        "without a terminal every line is a plain stamped line"
    )
    assert "\x1b[" not in result.stdout, "no terminal escapes when stdout is not a terminal"
    cut_lines = [line for line in lines if "[cut:" in line]
    assert cut_lines and "-- interrupted" in result.stdout, result.stdout
    heard, cut_text = cut_lines[0].split("assistant: ", 1)[1].split(" [cut: ")
    # What was heard and what was cut are the reply's words, in order, split where playback stopped.
    assert (heard.split() + cut_text.rstrip("]").split())[: len(heard.split())] == reply_words()[
        : len(heard.split())
    ]
    assert heard.split() and cut_text.rstrip("]").split(), "some words heard before the cut and some cut"


def test_ctrl_c_ends_the_session_cleanly(tmp_path):
    from server_utils import start_server

    out = tmp_path / "out.wav"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with start_server("--backend", "scripted") as server:
        cmd = [
            sys.executable,
            "-m",
            "assistant",
            "talk",
            "--server",
            server.ws_url,
            "--input-file",
            str(AUDIO / "conversation.wav"),
            "--output-file",
            str(out),
        ]
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the title line: connected and streaming
        assert "session" in first, first
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stdout + stderr
    assert "Traceback" not in stderr, stderr
    assert "-- session ended (client" in stdout, "session.end was sent and answered"
    heard, rate = sf.read(out, dtype="float32")
    assert 0.8 < heard.shape[0] / rate < 4.0, "what was heard until Ctrl-C is written, no more"


def test_local_scripted_engine_on_a_file_without_a_server(tmp_path):
    """A short exchange, no server: "Hi there.", a pause the reply fills, then an interruption."""
    q1, rate_24k = sf.read(AUDIO / "q1.wav", dtype="float32")
    interrupt, _ = sf.read(AUDIO / "interrupt.wav", dtype="float32")
    hi_there = q1[: int(0.75 * rate_24k)]  # q1 pauses after its first sentence
    pause = np.zeros(int(1.8 * rate_24k), dtype=np.float32)
    pcm_24k = np.concatenate(
        [hi_there, pause, interrupt[: int(1.6 * rate_24k)], np.zeros(rate_24k // 2, np.float32)]
    )
    # A 16 kHz "device": the in-process loop resamples to the model's 24 kHz and back.
    question = tmp_path / "exchange_16k.wav"
    sf.write(question, resample(pcm_24k, 24000, 16000), 16000)
    out = tmp_path / "out.wav"
    result = talk(
        "--local",
        "--backend",
        "scripted",
        "--barge-in",
        "vad",
        "--buffer-ms",
        "500",
        "--input-file",
        str(question),
        "--output-file",
        str(out),
        "--tail-seconds",
        "0",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pcm_in, rate = sf.read(question, dtype="float32")
    pcm_out, out_rate = sf.read(out, dtype="float32")
    assert out_rate == 16000 and pcm_out.shape[0] == pcm_in.shape[0]
    env_in, env_out = envelope_db(pcm_in, rate), envelope_db(pcm_out, rate)
    voiced = np.flatnonzero(env_in > VOICED_DB) * WINDOW_MS
    q_end = voiced[np.flatnonzero(np.diff(voiced) > 1000)[0]] + WINDOW_MS
    onset = voiced[voiced > q_end + 1000][0]
    turn_end = voiced[-1] + WINDOW_MS
    assert span_db(env_out, 0, q_end) < SILENT_DB, "the assistant stays quiet while the user speaks"
    assert span_db(env_out, q_end + 900, onset) > -35.0, "the reply is heard in the pause"
    # The 500 ms playout buffer is cleared at the barge-in, so silence comes well before it could drain.
    assert span_db(env_out, onset + 400, turn_end) < SILENT_DB, "audio played over the interruption"
    lines = result.stdout.splitlines()
    cut_lines = [line for line in lines if "[cut:" in line]
    assert cut_lines and "-- interrupted" in result.stdout, result.stdout
    words = load_reply().text.split()
    heard, cut_text = cut_lines[0].split("assistant: ", 1)[1].rstrip("]").split(" [cut: ")
    assert heard.split() + cut_text.split() == words[: len(heard.split()) + len(cut_text.split())]
    assert "clears 1" in result.stdout


def test_live_view_in_a_terminal_and_ctrl_c(tmp_path):
    """On a terminal the rich live panel shows state, mic level and captions; Ctrl-C ends cleanly."""
    import pty
    import re

    out = tmp_path / "out.wav"
    cmd = [
        sys.executable,
        "-m",
        "assistant",
        "talk",
        "--local",
        "--backend",
        "scripted",
        "--input-file",
        str(AUDIO / "conversation.wav"),
        "--output-file",
        str(out),
    ]
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout is the pseudo-terminal
        try:
            os.chdir(REPO)
            os.execve(sys.executable, cmd, {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"})
        finally:
            os._exit(127)  # never fall back into pytest in the forked child
    screen = b""
    start = time.monotonic()
    interrupted = False
    while True:
        if not interrupted and b"SPEAKING" in screen:
            os.kill(pid, signal.SIGINT)  # while the assistant is talking
            interrupted = True
        if time.monotonic() - start > 60:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("talk did not end after Ctrl-C")
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        screen += data
    _, status = os.waitpid(pid, 0)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))
    assert interrupted, text[-2000:]
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    assert "LISTENING" in text and "SPEAKING" in text and "mic " in text and " dB" in text
    assert "assistant: Sure" in text, "the reply's caption appears while it plays"
    assert "-- session ended (client_ended)" in text and "Traceback" not in text
    assert out.is_file()
