"""`--record DIR` on a disk that fills up or cannot be written: the conversation goes on unrecorded.

A live session whose disk fills keeps talking (its recording stops, valid up to the last flush);
a new session starts unrecorded while DIR has less than `--record-min-free-mb` free or cannot be
opened; each such session is one warning in the log and one count of
`assistant_recording_failures_total`; `/healthz` says `recording: "failing"` with the reason while
its status stays `ok`, and `/readyz` follows it only with `--record-required`.

The full disk is a 1 MiB tmpfs when the tests run as root, else a read-only directory (which
cannot fill mid-session: that test then skips).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from server_utils import NativeClient, http_get, start_server
from websockets.asyncio.client import connect

from server.metrics import Metrics
from server.recording import Recorder, Recordings

SILENCE_80MS = np.zeros(1920, dtype="<i2")


@contextlib.contextmanager
def small_disk(tmp_path: Path):
    """(directory, "tmpfs" | "read-only"): a 1 MiB tmpfs when root may mount one, else a directory
    this user cannot write; skips when neither can be had."""
    directory = tmp_path / "disk"
    directory.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)], capture_output=True
        )
        if mounted.returncode == 0:
            try:
                yield directory, "tmpfs"
            finally:
                subprocess.run(["umount", "-l", str(directory)], check=False)
            return
        pytest.skip(f"running as root, but a tmpfs cannot be mounted: {mounted.stderr.decode().strip()}")
    directory.chmod(0o555)
    try:
        yield directory, "read-only"
    finally:
        directory.chmod(0o755)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full."""
    filler = directory / "filler"
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    return filler


def health(address) -> dict:
    return json.loads(http_get(address, "/healthz")[2])


def failures(address, stage: str) -> float:
    body = http_get(address, "/metrics")[2].decode()
    line = f'assistant_recording_failures_total{{stage="{stage}"}} '
    return next((float(row.split()[-1]) for row in body.splitlines() if row.startswith(line)), 0.0)


async def talk(address, seconds: float) -> tuple[NativeClient, dict]:
    """A /ws session streaming `seconds` of silence in real time, left open."""
    ws = await connect(address.ws_url)
    client = NativeClient(ws)
    ready = await client.start(24000)
    await client.stream(np.tile(SILENCE_80MS, int(seconds * 12.5)))
    return client, ready


async def end(client: NativeClient) -> str:
    await client.ws.send(json.dumps({"type": "session.end"}))
    _, ended = await client.wait_for("session.ended")
    await client.wait_closed()
    return ended["reason"]


def warnings_for(address, session_id: str) -> list[str]:
    return [line for line in address.output if "WARNING" in line and session_id in line]


async def test_a_disk_that_fills_mid_session_leaves_the_session_talking(tmp_path):
    with small_disk(tmp_path) as (directory, kind):
        if kind != "tmpfs":
            pytest.skip("filling a disk mid-session needs a tmpfs (root); a read-only directory cannot fill")
        args = ("--backend", "silence", "--record", str(directory), "--record-min-free-mb", "0.5")
        with start_server(*args) as address:
            client, ready = await talk(address, 1.0)
            session_id = ready["session_id"]
            assert health(address)["recording"] == "ok"
            filler = fill(directory)
            frames_when_full = len(client.audio)
            await client.stream(np.tile(SILENCE_80MS, 25))  # 2 s more: several flushes fail
            # The session went on: frames kept coming, and it ends as the client asks.
            assert len(client.audio) - frames_when_full >= 20
            assert not client.of("error")
            assert await end(client) == "client_ended"
            h = health(address)
            assert h["status"] == "ok" and h["ready"] is True
            assert h["recording"] == "failing" and "No space left on device" in h["recording_error"]
            assert failures(address, "write") == 1
            assert len(warnings_for(address, session_id)) == 1
            # What was flushed before the disk filled is a valid recording.
            recorded = sf.info(directory / f"{session_id}.wav")
            assert recorded.channels == 2 and recorded.frames >= 0.4 * 24000

            # A new session on the full disk starts unrecorded (too little free space to open one).
            client, ready = await talk(address, 0.5)
            assert len(client.audio) >= 4 and not client.of("error")
            assert not (directory / f"{ready['session_id']}.wav").exists()
            assert failures(address, "low_disk") == 1 and len(warnings_for(address, ready["session_id"])) == 1
            assert await end(client) == "client_ended"

            # Space freed: the next session is recorded again and /healthz says so.
            filler.unlink()
            client, ready = await talk(address, 0.5)
            assert (directory / f"{ready['session_id']}.wav").exists()
            assert health(address)["recording"] == "ok"
            assert await end(client) == "client_ended"
            assert not any("Traceback" in line for line in address.output)


