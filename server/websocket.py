"""The websocket under every protocol adapter: aiohttp's `WebSocketResponse` behind the small
`Transport` interface that server/connection.py drives (send, recv, close, abort, and what the
upgrade request said), so no adapter depends on the HTTP library.

Two things aiohttp leaves to us are done here. Keepalive: a ping every `ping_interval_s`, and a
peer that has not answered within as long again is closed with 1011 "keepalive ping timeout", the
code the protocol docs give (aiohttp's own heartbeat drops the TCP connection without a close
frame). And a small kernel send buffer per connection (`SEND_BUFFER_BYTES`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from aiohttp import WSMsgType, web

from server.connection import TransportClosed
from server.protocols.limits import CLOSE_INTERNAL_ERROR, MAX_FRAME_BYTES

# ~0.7 s of 24 kHz PCM16 in the kernel: a stalled reader shows up in the connection's own bounded
# outbox within seconds instead of after megabytes of autotuned buffering (and audio latency stays honest).
SEND_BUFFER_BYTES = 64 * 1024
MAX_REASON_BYTES = 123  # a close frame's payload is at most 125 bytes, two of them the code
_DATA = (WSMsgType.BINARY, WSMsgType.TEXT)


class WebSocketTransport:
    """One accepted websocket. `recv` answers pings and notes pongs as it reads; it raises
    `TransportClosed` once the connection is closing, whoever closed it."""

    def __init__(self, request: web.BaseRequest, response: web.WebSocketResponse, ping_interval_s: float):
        self.request = request
        self.response = response
        self._pong = asyncio.Event()
        self.close_code: int | None = None  # the first close seen: ours (`close`) or the peer's
        self.close_reason: str | None = None
        self._keepalive: asyncio.Task | None = asyncio.create_task(self._ping_until_silent(ping_interval_s))

    @property
    def path(self) -> str:
        """The upgrade request's target as sent: path and query string."""
        return self.request.raw_path

    @property
    def headers(self):
        """The upgrade request's headers (case-insensitive mapping)."""
        return self.request.headers

    @property
    def remote_address(self) -> tuple | None:
        """The peer's (host, port, ...), as the socket reports it; None once disconnected."""
        transport = self.request.transport
        return transport.get_extra_info("peername") if transport is not None else None

    async def send(self, message: str | bytes) -> None:
        try:
            if isinstance(message, str):
                await self.response.send_str(message)
            else:
                await self.response.send_bytes(message)
        except ConnectionError as exc:
            raise TransportClosed(str(exc)) from None

    async def recv(self) -> str | bytes:
        while True:
            message = await self.response.receive()
            if message.type in _DATA:
                return message.data
            if message.type is WSMsgType.PING:
                with contextlib.suppress(ConnectionError):
                    await self.response.pong(message.data)
            elif message.type is WSMsgType.PONG:
                self._pong.set()
            else:  # CLOSE, CLOSING, CLOSED or ERROR: aiohttp has answered or closed already
                if message.type is WSMsgType.CLOSE:
                    self._closed_with(message.data, message.extra)
                raise TransportClosed(f"websocket closed ({self.response.close_code})")

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame with `code` and `reason`, then end the connection (bounded by the
        response's close timeout when the peer does not answer)."""
        data = reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore").encode()
        self._closed_with(code, data.decode())
        await self.response.close(code=code, message=data)

    def _closed_with(self, code: int | None, reason: str | None) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason or None

    def abort(self) -> None:
        """Cut the TCP connection now, unless a close is already under way (what it queued for the
        peer, the close frame last, then still goes out)."""
        transport = self.request.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    def finish(self) -> None:
        """Stop the keepalive (once the connection has ended)."""
        keepalive, self._keepalive = self._keepalive, None  # no task <-> transport cycle left behind
        if keepalive is not None:
            keepalive.cancel()

    async def _ping_until_silent(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self._pong.clear()
            try:
                await asyncio.wait_for(self._ping(), interval_s)
            except TimeoutError:
                with contextlib.suppress(ConnectionError):
                    await self.close(CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
                return
            except ConnectionError:
                return

    async def _ping(self) -> None:
        await self.response.ping()
        await self._pong.wait()


async def accept(
    request: web.BaseRequest, *, ping_interval_s: float, close_timeout_s: float
) -> WebSocketTransport | None:
    """Complete the upgrade of `request`; None when it is not a websocket upgrade (the caller
    answers 426). Text and binary messages up to 16 MiB (a larger one closes 1009; one over 1 MiB
    that is not an image the connection refuses unread, see `Connection.receive`); no
    permessage-deflate (audio does not compress, and an inflating server is a deflate bomb's target)."""
    response = web.WebSocketResponse(
        timeout=close_timeout_s,
        autoping=False,  # pongs are read in `recv`, so the keepalive knows the peer answered
        compress=False,
        max_msg_size=MAX_FRAME_BYTES,
    )
    if request.method != "GET" or not response.can_prepare(request):
        return None
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    await response.prepare(request)
    return WebSocketTransport(request, response, ping_interval_s)
