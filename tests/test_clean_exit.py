"""Stopping the server as a person does: Ctrl-C (SIGINT) or SIGTERM prints one line and exits 0,
whether it is serving or still loading its model, with nothing on stderr (no "nanobind: leaked"
wall from resamplers left to the interpreter's teardown); and `make run` then Ctrl-C in a
terminal shows just the lines it should."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parents[1]
SHUTTING_DOWN = "assistant: shutting down, ending live sessions"


class Server:
    """`assistant serve` with stdout and stderr kept apart, read as they come."""

    def __init__(self, *args: str):
        cmd = [sys.executable, "-m", "assistant", "serve", "--host", "127.0.0.1", "--port", "0", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _pump(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, lines: list[str], timeout_s: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r}: {self.stdout} {self.stderr}")

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(30)
        for reader in self.readers:
            reader.join(5)
        return code


async def talk_a_little(port: int) -> None:
    """Two sessions that resample (48 and 16 kHz), so the server holds resamplers when it stops."""
    for rate in (48000, 16000):
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send(json.dumps({"type": "session.start", "sample_rate": rate}))
            await ws.recv()
            for _ in range(10):
                await ws.send(np.zeros(rate // 50, "<i2").tobytes())
                await asyncio.sleep(0.02)
            await ws.send(json.dumps({"type": "session.end"}))
            async for message in ws:
                if isinstance(message, str) and json.loads(message)["type"] == "session.ended":
                    break


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_served_then_stopped_server_says_one_line_and_leaks_nothing(sig):
    server = Server("--backend", "scripted", "--captions", "off")
    port = int(server.wait_for(r"open http://127\.0\.0\.1:(\d+)/", server.stdout).group(1))
    asyncio.run(talk_a_little(port))
    served = len(server.stdout)
    assert server.stop(sig) == 0
    assert server.stdout[served:] == [SHUTTING_DOWN]
    assert server.stderr == [], "nothing on stderr, and no 'leaked' report in it"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopped_while_the_model_loads_it_says_so_in_one_line(sig):
    server = Server("--backend", "moshi", "--model", "tiny", "--device", "cpu", "--no-compile", "-v")
    server.wait_for("loading the moshi engine", server.stderr)
    assert server.stop(sig) == 0
    assert server.stdout == ["assistant: stopped while starting"]
    assert not [line for line in server.stderr if "loading the moshi engine" not in line], server.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_then_ctrl_c_in_a_terminal(tmp_path):
    """`make run ARGS="--backend scripted"` on a terminal, then Ctrl-C: the interrupt goes to the
    whole foreground group (make and the server), as a terminal sends it."""
    venv = tmp_path / "venv"  # stands in for the Makefile's .venv: the python running this test
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    script = venv / "bin" / "assistant"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m assistant "$@"\n')
    script.chmod(0o755)
    (venv / ".installed").touch()  # the Makefile's stamp: nothing to install
    args = "ARGS=--backend scripted --port 0 --captions off"
    pid, fd = pty.fork()
    if pid == 0:  # the child: make on the pseudo-terminal, in its own session (a shell's job)
        try:
            os.chdir(REPO)
            os.execvpe("make", ["make", "--no-print-directory", "run", f"VENV={venv}", args], os.environ)
        finally:
            os._exit(127)
    screen = b""
    deadline = time.monotonic() + 60
    interrupted = False
    while time.monotonic() < deadline:
        if not interrupted and b"open http" in screen:
            time.sleep(0.2)
            os.killpg(pid, signal.SIGINT)  # what the terminal does on Ctrl-C
            interrupted = True
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        screen += data
    _, status = os.waitpid(pid, 0)
    text = screen.decode(errors="replace").replace("\r", "")
    lines = [line for line in text.splitlines() if line.strip()]
    print("\n" + text)
    assert interrupted, text
    after = lines[next(i for i, line in enumerate(lines) if "open http" in line) + 1 :]
    assert after == [SHUTTING_DOWN], f"one line after Ctrl-C: {after}"
    assert len(lines) <= 4, "the command, two start-up lines and one on Ctrl-C"
    assert "leaked" not in text and "Traceback" not in text and "Error" not in text
    assert os.waitstatus_to_exitcode(status) in (0, -signal.SIGINT), "make ends with its server"


@pytest.fixture
def own_handlers():
    """This process's SIGINT, SIGTERM and SIGUSR1 handlers, put back after a test that runs
    `serve` in-process (it sets its own)."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    yield handlers
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def _start_up(monkeypatch, load) -> int:
    """`assistant serve` in this process, its model loaded by `load(config)`; serving fails the test."""
    from assistant.cli import build_parser
    from server import app

    def serve(*_):
        raise AssertionError("it went on to serve")

    monkeypatch.setattr(app, "build_server_engine", load)
    monkeypatch.setattr(app, "serve_forever", serve)
    argv = ["serve", "--backend", "scripted", "--captions", "off"]
    return app.run(build_parser(argv).parse_args(argv))


def test_a_stop_signal_swallowed_while_the_model_loads_still_stops_the_start_up(
    monkeypatch, capsys, own_handlers
):
    """The KeyboardInterrupt a signal raises lands in whatever code the model load is running; a
    library that catches BaseException there must not leave the server to serve after Ctrl-C."""

    def load_swallowing_the_signal(config):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
        except BaseException:
            pass  # what such a library does
        return None

    assert _start_up(monkeypatch, load_swallowing_the_signal) == 0
    assert {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} == {
        sig: own_handlers[sig] for sig in (signal.SIGINT, signal.SIGTERM)
    }, "the process's own handlers are back"
    assert capsys.readouterr().out == "assistant: stopped while starting\n"


def test_a_stop_signal_turned_into_an_error_while_the_model_loads_is_still_a_stop(
    monkeypatch, capsys, own_handlers
):
    def load_turning_the_signal_into_an_error(config):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except BaseException as exc:
            raise RuntimeError("loading was interrupted") from exc

    assert _start_up(monkeypatch, load_turning_the_signal_into_an_error) == 0
    assert capsys.readouterr() == ("assistant: stopped while starting\n", "")
