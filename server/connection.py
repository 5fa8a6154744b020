"""What every websocket protocol adapter (native `/ws`, OpenAI Realtime) does the same way."""

from __future__ import annotations

import asyncio
import contextlib

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from server.session import Outbox


async def close_connection(
    ws: ServerConnection, outbox: Outbox, writer: asyncio.Task, code: int, reason: str, *, flush: bool,
    timeout_s: float,
) -> None:
    """Stop queueing, let what is queued go out (if `flush`), then close with `code` and `reason`.

    Each wait is bounded by `timeout_s`, and a peer that never answers the close is cut off, so a
    stalled client cannot hold a connection (or the shutdown) open.
    """
    outbox.close()
    if flush:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(writer), timeout_s)
    writer.cancel()
    try:
        # close() waits for the peer; a reader that stalled may never answer.
        await asyncio.wait_for(ws.close(code, reason), timeout_s)
    except (TimeoutError, ConnectionClosed, OSError):
        pass
    finally:
        if ws.transport is not None and not ws.transport.is_closing():
            ws.transport.abort()
