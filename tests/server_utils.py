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
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PERSONAPLEX_TINY = (
    REPO / "tests" / "data" / "personaplex_tiny"
)  # a prompted checkpoint (tests/test_personaplex.py)
_URL = re.compile(r"open https?://([\w.\-\[\]:]+?):(\d+)/")


class ServerAddress(tuple):
    """(host, port) with the server process attached."""

    proc: subprocess.Popen
    output: list[str]
    clock_stats_path: Path
    stats_dir: tempfile.TemporaryDirectory | None = None

    def __new__(cls, host: str, port: int, proc: subprocess.Popen, output: list[str], clock_stats_path: Path):
        self = super().__new__(cls, (host, port))
        self.proc = proc
        self.output = output
        self.clock_stats_path = clock_stats_path
        return self

    def clock_stats(self) -> dict:
        """The server's frame-clock figures (`--clock-stats`: tick lateness, skipped ticks, step time,
        underruns), written when it has exited. Whether the server kept its 80 ms grid is read here,
        not from when frames reached a client: on a busy box the client's own process is late too."""
        if self.proc.poll() is None:
            raise RuntimeError("the clock figures are written when the server exits; leave its block first")
        return json.loads(self.clock_stats_path.read_text())

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
def start_server(
    *args: str, env: dict[str, str] | None = None, startup_timeout_s: float = 120.0, backend: str = "scripted"
) -> Iterator[ServerAddress]:
    """Run `assistant serve --host 127.0.0.1 --port 0 --backend BACKEND *args` until the block ends.

    `args` may override --backend; captions are off unless `--captions` is given. A server that
    exits is reported at once; one still loading after `startup_timeout_s` (a busy CPU imports torch
    slowly) is a failure. On exit the server gets SIGTERM (it drains) and is killed if it has not
    exited within 10 s.
    """
    cmd = [sys.executable, "-m", "assistant", "serve", "--host", "127.0.0.1", "--port", "0"]
    if "--backend" not in args:
        cmd += ["--backend", backend]
    if "--captions" not in args:
        cmd += ["--captions", "off"]  # loading a caption model costs seconds of CPU per server
    stats_dir = tempfile.TemporaryDirectory(prefix="clock-stats-")
    clock_stats_path = Path(stats_dir.name) / "clock.json"
    if "--clock-stats" not in args:
        cmd += ["--clock-stats", str(clock_stats_path)]
    else:
        clock_stats_path = Path(args[list(args).index("--clock-stats") + 1])
    cmd += list(args)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
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
        served = ServerAddress(host, port, proc, output, clock_stats_path)
        served.stats_dir = stats_dir  # removed with the address, after the test has read it
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# -- a native-protocol test client ----------------------------------------------------------------


def start_personaplex_server(
    *args: str, max_sessions: int = 1
) -> contextlib.AbstractContextManager[ServerAddress]:
    """`start_server` on the tiny PersonaPlex checkpoint, on CPU, eager (it takes role and voice prompts)."""
    return start_server(
        "--backend",
        "moshi",
        "--model",
        str(PERSONAPLEX_TINY),
        "--device",
        "cpu",
        "--no-compile",
        "--max-sessions",
        str(max_sessions),
        *args,
    )


class NativeClient:
    """Records everything a /ws connection receives, with arrival times (time.monotonic()).

    async with connect(addr.ws_url) as ws:
        client = NativeClient(ws)
        await client.start(24000, barge_in="vad")
        await client.stream(pcm16)          # paced in real time
        client.of("playback.clear")         # [(t, event), ...]
    """

    def __init__(self, ws):
        self.ws = ws
        self.events: list[tuple[float, dict]] = []
        self.audio: list[tuple[float, bytes]] = []
        self.sent: list[tuple[float, int]] = []  # (wall time, samples sent so far) after each chunk
        self.closed = None  # the ConnectionClosed that ended the reader
        self._reader = None

    def _start_reader(self) -> None:
        import asyncio
        import json

        from websockets.exceptions import ConnectionClosed

        async def read() -> None:
            try:
                async for message in self.ws:
                    now = time.monotonic()
                    if isinstance(message, bytes):
                        self.audio.append((now, message))
                    else:
                        self.events.append((now, json.loads(message)))
            except ConnectionClosed as exc:
                self.closed = exc
            else:
                self.closed = True

        self._reader = asyncio.create_task(read())

    async def start(self, sample_rate: int = 24000, **options) -> dict:
        import asyncio
        import json

        await self.ws.send(json.dumps({"type": "session.start", "sample_rate": sample_rate, **options}))
        self._start_reader()
        while not self.of("session.ready"):
            if self.of("error") or self.closed:
                raise RuntimeError(f"session did not start: {self.events} {self.closed}")
            await asyncio.sleep(0.005)
        return self.of("session.ready")[0][1]

    async def stream(
        self, pcm16, sample_rate: int = 24000, chunk_ms: int = 20, t0: float | None = None
    ) -> None:
        """Send int16 samples in chunk_ms pieces, each when its last sample is due by the wall clock."""
        import asyncio

        chunk = sample_rate * chunk_ms // 1000
        t0 = time.monotonic() if t0 is None else t0
        base = self.sent[-1][1] if self.sent else 0
        for start in range(0, len(pcm16), chunk):
            piece = pcm16[start : start + chunk]
            due = t0 + (start + len(piece)) / sample_rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.ws.send(piece.tobytes())
            self.sent.append((time.monotonic(), base + start + len(piece)))

    def sent_time_of(self, sample: int) -> float:
        """When the chunk holding input sample `sample` was sent."""
        for t, end in self.sent:
            if end > sample:
                return t
        raise ValueError(f"sample {sample} was never sent")

    def of(self, kind: str) -> list[tuple[float, dict]]:
        return [(t, e) for t, e in self.events if e["type"] == kind]

    async def wait_for(self, kind: str, timeout: float = 10.0) -> tuple[float, dict]:
        import asyncio

        deadline = time.monotonic() + timeout
        while not self.of(kind):
            if self.closed or time.monotonic() > deadline:
                raise AssertionError(
                    f"no {kind} event within {timeout} s; got {[e['type'] for _, e in self.events]}"
                )
            await asyncio.sleep(0.01)
        return self.of(kind)[0]

    async def wait_closed(self, timeout: float = 10.0):
        import asyncio

        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.closed

    def voiced_audio_times(self, threshold: int = 300) -> list[float]:
        """Arrival times of audio messages that carry the assistant's voice (not silence)."""
        import numpy as np

        return [t for t, b in self.audio if np.abs(np.frombuffer(b, "<i2")).max(initial=0) > threshold]


def http_get(
    address: ServerAddress, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict, bytes]:
    """A plain GET with the path sent exactly as given (no normalisation)."""
    import http.client

    conn = http.client.HTTPConnection(address.host, address.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def metric(address: ServerAddress, name: str) -> float:
    """One counter of the server's /metrics, e.g. `assistant_skipped_ticks_total` (ticks a busy CPU or
    a slow step made the frame clock skip: they sent no frame to anyone)."""
    _, _, body = http_get(address, "/metrics")
    return float(next(line.split()[1] for line in body.decode().splitlines() if line.startswith(name + " ")))
