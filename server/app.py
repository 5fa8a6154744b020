"""`assistant serve`: the real-time server on one port (aiohttp's web server).

- GET / and the files of web/, GET /healthz (JSON), GET /metrics (Prometheus text): server/http.py,
- /ws: the native protocol (docs/protocol.md), server/protocols/native/adapter.py,
- /v1/realtime: the OpenAI Realtime API (docs/realtime.md), server/protocols/realtime/adapter.py,
- /v1/live/sessions: the OpenAI Live API, full duplex (docs/live.md), server/protocols/live/adapter.py,
- /api/chat: Kyutai's and NVIDIA's Moshi protocol (docs/moshi-protocol.md), server/protocols/moshi/adapter.py.

All websocket adapters are `Connection`s (server/connection.py) over a `WebSocketTransport`
(server/websocket.py) that drive conversations through the `ServerContext` (server/context.py);
the frame loop (assistant/scheduler.py) does the rest. Ctrl-C / SIGTERM drains (`drain`): the
port stays open, refusing new sessions and saying "draining" on /healthz, while live sessions
finish (up to --drain-seconds); the rest get `session.ended`, recordings are finalised, then the
process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import gc
import json
import logging
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from assistant.backends import build_engine
from assistant.engine import Engine
from audio.vad import StreamingVad
from server.agent import serve_agent
from server.config import (
    ServerConfig,
    add_arguments,
    config_from_args,
    default_max_sessions,
    default_origins,
)
from server.connection import Connection, serve_connection
from server.context import ServerContext
from server.http import make_app, server_log, upgrade_required
from server.memory import MemoryReporter
from server.protocols.live.adapter import LiveConnection
from server.protocols.moshi.adapter import MoshiChatConnection
from server.protocols.native.adapter import NativeConnection
from server.protocols.realtime.adapter import RealtimeConnection
from server.websocket import accept

__all__ = ["add_arguments", "config_from_args", "run", "serve_forever"]

log = logging.getLogger("assistant.server")

ENDPOINTS = {
    "/ws": NativeConnection,
    "/v1/realtime": RealtimeConnection,
    "/v1/live/sessions": LiveConnection,
    "/api/chat": MoshiChatConnection,
}
# Plain HTTP connections idle (or never finishing a request head) this long are closed.
HTTP_IDLE_TIMEOUT_S = 10.0


async def serve_websocket(
    ctx: ServerContext, connection_class: type[Connection], request: web.Request
) -> web.StreamResponse:
    """One upgrade on an endpoint (auth and Origin already checked): the connection, start to end."""
    config = ctx.config
    ws = await accept(request, ping_interval_s=config.ping_interval_s, close_timeout_s=config.drain_timeout_s)
    if ws is None:
        return upgrade_required()
    try:
        await serve_connection(ctx, ws, connection_class)
    finally:
        ws.finish()
    return ws.response


def make_server_app(ctx: ServerContext) -> web.Application:
    """The port's aiohttp application: the HTTP routes and one websocket handler per endpoint."""
    return make_app(
        ctx,
        {
            path: functools.partial(serve_websocket, ctx, connection_class)
            for path, connection_class in ENDPOINTS.items()
        },
    )


# -- running ------------------------------------------------------------------------------------


def _ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert and not key:
        return None
    if not (cert and key):
        raise SystemExit("--ssl-cert and --ssl-key go together; give both")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


