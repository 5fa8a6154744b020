"""What `assistant bench reliability` runs on loopback: the server under test in its own process
(`Server`: its log in a file, its tracebacks counted, its health, metrics and memory reports read),
and a healthy client streaming a /ws session in real time from another process (`HealthyClient`),
which records every long gap between two audio frames the server sends it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.traffic import FRAME_BYTES, STARTS
from server.memory import rss_mb


# -- the server under test ------------------------------------------------------------------------
class Server:
    """`assistant serve` in its own process, its output in a log file; SIGTERM (then kill) at exit."""

    def __init__(self, args: list[str], log_path: Path, trace_memory: bool = False, start_s: float = 60.0):
        self.log_path = log_path
        self.start_s = start_s  # how long loading may take (a model loads in seconds on a busy CPU)
        self.trace_memory = trace_memory
        self.reports = 0
        self.cmd = [sys.executable, "-m", "assistant", "serve", "--host", "127.0.0.1", "--port", "0", *args]
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> Server:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        if self.trace_memory:
            env["PYTHONTRACEMALLOC"] = "1"
            env["TMPDIR"] = str(self.log_path.parent)  # the snapshots go with the bench's work folder
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_s
        while time.monotonic() < deadline:
            m = re.search(r"open https?://[^:]+:(\d+)/", self.log_path.read_text())
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit(f"bench reliability: the server did not start:\n{self.log_path.read_text()[-2000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()

    def tracebacks(self) -> int:
        return self.log_path.read_text(errors="replace").count("Traceback (most recent call last)")

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    async def memory_report(self) -> dict:
        """SIGUSR1 (server/memory.py): the server's own count of its objects, and its tracemalloc
        snapshot when it runs under --trace-memory."""
        self.reports += 1
        self.proc.send_signal(signal.SIGUSR1)
        pattern = re.compile(
            rf"memory report {self.reports}: RSS ([\d.]+) MB(?: \(([\d.]+) MB after malloc_trim\))?, (\d+) objects"
            r"(?:.*?snapshot (\S+)\n)?.*?this report took (\d+) ms",
            re.S,
        )
        for _ in range(600):
            m = pattern.search(self.log_path.read_text(errors="replace"))
            if m:
                return {
                    "rss_mb": float(m.group(1)),
                    "rss_mb_trimmed": float(m.group(2)) if m.group(2) else None,
                    "objects": int(m.group(3)),
                    "snapshot": m.group(4),
                    "took_ms": int(m.group(5)),
                }
            await asyncio.sleep(0.1)
        return {}

    def health(self, path: str = "/healthz") -> tuple[int, dict]:
        """(HTTP status, JSON) of /healthz or /readyz; (0, {}) when it does not answer."""
        status, body = self.get(path)
        return status, json.loads(body or b"{}") if status else {}

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """One plain HTTP GET: (status, body), (0, b"") when it does not answer."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return 0, b""
        finally:
            conn.close()

    def metric(self, name: str) -> dict[str, float]:
        """The samples of one metric of /metrics by label set (`{"": v}` without labels), e.g.
        metric("assistant_errors_total") -> {'code="rate_limited"': 3.0}."""
        _, body = self.get("/metrics")
        found = {}
        for line in body.decode().splitlines():
            m = re.fullmatch(rf"{re.escape(name)}(?:{{(.*)}})? (\S+)", line)
            if m:
                found[m.group(1) or ""] = float(m.group(2))
        return found

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


# -- the healthy client ------------------------------------------------------------------------------
class HealthyClient:
    """A /ws session streaming silence in real time, in its own process (so the fuzzing in this one
    cannot delay it): records the largest gap between two audio frames from the server."""

    def __init__(self, url: str, out: Path):
        self.url, self.out = url, out
        self.max_gap_ms = 0.0
        self.frames = 0
        self.gaps: list[list[float]] = []

    async def start(self) -> None:
        code = "import sys; from bench.loopback import healthy_main; healthy_main(sys.argv[1], sys.argv[2])"
        self.proc = subprocess.Popen([sys.executable, "-c", code, self.url, str(self.out)])
        deadline = time.monotonic() + 30
        while not self.out.exists() and time.monotonic() < deadline:  # it writes the file once streaming
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # its figures are on disk already (written every second)
            self.proc.wait(5)
        figures = json.loads(self.out.read_text())
        self.max_gap_ms, self.frames, self.gaps = figures["max_gap_ms"], figures["frames"], figures["gaps"]


def healthy_main(url: str, out: str) -> None:
    """The healthy client's process: stream until SIGINT, then write {"frames", "max_gap_ms"} to `out`."""
    figures: dict = {"frames": 0, "max_gap_ms": 0.0, "gaps": []}  # gaps: [unix time, ms] over 120 ms

    async def session() -> None:
        from websockets.asyncio.client import connect

        async with connect(url, max_size=None) as ws:
            await ws.send(json.dumps(STARTS["/ws"]))

            async def send() -> None:
                t0, n = time.monotonic(), 0
                while True:
                    await ws.send(b"\x00" * FRAME_BYTES)
                    n += 1
                    await asyncio.sleep(max(0.0, t0 + n * 0.08 - time.monotonic()))

            sender = asyncio.create_task(send())
            last = None
            try:
                async for message in ws:
                    if isinstance(message, bytes):
                        now = time.monotonic()
                        if last is not None and figures["frames"] > 25:  # past the start-up
                            gap = round((now - last) * 1000, 1)
                            figures["max_gap_ms"] = max(figures["max_gap_ms"], gap)
                            if gap > 120 and len(figures["gaps"]) < 1000:
                                figures["gaps"].append([time.time(), gap])
                        last = now
                        figures["frames"] += 1
                        if figures["frames"] % 12 == 1:  # the first frame tells the bench it streams
                            Path(out).write_text(json.dumps(figures))
            finally:
                sender.cancel()

    try:
        asyncio.run(session())
    except KeyboardInterrupt:
        pass
    finally:
        Path(out).write_text(json.dumps(figures))


def gaps_by_phase(gaps: list[list[float]], phases: list[tuple[str, float]]) -> dict[str, float]:
    """The largest of the healthy client's long gaps (ended at unix time t, lasting ms) in each phase
    of the run, by the phase in which the gap began."""
    worst: dict[str, float] = {}
    for t, ms in gaps:
        began = t - ms / 1000
        name = next((n for n, start in reversed(phases) if start <= began), phases[0][0])
        worst[name] = max(worst.get(name, 0.0), ms)
    return worst
