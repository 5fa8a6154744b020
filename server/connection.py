"""What every websocket adapter does the same way, written once.

`Connection` owns one websocket and at most one conversation: the bounded outbox and its writer
task (a stalled reader never blocks the frame clock), the per-connection rate limits (errors at
most once a second, 1008 for a flood), the engine slot taken when the client starts its session
(`open_session`; none before), the start timeout that bounds how long it may wait to, the
close sequence (drain, close, abort a silent peer), and the handling of failures (a bug while
handling one message costs that message, not the conversation; anything else closes with 1011).
A protocol adapter (server/protocols/native/adapter.py, server/protocols/realtime/adapter.py, server/protocols/live/adapter.py) subclasses it and only
translates messages and conversation events. Whatever the conversation returns goes through
`apply_events`, after the call that returned it: the engine slot's part here, the rest to the
adapter's `conversation_event`.
`serve_connection` is the shared entry: admit the connection or refuse it with 1013, run, clean up.
The websocket itself is any `Transport` (server/websocket.py wraps aiohttp's), so nothing here or
in an adapter depends on the HTTP library.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from assistant.conversation import (
    CaptionUtterance,
    Conversation,
    ConversationEvent,
    ConversationOptions,
    Event,
    SessionReady,
)
from assistant.scheduler import SlotHandle
from server.protocols.limits import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    MAX_MESSAGE_BYTES,
    RateLimiter,
    message_bytes,
)

log = logging.getLogger("assistant.server")

# How long a client that left may still have its last messages carried out (an Opus session's are
# decoded off the event loop, in order): a few frames' work, bounded so a stuck codec holds nothing.
RECEIVED_WAIT_S = 1.0
# Client messages handled at most between two passes of the event loop (when none of them queued a reply).
YIELD_EVERY_MESSAGES = 8


class TransportClosed(Exception):
    """The websocket is closed or closing: nothing more can be sent or received."""


class Transport(Protocol):
    """One accepted websocket, as the connection base and the protocol adapters use it."""

    path: str  # the upgrade request's target: path and query string, as sent
    headers: Mapping[str, str]  # the upgrade request's headers
    remote_address: tuple | None  # the peer's socket address
    close_code: int | None  # how the websocket closed, whoever closed it (None while open)
    close_reason: str | None

    async def send(self, message: str | bytes) -> None:
        """Send one text or binary message; raises TransportClosed."""

    async def recv(self) -> str | bytes:
        """The next text or binary message; raises TransportClosed."""

    async def close(self, code: int, reason: str) -> None:
        """Close with `code` and `reason` (the peer's answer is awaited for a bounded time)."""

    def abort(self) -> None:
        """Cut the connection now, unless a close is already under way."""


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
    ws: Transport,
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
    except (TimeoutError, TransportClosed, OSError):
        pass
    finally:
        ws.abort()


# -- the connection base --------------------------------------------------------------------------


class Connection:
    """One websocket <-> one conversation. Subclasses implement `handle_message` and `encode_error`."""

    protocol_name = "websocket"
    max_internal_errors = 10  # failures in a row before the connection is given up (1011)
    outbox_scale = 1  # messages per frame this protocol sends, relative to one (native: audio + events)
    not_started_code = "not_started"  # the error code for a client that never starts its session

    def __init__(self, ctx, ws: Transport):
        self.ctx = ctx
        self.ws = ws
        self.slot: SlotHandle | None = None  # taken when the session starts
        self._session: Conversation | None = None
        config = ctx.config
        self.start_deadline = time.monotonic() + config.start_timeout_s
        self.outbox = Outbox(
            ws.send, max_items=config.max_outbox_items * self.outbox_scale, max_lag_s=config.max_send_lag_s
        )
        self.writer = asyncio.create_task(self.outbox.run())
        self.peer = self.describe_peer()
        now = time.monotonic()
        self.limiter = RateLimiter(config.messages_per_s, config.message_burst, now)
        # Refusals drain their own bucket: a client persistently over the rate is closed, one that
        # bursts now and then only gets errors (at most one a second).
        self.flood = RateLimiter(config.messages_per_s / 5, config.flood_close_after, now)
        self.last_rate_error = -1e9
        self.internal_errors = 0  # messages in a row the server failed to handle
        self.closing: asyncio.Task | None = None
        # Set when the conversation is announced (SessionReady, from the frame loop) or the connection
        # closes: until then the client's messages wait unhandled, so none is handled before the answer
        # that announces its session, and its first audio is the first the model hears.
        self.announced = asyncio.Event()
        # Read ahead while the announcement is awaited (handled after it, in order): a client that
        # leaves meanwhile is seen at once, and its slot is free for the next one.
        self.early: collections.deque[str | bytes] = collections.deque()
        self.reading: asyncio.Future | None = None  # a read under way, its message the next one

    def open_session(self, sample_rate_hz: int, options: ConversationOptions) -> Conversation | None:
        """Take an engine slot and open the conversation in it (the adapter starts it). None when the
        server filled up since this connection came in: it is then closed with 1013, as at the
        upgrade. Raises ValueError for options the conversation refuses (no slot is kept)."""
        slot = self.ctx.reserve()
        if slot is None:
            self.close(CLOSE_TRY_AGAIN_LATER, self.ctx.refusal_reason())
            return None
        try:
            session = self.ctx.open_session(slot, sample_rate_hz, self.apply_events, options)
        except BaseException:
            slot.release()
            raise
        self.slot = slot
        self.session = session
        return session

    @property
    def session(self) -> Conversation | None:
        return self._session

    @session.setter
    def session(self, session: Conversation | None) -> None:
        if session is not None and self._session is None:  # however the adapter opened it: logged once
            log.info("session %s open: %s", session.session_id, self.peer)
        self._session = session

    def describe_peer(self) -> str:
        """The endpoint and the client's address, for the log: the path only (a query may hold a token).
        Read when the connection opens: once the peer has gone, its socket has no address."""
        endpoint = urlsplit(self.ws.path).path
        address = self.ws.remote_address
        client = f"{address[0]}:{address[1]}" if address else "unknown"
        return f"{endpoint} from {client}"

    def log_closed(self, session: Conversation) -> None:
        """One line an operator can act on: who, how long, what the frame clock did, how it ended."""
        code, reason = self.ws.close_code, self.ws.close_reason
        log.info(
            "session %s closed: %s, %.1f s, %d frames, underruns %d, drops %d, ended %s, close %s%s",
            session.session_id,
            self.peer,
            session.clock() - session.started_at,
            session.frames_out,
            session.underruns,
            session.drops,
            session.ended or "unknown",
            code if code is not None else "none",
            f" ({reason})" if reason else "",
        )

    # -- what a protocol adapter provides ------------------------------------------------------
    def handle_message(self, message: str | bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def conversation_event(self, event: Event) -> None:  # pragma: no cover - interface
        """One event of the conversation for the client, in the protocol's words."""
        raise NotImplementedError

    def encode_error(self, code: str, message: str, *, server_side: bool = False) -> Any:  # pragma: no cover
        """The protocol's error message for the client (server_side: our failure, not theirs)."""
        raise NotImplementedError

    def max_message_bytes(self, message: str | bytes) -> int:
        """The largest `message` of its kind this protocol reads (a binary image may be larger)."""
        return MAX_MESSAGE_BYTES

    def refuse_oversized(self, message: str | bytes, size: int) -> None:
        """Tell the client a message was too large to read; it is dropped, the session goes on."""
        self.send_error(
            "message_too_large",
            f"a message of {size} bytes was dropped unread; at most {MAX_MESSAGE_BYTES} are accepted",
        )

    async def next_message(self) -> str | bytes | None:
        """The next client message; None ends the connection (after it was closed)."""
        if self.early:
            return self.early.popleft()
        if self.reading is not None:
            reading, self.reading = self.reading, None
            return await reading
        if self.session is not None:
            return await self.ws.recv()
        # Until the client starts its session the start timeout bounds how long it stays, whatever it sends.
        try:
            return await asyncio.wait_for(self.ws.recv(), max(0.0, self.start_deadline - time.monotonic()))
        except TimeoutError:
            timeout = self.ctx.config.start_timeout_s
            self.send_error(self.not_started_code, f"no session.start within {timeout:g} s; closing")
            self.close(CLOSE_NORMAL, "start_timeout", flush=True)
            return None

    # -- the conversation's events ------------------------------------------------------------
    def apply_events(self, events: list[ConversationEvent]) -> None:
        """Carry out what a conversation call returned, in order: the engine slot's part of each
        event (on SessionEnded the slot goes back first), the client's events, caption jobs."""
        for event in events:
            self.slot.carry_out(event)
            if isinstance(event, Event):
                self.conversation_event(event)
            if isinstance(event, SessionReady):
                self.announced.set()  # the client's messages are read from now on
            elif isinstance(event, CaptionUtterance):
                self.ctx.caption(event, self.caption_done)

    def caption_done(self, utterance: CaptionUtterance, text: str | None) -> None:
        if self.session is not None:
            self.apply_events(self.session.add_caption(utterance, text))

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
            self.apply_events(
                self.session.end(reason if code != CLOSE_NORMAL else self.session.ended or reason)
            )
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
        """One client message: rate limit, size, then the protocol; a bug costs this message only."""
        if not self.allow_message():
            return
        size = message_bytes(message)
        if size > self.max_message_bytes(message):
            self.refuse_oversized(message, size)
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

    async def wait_for_announcement(self) -> None:
        """Until the conversation is announced, read what the client sends into `early` (up to about
        a message's size limit), so a client that leaves meanwhile ends the connection at once."""
        announced = asyncio.ensure_future(self.announced.wait())
        try:
            while not announced.done() and sum(map(len, self.early)) < MAX_MESSAGE_BYTES:
                if self.reading is None:
                    self.reading = asyncio.ensure_future(self.ws.recv())
                await asyncio.wait({announced, self.reading}, return_when=asyncio.FIRST_COMPLETED)
                if self.reading.done():
                    reading, self.reading = self.reading, None
                    self.early.append(reading.result())  # TransportClosed: the client left
            await announced
        finally:
            announced.cancel()

    async def run(self) -> None:
        client_left = interrupted = False
        handled = 0
        try:
            while self.closing is None:
                if self.session is not None and not self.announced.is_set():
                    await self.wait_for_announcement()
                    continue
                message = await self.next_message()
                if message is None:
                    break
                self.receive(message)
                # Messages already buffered come back without a pause: let the writer send the
                # replies between them, or a burst of refused messages fills the outbox by itself,
                # and let the frame clock in now and then, whatever a client has buffered. Not after
                # every message: a pass of the loop per audio chunk was a tenth of the loop's time.
                handled += 1
                if self.outbox or handled % YIELD_EVERY_MESSAGES == 0:
                    await asyncio.sleep(0)
        except TransportClosed:
            client_left = True
        except Exception:
            log.exception("%s connection failed", self.protocol_name)
            self.close(CLOSE_INTERNAL_ERROR, "internal server error", flush=False)
        finally:
            if self.reading is not None:
                self.reading.cancel()
            if self.session is not None:
                if client_left:
                    # What the client sent before it left is carried out first: a session.end
                    # queued behind its last audio still ends the session as the client asked.
                    # Nothing more can reach the client meanwhile.
                    self.outbox.close()
                    interrupted = not await self.carry_out_received()
                self.apply_events(self.session.end("client_disconnected"))
                self.ctx.forget(self.session)
            if self.slot is not None:
                self.slot.release()  # a no-op once the conversation's end gave it back
            self.finish()
            if self.closing is not None and not interrupted:
                await asyncio.wait({self.closing})
            self.outbox.close()
            self.writer.cancel()
            if self._session is not None:
                self.log_closed(self._session)
        if interrupted:
            raise asyncio.CancelledError

    async def carry_out_received(self) -> bool:
        """`received`, bounded by RECEIVED_WAIT_S; False when the connection's task was cancelled
        meanwhile (the caller finishes its clean-up, then stops)."""
        try:
            await asyncio.wait_for(self.received(), RECEIVED_WAIT_S)
        except (TimeoutError, asyncio.TimeoutError):
            pass
        except asyncio.CancelledError:
            return False
        return True

    async def received(self) -> None:
        """Until the messages the adapter took from the client have been handled (one that handles
        them off the event loop waits for them here). Messages read before the session was
        announced are not among them: those are only handled once it is."""

    def finish(self) -> None:
        """Stop the adapter's own tasks (called once, when the connection ends)."""


async def serve_connection(ctx, ws: Transport, connection_class: type[Connection]) -> None:
    """Serve one websocket with `connection_class`, or close it with 1013 when the server is full or
    draining or its address holds --max-connections-per-client already. No engine slot is taken
    here: idle upgrades never fill the server."""
    address = ws.remote_address[0] if ws.remote_address else None
    refusal = ctx.admit(address)
    if refusal is not None:
        await ws.close(CLOSE_TRY_AGAIN_LATER, refusal)
        return
    try:
        await connection_class(ctx, ws).run()
    finally:
        ctx.leave(address)
