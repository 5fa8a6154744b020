"""Idle slot holders, a probe of `assistant bench reliability`: one client address keeps as many
websocket upgrades open as it can and never starts a session, reconnecting whenever the server
closes one, while a healthy client streams and real users start sessions from another address.

Figures: the holders' upgrades, how the server closed them (1013 past the per-address cap, 1000
`start_timeout`), /readyz answers other than 200 meanwhile, real users let in, engine slots taken
beyond the started sessions (the most seen while holding, and once the start timeout has passed),
and holders still open after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

from bench.loopback import Server
from bench.probes import Listener, Phases
from bench.traffic import STARTS

HOLDER_ADDRESS = "127.0.0.2"  # Linux routes all of 127/8 to loopback: another client address
MAX_SESSIONS = 4
START_TIMEOUT_S = 2.0
PER_CLIENT = 8
RETRY_S = 1.0  # a holder refused by the cap tries again after this long


async def hold(server: Server, path: str, stop: asyncio.Event, closes: dict[str, int], open_now: set) -> None:
    """Open upgrades on `path` that never start a session, one after another until `stop`."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    while not stop.is_set():
        try:
            async with connect(server.url(path), local_addr=(HOLDER_ADDRESS, 0), open_timeout=10) as ws:
                open_now.add(ws)
                with contextlib.suppress(ConnectionClosed):
                    async for _ in ws:
                        pass
                open_now.discard(ws)
                how = f"{ws.close_code} {ws.close_reason.split(':')[0][:40]}".strip()
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            how = type(exc).__name__
        closes[how] = closes.get(how, 0) + 1
        if not how.startswith("1000"):  # refused: the cap is full, so wait before asking again
            await asyncio.sleep(RETRY_S)


async def real_user(server: Server) -> bool:
    """A session from the healthy address: True when it started."""
    from websockets.asyncio.client import connect

    try:
        async with connect(server.url("/ws"), open_timeout=10) as ws:
            listener = Listener(ws)
            await ws.send(json.dumps(STARTS["/ws"]))
            ready = await listener.wait_for("session.ready", timeout_s=5) is not None
            await ws.send(json.dumps({"type": "session.end"}))
            await listener.wait_for("session.ended", timeout_s=5)
            return ready
    except OSError:
        return False


def slots_held_idle(server: Server) -> int:
    """Engine slots taken beyond the sessions that started."""
    _, health = server.health()
    return health["max_sessions"] - health["capacity_left"] - health["live_sessions"]


async def idle_holders(workdir: Path, args) -> dict:
    serve = ["--backend", "scripted", "--captions", "off", "--max-sessions", str(MAX_SESSIONS)]
    serve += ["--start-timeout", str(START_TIMEOUT_S), "--max-connections-per-client", str(PER_CLIENT)]
    with Server(serve, workdir / "holders.log") as server:
        async with Phases(server, workdir / "healthy-holders.json") as phases:
            phases.begin("holding")
            stop = asyncio.Event()
            closes: dict[str, int] = {}
            open_now: set = set()
            paths = ("/ws", "/v1/live/sessions")
            holders = [
                asyncio.create_task(hold(server, paths[k % 2], stop, closes, open_now))
                for k in range(args.holders)
            ]
            not_ready, users, let_in, most_idle = 0, 0, 0, 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.holders_seconds:
                status, _ = await asyncio.to_thread(server.get, "/readyz")
                not_ready += status != 200
                most_idle = max(most_idle, await asyncio.to_thread(slots_held_idle, server))
                users += 1
                let_in += await real_user(server)
                await asyncio.sleep(0.2)
            stop.set()
            phases.begin("after the start timeout")
            await asyncio.sleep(START_TIMEOUT_S + 1.0)
            still_open = len(open_now)
            idle_after = slots_held_idle(server)
            for task in holders:
                task.cancel()
            phases.begin("end")
        return {
            "holders": args.holders,
            "seconds": args.holders_seconds,
            "server": f"{MAX_SESSIONS} slots, --start-timeout {START_TIMEOUT_S:g}, "
            f"--max-connections-per-client {PER_CLIENT}",
            "closes": closes,
            "readyz_not_200": not_ready,
            "real_users": f"{let_in}/{users}",
            "idle_slots_while_holding": most_idle,
            "idle_slots_after_timeout": idle_after,
            "holders_open_after_timeout": still_open,
            "largest_gap_ms": phases.largest_gap_ms("holding"),
            "tracebacks": server.tracebacks(),
        }
