"""`assistant bench live` and `assistant bench server --protocol live` run end to end and print their
figures (they never fail on speed; the bounds here only catch a figure that makes no sense)."""

from __future__ import annotations

import re
import subprocess
import sys

from server_utils import REPO


def bench(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "assistant", "bench", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_bench_live_prints_reply_and_barge_in_latency_and_cpu_per_frame():
    out = bench("live", "--rounds", "1")
    reply = re.search(r"end of user speech -> first output delta: p50 (\d+) ms", out)
    stop = re.search(r"interrupt onset -> last assistant audio: +p50 (-?\d+) ms", out)
    server = re.search(r"server CPU per session per 80 ms frame: +([\d.]+) ms", out)
    protocol = re.search(r"Live protocol alone per 80 ms frame: +([\d.]+) ms", out)
    assert reply and stop and server and protocol, out
    assert 500 <= int(reply.group(1)) < 5000  # the 500 ms end of turn is part of it
    assert -200 < int(stop.group(1)) < 2000
    assert 0 < float(protocol.group(1)) < float(server.group(1)) < 80


def test_bench_server_speaks_the_live_protocol():
    out = bench(
        "server",
        "--protocol",
        "live",
        "--backend",
        "scripted",
        "--sessions",
        "1",
        "--seconds",
        "1.5",
        "--warmup",
        "0.5",
    )
    assert "live protocol" in out
    (row,) = [line.split() for line in out.splitlines() if re.match(r"\s+1\s+\d", line)]
    assert 0 < float(row[1]) < 80  # CPU per session per frame
    assert 0 <= float(row[-1]) <= 1.2  # only the assistant's speech is sent: a share of the frames
