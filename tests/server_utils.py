"""Start a real `assistant serve` on a free loopback port for tests (reusable by every client test).

    from tests.server_utils import start_server          # or: from server_utils import start_server
    with start_server("--backend", "scripted") as (host, port):
        ... connect to ws://{host}:{port}/ws ...

The server runs as a subprocess (`python -m assistant serve --port 0 ...`), so tests exercise the
real CLI, sockets and signal handling, and can kill it. The yielded address also carries `.proc`
(the Popen) and `.output` (lines printed so far, as a list).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_URL = re.compile(r"open https?://([\w.\-\[\]:]+?):(\d+)/")


class ServerAddress(tuple):
    """(host, port) with the server process attached."""

    proc: subprocess.Popen
    output: list[str]

    def __new__(cls, host: str, port: int, proc: subprocess.Popen, output: list[str]):
        self = super().__new__(cls, (host, port))
        self.proc = proc
        self.output = output
        return self

    @property
    def host(self) -> str:
        return self[0]

    @property
    def port(self) -> int:
        return self[1]

    @property
    def ws_url(self) -> str:
        return f"ws://{self[0]}:{self[1]}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self[0]}:{self[1]}"


@contextlib.contextmanager
def start_server(*args: str, env: dict[str, str] | None = None, startup_timeout_s: float = 30.0,
                 backend: str = "scripted") -> Iterator[ServerAddress]:
    """Run `assistant serve --host 127.0.0.1 --port 0 --backend BACKEND *args` until the block ends.

    `args` may override --backend. On exit the server gets SIGTERM (it drains) and is killed if it
    has not exited within 10 s.
    """
    cmd = [sys.executable, "-m", "assistant", "serve", "--host", "127.0.0.1", "--port", "0"]
    if "--backend" not in args:
        cmd += ["--backend", backend]
    cmd += list(args)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    output: list[str] = []
    found = threading.Event()
    address: list[tuple[str, int]] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line.rstrip("\n"))
            m = _URL.search(line)
            if m and not found.is_set():
                address.append((m.group(1), int(m.group(2))))
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not found.wait(0.05):
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start within {startup_timeout_s} s: {output}")
        if not address:
            raise RuntimeError(f"server exited before listening (rc {proc.poll()}): " + "\n".join(output))
        host, port = address[0]
        yield ServerAddress(host, port, proc, output)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
