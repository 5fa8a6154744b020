"""The HAProxy agent check (`--agent-port`): one line per TCP connection, then close.

A balancer that only counts its own connections cannot know that a process filled up through
another balancer or a direct client, and a websocket it sends there is refused with 1013. The
agent tells HAProxy what the process itself knows, every `agent-inter`: `ready` while a new
session would be taken, `drain` (no new sessions; live ones stay) when full or draining, and
`maxconn:N` so that HAProxy never sends more at once than the process holds. See docs/deploy.md.
"""

from __future__ import annotations

import asyncio
import contextlib


def agent_reply(health: dict) -> str:
    """The agent line for `ctx.healthz()`: e.g. "ready maxconn:8" or "drain maxconn:8"."""
    state = "ready" if health["ready"] else "drain"
    return f"{state} maxconn:{health['max_sessions']}\n"


async def serve_agent(ctx, host: str, port: int) -> asyncio.Server:
    """Listen on host:port and answer each connection with `agent_reply`; HAProxy's request is ignored."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            writer.write(agent_reply(ctx.healthz()).encode())
            await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, host, port)
