"""Run one framework driver (tests/frameworks/*.py) in its own virtualenv against
`assistant serve --backend scripted`, through a proxy that records what the framework sends.

    python tests/frameworks/run.py VENV DRIVER [--record tests/data/frameworks/NAME.jsonl] [--serve "ARGS"]

Prints the driver's report and what the server sent (error events by code). With --record, writes
the client's side of the conversation as the replay test reads it (tests/test_frameworks.py):
one JSON object a line, {"t": seconds since the socket opened, "from": "client"|"server", "event":
the message}, audio replaced by its length in bytes (`{"$bytes": N}`), for the first socket; of the
server's events only those a command may answer (not the streamed deltas).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from driver import TOKEN  # noqa: E402
from server_utils import start_server  # noqa: E402

AUDIO_FIELDS = ("audio", "delta")  # base64 audio in client appends and server deltas
# Server events no client command answers: left out of a recording (the replay does not wait on them).
STREAMED = (
    "response.output_audio.delta",
    "response.output_audio_transcript.delta",
    "session.output_audio.delta",
    "session.output_transcript.delta",
    "session.usage.updated",
)


def elide(message: str) -> dict:
    """The event with its audio replaced by the decoded length (recordings stay small)."""
    event = json.loads(message)
    for name in AUDIO_FIELDS:
        value = event.get(name)
        if isinstance(value, str) and event.get("type", "").endswith(("append", "audio.delta")):
            event[name] = {"$bytes": len(base64.b64decode(value))}
    return event


class RecordingProxy:
    """Forwards each websocket to the server as it is (path, query, Authorization) and logs both ways."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.log: list[dict] = []
        self.sockets = 0

    async def handle(self, ws) -> None:
        self.sockets += 1
        first = self.sockets == 1
        headers = {k: v for k, v in ws.request.headers.items() if k.lower() == "authorization"}
        t0 = time.monotonic()
        async with connect(self.upstream + ws.request.path, additional_headers=headers, max_size=None) as up:

            async def pump(src, dst, side: str) -> None:
                async for message in src:
                    if first and isinstance(message, str):
                        self.log.append(
                            {"t": round(time.monotonic() - t0, 3), "from": side, "event": elide(message)}
                        )
                    await dst.send(message)

            tasks = [asyncio.create_task(pump(ws, up, "client")), asyncio.create_task(pump(up, ws, "server"))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()


async def drive(venv: Path, driver: Path, server_port: int) -> tuple[dict, RecordingProxy]:
    proxy = RecordingProxy(f"ws://127.0.0.1:{server_port}")
    async with serve(proxy.handle, "127.0.0.1", 0, max_size=None) as listener:
        port = listener.sockets[0].getsockname()[1]
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [
                str(venv / "bin" / "python"),
                str(driver),
                "--url",
                f"ws://127.0.0.1:{port}",
                "--out",
                out.name,
            ]
            proc = await asyncio.create_subprocess_exec(*cmd)
            if await proc.wait() != 0:
                raise SystemExit(f"{driver.name} failed (exit {proc.returncode})")
            report = json.loads(Path(out.name).read_text())
    return report, proxy


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("venv", type=Path, help="the framework's virtualenv")
    parser.add_argument("driver", type=Path, help="tests/frameworks/<framework>.py")
    parser.add_argument("--record", type=Path, help="write the recorded conversation here")
    parser.add_argument("--serve", default="", help='more `assistant serve` options, e.g. "--captions auto"')
    args = parser.parse_args()
    with start_server("--auth-token", TOKEN, *shlex.split(args.serve)) as server:
        report, proxy = asyncio.run(drive(args.venv, args.driver.resolve(), server.port))
    errors = [
        e["event"]["error"] for e in proxy.log if e["from"] == "server" and e["event"].get("type") == "error"
    ]
    print(
        json.dumps(
            {**report, "reply_audio_s": len(report["reply_audio_s"]), "server_errors": errors}, indent=1
        )
    )
    if args.record:
        kept = [e for e in proxy.log if e["from"] == "client" or e["event"].get("type") not in STREAMED]
        args.record.write_text("".join(json.dumps(e) + "\n" for e in kept))
    return 0


if __name__ == "__main__":
    sys.exit(main())