async def _until(done: Callable[[], bool], timeout_s: float, cut_short: asyncio.Event | None = None) -> None:
    """Wait until `done()` holds, `timeout_s` passes or `cut_short` is set (polled: sessions end often)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not done() and asyncio.get_running_loop().time() < deadline:
        if cut_short is not None and cut_short.is_set():
            return
        await asyncio.sleep(0.05)


async def drain(ctx: ServerContext, hurry: asyncio.Event) -> None:
    """Stop taking sessions but keep listening, so balancers see it: /healthz says draining (503),
    new websockets get 1013 and the agent says drain. Live sessions go on for up to --drain-seconds
    (`hurry`, a second signal, cuts that short); the rest are told `server_shutdown` and get up to
    `drain_timeout_s` to say goodbye. The caller then closes the port, with whatever is left on it."""
    config = ctx.config
    ctx.draining = True
    if config.drain_grace_s > 0 and ctx.sessions:
        print(
            f"assistant: draining: no new sessions; {len(ctx.sessions)} live may go on for "
            f"{config.drain_grace_s:g} s (signal again to end them now)",
            flush=True,
        )
        await _until(lambda: not ctx.sessions, config.drain_grace_s, hurry)
    print("assistant: shutting down, ending live sessions", flush=True)

    def ended() -> bool:
        # Every round, so a connection that starts its session during the drain is told too.
        for session in list(ctx.sessions.values()):
            ctx.end_session(session, "server_shutdown")
        return not ctx.sessions

    await _until(ended, config.drain_timeout_s)


def _warm_up_codecs() -> None:
    """Open each Opus codec once now. The first Opus session (`/ws` with audio_format opus, or
    `/api/chat`) would otherwise import PyAV and sphn and open their codecs on the frame loop:
    about 130 ms with a warm disk cache, seconds from a cold one, a gap in every live session's
    audio. Costs about 35 MB of memory; an install without them just skips this."""
    with contextlib.suppress(ImportError):
        from audio.opus_packets import OpusPacketDecoder, OpusPacketEncoder

        OpusPacketEncoder()
        OpusPacketDecoder()
    with contextlib.suppress(ImportError):
        from audio.opus_ogg import OpusDecoder, OpusEncoder

        OpusEncoder()
        OpusDecoder()


async def serve_forever(
    config: ServerConfig, engine: Engine, ready=None, stop: asyncio.Event | None = None
) -> None:
    """Run until `stop` is set (or SIGINT/SIGTERM), then drain and return."""
    ctx = ServerContext(config, engine)
    stop = stop or asyncio.Event()
    hurry = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (hurry if stop.is_set() else stop).set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID`: a memory report in the log (server/memory.py)
        reporter = MemoryReporter()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGUSR1, lambda: print(reporter.report(), flush=True))
    tls = _ssl_context(config.ssl_cert, config.ssl_key)
    # Build one VAD now: its first construction imports and initialises the classifier (~60 ms),
    # which would otherwise stall the frame clock when the first session starts.
    StreamingVad(config.vad, sample_rate_hz=engine.sample_rate_hz)
    _warm_up_codecs()
    # Everything loaded so far lives as long as the process: keep it out of the garbage collector's
    # full passes, which otherwise walk the whole model/library heap and stall the frame clock.
    gc.collect()
    gc.freeze()
    clock = asyncio.create_task(ctx.scheduler.run())
    runner = web.AppRunner(
        make_server_app(ctx),
        access_log=None,  # no line per request: a path is the client's text, and probes come every second
        logger=server_log,
        keepalive_timeout=HTTP_IDLE_TIMEOUT_S,
        shutdown_timeout=config.drain_timeout_s,
    )
    await runner.setup()
    agent = None
    try:
        await web.TCPSite(runner, config.host, config.port, ssl_context=tls).start()
        ctx.port = runner.addresses[0][1]
        if config.agent_port is not None:
            try:
                agent = await serve_agent(ctx, config.host, config.agent_port)
            except OSError as exc:
                raise OSError(f"agent check port {config.host}:{config.agent_port}: {exc}") from exc
            print(
                f"assistant: HAProxy agent on {config.host}:{agent.sockets[0].getsockname()[1]}",
                flush=True,
            )
        if config.allowed_origins is None:
            config.allowed_origins = default_origins(config.host, ctx.port, tls is not None)
        scheme = "https" if tls else "http"
        shown = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
        print(
            f"assistant: serving {engine.describe().get('backend')} ({engine.describe().get('model')}), "
            f"{ctx.scheduler.capacity} session{'s' if ctx.scheduler.capacity != 1 else ''} max",
            flush=True,
        )
        print(
            f"assistant: open {scheme}://{shown}:{ctx.port}/ in a browser "
            f"(websocket {'wss' if tls else 'ws'}://{shown}:{ctx.port}/ws)",
            flush=True,
        )
        if ready is not None:
            ready(ctx)
        await stop.wait()
        await drain(ctx, hurry)
    finally:
        if agent is not None:
            agent.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(agent.wait_closed(), config.drain_timeout_s)
        await runner.cleanup()  # stops listening, then waits up to drain_timeout_s for what is left
    ctx.scheduler.stop()
    await clock
    ctx.scheduler.shutdown()
    ctx.close()
    if config.clock_stats_path:
        stats = {
            **ctx.scheduler.clock_stats(),
            "underruns": ctx.metrics.value("underruns"),
            "drops": ctx.metrics.value("drops"),
        }
        Path(config.clock_stats_path).write_text(json.dumps(stats))


def build_server_engine(config: ServerConfig) -> Engine:
    batch_size = config.max_sessions or default_max_sessions(config.backend, config.device)
    return build_engine(
        config.backend,
        model=config.model,
        batch_size=batch_size,
        device=config.device,
        dtype=config.dtype,
        **config.engine_options,
    )


_stop_asked = False  # a signal came while starting (a plain flag: set in a signal handler)


def _stop_starting(signum, frame) -> None:
    """Ctrl-C or SIGTERM while the model loads ends the start-up. The KeyboardInterrupt raised here
    can be swallowed by the code it lands in (a library's `except BaseException` while it loads,
    or one that turns it into an error of its own), so the signal is also remembered, and the
    start-up looks before it begins to serve."""
    global _stop_asked
    _stop_asked = True
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if hasattr(signal, "SIGUSR1"):  # a memory report asked for while the model loads is not a kill
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    global _stop_asked
    _stop_asked = False
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # serve_forever's own handlers take over once it runs.
        signal.signal(signal.SIGTERM, _stop_starting)
        signal.signal(signal.SIGINT, _stop_starting)
        return _start_and_serve(args)
    except KeyboardInterrupt:
        print("assistant: stopped while starting", flush=True)
        return 0
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _start_and_serve(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        if config.auto_banner:
            print(config.auto_banner, file=sys.stderr, flush=True)
        log.info("loading the %s engine%s", config.backend, f" ({config.model})" if config.model else "")
        engine = build_server_engine(config)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        if _stop_asked:  # the interrupt, turned into an error on its way
            raise KeyboardInterrupt from None
        print(f"assistant serve: {exc}", file=sys.stderr)
        return 2
    if _stop_asked:
        raise KeyboardInterrupt
    try:
        asyncio.run(serve_forever(config, engine))
    except ValueError as exc:  # e.g. an unknown --captions model
        print(f"assistant serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(
                f"assistant serve: port {config.port} on {config.host} is in use (another server?); stop "
                f"that one, or pick a free port with --port N (e.g. --port {config.port + 1})",
                file=sys.stderr,
            )
        else:
            print(f"assistant serve: cannot listen ({exc})", file=sys.stderr)
        return 1
    return 0