async def test_a_directory_that_cannot_take_a_recording_still_serves(tmp_path):
    with small_disk(tmp_path) as (directory, kind):
        if kind == "tmpfs":
            fill(directory)
        stage = "low_disk" if kind == "tmpfs" else "open"
        args = ("--backend", "silence", "--record", str(directory / "sessions"), "--record-required")
        with start_server(*args) as address:
            clients = []
            for _ in range(2):
                client, ready = await talk(address, 0.4)
                assert len(client.audio) >= 3 and not client.of("error")
                clients.append(client)
                assert len(warnings_for(address, ready["session_id"])) == 1
            assert failures(address, stage) == 2
            # Still serving (liveness 200); not ready for new sessions, as --record-required asks.
            status, _, body = http_get(address, "/healthz")
            assert status == 200 and json.loads(body)["status"] == "ok"
            assert json.loads(body)["recording"] == "failing"
            status, _, body = http_get(address, "/readyz")
            assert status == 503 and json.loads(body)["ready"] is False
            for client in clients:
                assert await end(client) == "client_ended"
            assert not any("Traceback" in line for line in address.output)


def test_a_recorder_that_fails_stops_once_and_closes_its_files(tmp_path):
    with small_disk(tmp_path) as (directory, kind):
        if kind != "tmpfs":
            pytest.skip("a write failure needs a disk that fills (a tmpfs, as root)")
        failed: list[OSError] = []
        now = [0.0]
        recorder = Recorder(directory, "s", clock=lambda: now[0], on_failure=failed.append)
        frame = np.full(1920, 0.1, np.float32)
        for _ in range(200):  # 16 s of stereo audio: 1.5 MB, more than the disk holds
            recorder.write(frame, frame)
            recorder.log({"event": "x"})
            now[0] += 0.08
        recorder.close()
        recorder.close()
        assert len(failed) == 1 and failed[0].errno == 28 and recorder.closed
        assert recorder._file.closed and recorder._events.closed


def test_recordings_health_comes_back_once_the_directory_is_usable(tmp_path):
    now = [0.0]
    metrics = Metrics()
    recordings = Recordings(tmp_path / "r", min_free_mb=1e12, metrics=metrics, clock=lambda: now[0])
    assert recordings.open("a") is None  # no disk has a terabyte free
    state, reason = recordings.describe()
    assert state == "failing" and "--record-min-free-mb" in reason
    assert metrics.value("recording_failures", "low_disk") == 1
    recordings.min_free_mb = 0.0
    now[0] += 5.0
    assert recordings.describe()[0] == "failing"  # looked at again only every 10 s
    now[0] += 5.0
    assert recordings.describe() == ("ok", None)
    recorder = recordings.open("b")
    assert recorder is not None and (tmp_path / "r" / "b.wav").exists()
    recorder.close()


def test_record_options_are_checked():
    from assistant.cli import build_parser
    from server.config import config_from_args

    def parsed(*argv: str):
        return config_from_args(build_parser(["serve"]).parse_args(["serve", "--backend", "silence", *argv]))

    with pytest.raises(ValueError, match="--record-required needs --record"):
        parsed("--record-required")
    with pytest.raises(ValueError, match="--record-min-free-mb must be >= 0"):
        parsed("--record", "x", "--record-min-free-mb", "-1")
    config = parsed("--record", "x", "--record-min-free-mb", "5", "--record-required")
    assert config.record_min_free_mb == 5.0 and config.record_required
