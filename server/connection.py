"""What every websocket adapter does the same way, written once.

`Connection` owns one websocket and at most one conversation: the bounded outbox and its writer
task (a stalled reader never blocks the frame clock), the per-connection rate limits (errors at
most once a second, 1008 for a flood), the idle timeout before a client starts its session, the
close sequence (drain, close, abort a silent peer), and the handling of failures (a bug while
handling one message costs that message, not the conversation; anything else closes with 1011).
A protocol adapter (server/native.py, server/realtime.py, server/live.py) subclasses it and only
translates messages and conversation events.
`serve_connection` is the shared entry: take a slot or refuse with 1013, run, clean up.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from assistant.conversation import Conversation
from server.protocol import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    RateLimiter,
)

log = logging.getLogger("assistant.server")


# -- outgoing queue -------------------------------------------------------------------------------


class SlowClient(Exception):
    """The client does not read fast enough; the adapter closes it (1008)."""


class Outbox:
    """A bounded outgoing queue with one writer task, so a stalled reader never blocks the clock.

    `put` never waits. It raises SlowClient once `max_items` are queued or the oldest item has
    waited `max_lag_s`; the adapter then disconnects that client. Transport-agnostic: `send`
    is any coroutine function taking one item.
    """

    def __init__(
        self,
        send: Callable[[Any], Awaitable[None]],
        *,
        max_items: int = 64,
        max_lag_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._send = send
        self.max_items = max_items
        self.max_lag_s = max_lag_s
        self.clock = clock
        self._items: collections.deque[tuple[float, Any]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def lag_s(self) -> float:
        return self.clock() - self._items[0][0] if self._items else 0.0

    def put(self, item: Any) -> None:
        if self._closed:
            return
        if len(self._items) >= self.max_items or self.lag_s() > self.max_lag_s:
            raise SlowClient(
                f"client too slow reading: {len(self._items)} messages ({self.lag_s():.1f} s) queued unsent"
            )
        self._items.append((self.clock(), item))
        self._wakeup.set()

    def close(self) -> None:
        """Stop accepting items; the writer finishes what is queued, then returns."""
        self._closed = True
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            while self._items:
                _, item = self._items[0]
                await self._send(item)
                self._items.popleft()
            if self._closed:
                return
            self._wakeup.clear()
            await self._wakeup.wait()


async def close_connection(
    ws: ServerConnection,
    outbox: Outbox,
    writer: asyncio.Task,
    code: int,
    reason: str,
    *,
    flush: bool,
    timeout_s: float,
) -> None:
    """Stop queueing, let what is queued go out (if `flush`), then close with `code` and `reason`.

    Each wait is bounded by `timeout_s`, and a peer that never answers the close is cut off, so a
    stalled client cannot hold a connection (or the shutdown) open.
    """
    outbox.close()
    if flush:
        # asyncio.wait, not awaiting the writer: a writer that failed keeps its exception to itself.
        # Re-raised here, its traceback would hold this frame, whose locals hold the writer: a
        # reference cycle that keeps the whole connection for the garbage collector to find.
        await asyncio.wait({writer}, timeout=timeout_s)
    writer.cancel()
    try:
        # close() waits for the peer; a reader that stalled may never answer.
        await asyncio.wait_for(ws.close(code, reason), timeout_s)
    except (TimeoutError, ConnectionClosed, OSError):
        pass
    finally:
        if ws.transport is not None and not ws.transport.is_closing():
            ws.transport.abort()


# -- the connection base --------------------------------------------------------------------------


class Connection:
    """One websocket <-> one conversation. Subclasses implement `handle_message` and `encode_error`."""

    protocol_name = "websocket"
    max_internal_errors = 10  # failures in a row before the connection is given up (1011)
    outbox_scale = 1  # messages per frame this protocol sends, relative to one (native: audio + events)
    not_started_code = "not_started"  # the error code for a client that never starts its session

    def __init__(self, ctx, ws: ServerConnection, slot):
        self.ctx = ctx
        self.ws = ws
        self.slot = slot
        self.session: Conversation | None = None
        config = ctx.config
        self.outbox = Outbox(
            ws.send, max_items=config.max_outbox_items * self.outbox_scale, max_lag_s=config.max_send_lag_s
        )
        self.writer = asyncio.create_task(self.outbox.run())
        now = time.monotonic()
        self.limiter = RateLimiter(config.messages_per_s, config.message_burst, now)
        # Refusals drain their own bucket: a client persistently over the rate is closed, one that
        # bursts now and then only gets errors (at most one a second).
        self.flood = RateLimiter(config.messages_per_s / 5, config.flood_close_after, now)
        self.last_rate_error = -1e9
        self.internal_errors = 0  # messages in a row the server failed to handle
        self.closing: asyncio.Task | None = None
        # Set when the conversation is announced (SessionReady, from the frame loop) or the connection
        # closes: until then the client's messages wait unread, so none is handled before the answer
        # that announces its session, and its first audio is the first the model hears.
        self.announced = asyncio.Event()

    # -- what a protocol adapter provides ------------------------------------------------------
    def handle_message(self, message: str | bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def encode_error(self, code: str, message: str, *, server_side: bool = False) -> Any:  # pragma: no cover
        """The protocol's error message for the client (server_side: our failure, not theirs)."""
        raise NotImplementedError

    async def next_message(self) -> str | bytes | None:
        """The next client message; None ends the connection (after it was closed)."""
        if self.session is not None:
            return await self.ws.recv()
        # Before the client starts its session only the idle timeout bounds how long a slot stays taken.
        idle = self.ctx.config.limits.idle_timeout_s
        try:
            return await asyncio.wait_for(self.ws.recv(), idle)
        except TimeoutError:
            self.send_error(self.not_started_code, f"no session.start within {idle:g} s; closing")
            self.close(CLOSE_NORMAL, "idle_timeout", flush=True)
            return None

    # -- sending -------------------------------------------------------------------------------
    def send(self, item: Any) -> None:
        """Queue one message; a client too slow to read is disconnected (1008)."""
        if self.closing:
            return
        try:
            self.outbox.put(item)
        except SlowClient as exc:
            self.ctx.metrics.inc("slow_clients")
            log.warning("disconnecting slow %s client: %s", self.protocol_name, exc)
            self.close(CLOSE_POLICY, str(exc), flush=False)

    def send_error(self, code: str, message: str, *, server_side: bool = False) -> None:
        self.ctx.metrics.inc("errors", label=code)
        self.send(self.encode_error(code, message, server_side=server_side))

    # -- closing -------------------------------------------------------------------------------
    def close(self, code: int, reason: str, *, flush: bool = True) -> None:
        if self.closing is None:
            self.closing = asyncio.create_task(self._close(code, reason, flush))
            self.announced.set()  # the receive loop stops waiting, and sees the close

    async def _close(self, code: int, reason: str, flush: bool) -> None:
        if self.session:
            self.session.end(reason if code != CLOSE_NORMAL else self.session.ended or reason)
        await close_connection(
            self.ws,
            self.outbox,
            self.writer,
            code,
            reason,
            flush=flush,
            timeout_s=self.ctx.config.drain_timeout_s,
        )

    # -- the receive loop ----------------------------------------------------------------------
    def allow_message(self) -> bool:
        """The rate limit: False drops this message (with an error at most once a second)."""
        now = time.monotonic()
        if self.limiter.allow(now):
            return True
        if not self.flood.allow(now):
            self.close(CLOSE_POLICY, "event flood: too many messages, closing", flush=False)
        elif now - self.last_rate_error >= 1.0:
            self.last_rate_error = now
            self.send_error(
                "rate_limited",
                f"more than {self.ctx.config.messages_per_s:g} messages/s; slow down "
                "(send audio in chunks of 20 ms or more)",
            )
        return False

    def receive(self, message: str | bytes) -> None:
        """One client message: rate limit, then the protocol; a bug costs this message only."""
        if not self.allow_message():
            return
        try:
            self.handle_message(message)
        except Exception:
            self.internal_errors += 1
            if self.internal_errors == 1:  # one traceback per run, not one per audio chunk
                log.exception("%s: failed to handle a client message", self.protocol_name)
            if self.internal_errors >= self.max_internal_errors:
                self.close(CLOSE_INTERNAL_ERROR, "internal server error", flush=True)
            else:
                self.send_error(
                    "internal_error", "the server failed to handle this message", server_side=True
                )
            return
        self.internal_errors = 0

    async def run(self) -> None:
        try:
            while self.closing is None:
                if self.session is not None and not self.announced.is_set():
                    await self.announced.wait()
                    continue
                message = await self.next_message()
                if message is None:
                    break
                self.receive(message)
                # Messages already buffered come back without a pause: let the writer send the
                # replies between them, or a burst of refused messages fills the outbox by itself.
                await asyncio.sleep(0)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("%s connection failed", self.protocol_name)
            self.close(CLOSE_INTERNAL_ERROR, "internal server error", flush=False)
        finally:
            if self.session is not None:
                self.session.end("client_disconnected")
                self.ctx.forget(self.session)
            else:
                self.slot.release()
            self.finish()
            if self.closing is not None:
                await asyncio.wait({self.closing})
            self.outbox.close()
            self.writer.cancel()
            # The conversation calls back into this connection (its emit): drop the link both ways,
            # so the pair is freed now by reference counting rather than by a collector pass that
            # would pause every live session's frame loop.
            self.session = None

    def finish(self) -> None:
        """Stop the adapter's own tasks (called once, when the connection ends)."""


async def serve_connection(ctx, ws: ServerConnection, connection_class: type[Connection]) -> None:
    """Serve one websocket with `connection_class`: a slot, or close 1013 when full or draining."""
    slot = ctx.reserve()
    if slot is None:
        await ws.close(CLOSE_TRY_AGAIN_LATER, ctx.refusal_reason())
        return
    try:
        conn = connection_class(ctx, ws, slot)
    except Exception:
        slot.release()
        raise
    await conn.run()
