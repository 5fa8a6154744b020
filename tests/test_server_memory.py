"""`kill -USR1` on a running server logs a memory report; under tracemalloc it also dumps a
snapshot that loads offline and shows which lines grew between two reports."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import tracemalloc

from server_utils import NativeClient, http_get, start_server
from websockets.asyncio.client import connect


def _wait_for(output: list[str], pattern: str, timeout_s: float = 30.0) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = re.search(pattern, "\n".join(output))
        if m:
            return m
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in the server's output:\n" + "\n".join(output[-40:]))


async def _sessions(server, n: int) -> None:
    for _ in range(n):
        async with connect(server.ws_url) as ws:
            await NativeClient(ws).start()


def test_memory_report_without_tracemalloc(tmp_path):
    with start_server("--captions", "off", env={"TMPDIR": str(tmp_path)}) as server:
        server.proc.send_signal(signal.SIGUSR1)
        m = _wait_for(
            server.output,
            r"memory report 1: RSS ([\d.]+) MB \(([\d.]+) MB after malloc_trim\), (\d+) objects since start-up",
        )
        assert (
            float(m.group(1)) > 10 and 0 < float(m.group(2)) <= float(m.group(1)) + 1 and int(m.group(3)) > 0
        )
        _wait_for(server.output, r"this report took \d+ ms")
        _wait_for(server.output, r"run under PYTHONTRACEMALLOC=1")
        assert http_get(server, "/healthz")[0] == 200
    assert not list(tmp_path.glob("*.tracemalloc"))


def test_memory_report_under_tracemalloc_shows_growth(tmp_path):
    env = {"TMPDIR": str(tmp_path), "PYTHONTRACEMALLOC": "1"}
    with start_server("--captions", "off", env=env) as server:
        server.proc.send_signal(signal.SIGUSR1)
        first = _wait_for(server.output, r"(?s)memory report 1:.*?snapshot (\S+)")
        asyncio.run(_sessions(server, 3))
        server.proc.send_signal(signal.SIGUSR1)
        second = _wait_for(server.output, r"(?s)memory report 2:.*?snapshot (\S+)")
        _wait_for(server.output, r"memory report 2:(.|\n)*grown since the previous report:\n +[+-][\d.]+ KiB")
        assert http_get(server, "/healthz")[0] == 200
    a, b = (tracemalloc.Snapshot.load(m.group(1)) for m in (first, second))
    assert a.traces and b.traces
    # The three sessions ran the server's own code in between: the comparison names its lines.
    grown = [s.traceback[0].filename for s in b.compare_to(a, "filename") if s.count_diff != 0]
    assert any("/server/" in f or "/assistant/" in f or "websockets" in f for f in grown)
