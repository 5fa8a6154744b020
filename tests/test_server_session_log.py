"""What an operator reads at `assistant serve -v`: one line when a session opens and one when it
closes, with its id, endpoint, client address, duration, frames, underruns and drops, how it
ended and the websocket close code and reason; and never the auth token, whether it came in the
query string, in the Authorization header, or was a wrong one."""

from __future__ import annotations

import asyncio
import json
import re
import secrets

import numpy as np
import pytest
from server_utils import start_server
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

OPEN = re.compile(r"session (sess_\w+) open: (\S+) from 127\.0\.0\.1:(\d+)$")
CLOSED = re.compile(
    r"session (sess_\w+) closed: (\S+) from 127\.0\.0\.1:(\d+), ([\d.]+) s, (\d+) frames, "
    r"underruns (\d+), drops (\d+), ended (\w+), close (\d+)(?: \((.*)\))?$"
)


async def native_session(url: str) -> str:
    """A 48 kHz session of about a second, ended by the client; returns its id."""
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 48000}))
        ready = json.loads(await ws.recv())
        for _ in range(50):
            await ws.send(np.zeros(960, "<i2").tobytes())
            await asyncio.sleep(0.02)
        await ws.send(json.dumps({"type": "session.end"}))
        async for message in ws:
            if isinstance(message, str) and json.loads(message)["type"] == "session.ended":
                break
        return ready["session_id"]


async def realtime_session(url: str, token: str) -> None:
    """A Realtime session with the token in the header, dropped by the client after half a second."""
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.recv()  # session.created
        await asyncio.sleep(0.5)


@pytest.mark.timeout(90)
def test_one_line_per_session_open_and_close_and_never_the_token():
    token, wrong = f"tok-{secrets.token_hex(8)}", f"bad-{secrets.token_hex(8)}"
    with start_server("--auth-token", token, "-v") as server:
        base = f"ws://{server.host}:{server.port}"

        async def clients() -> str:
            native_id = await native_session(f"{base}/ws?token={token}")
            await realtime_session(f"{base}/v1/realtime", token)
            with pytest.raises(InvalidStatus):
                async with connect(f"{base}/ws?token={wrong}"):
                    pass
            return native_id

        native_id = asyncio.run(clients())
    log = "\n".join(server.output)
    print("\n" + log)
    assert token not in log and wrong not in log, "the auth token never reaches the log"

    opens = [m for line in server.output if (m := OPEN.search(line))]
    closes = [m for line in server.output if (m := CLOSED.search(line))]
    assert [m[2] for m in opens] == ["/ws", "/v1/realtime"], "one line per session opened"
    assert [m[1] for m in closes] == [m[1] for m in opens], "and one per session closed, the same ids"
    native, realtime = closes
    assert native[1] == native_id and native[3] == opens[0][3], "the client's address, port included"
    assert float(native[4]) >= 0.9 and int(native[5]) >= 10, "a second of session: its time and frames"
    assert (native[6], native[7], native[8], native[9]) == ("0", "0", "client_ended", "1000")
    assert (realtime[2], realtime[8], realtime[9]) == ("/v1/realtime", "client_disconnected", "1000")
