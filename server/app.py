"""`assistant serve`: the real-time server on one port.

- GET / and the files of web/, GET /healthz (JSON), GET /metrics (Prometheus text),
- /ws: the native protocol (docs/protocol.md), adapter `handle_native` below,
- /v1/realtime: `handle_realtime(ctx, websocket)` from server/realtime.py, looked up lazily.

Both websocket adapters drive sessions through `ServerContext` (see server/session.py for the
Session API): `ctx.reserve()` takes an engine slot (None when full), `ctx.open_session(...)`
starts a conversation in it, and the frame clock (assistant/scheduler.py) does the rest.
Ctrl-C / SIGTERM drains: every live session gets `session.ended`, recordings are finalised,
then the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hmac
import http
import importlib
import importlib.util
import json
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from assistant.backends import BACKENDS, build_engine
from assistant.engine import Engine
from assistant.scheduler import Scheduler, SlotHandle
from audio.vad import StreamingVad, VadConfig
from server import protocol, static
from server.connection import close_connection
from server.metrics import Metrics
from server.protocol import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    MAX_MESSAGE_BYTES,
    PlaybackPosition,
    ProtocolError,
    RateLimiter,
    SessionEnd,
    SessionStart,
    SessionUpdate,
)
from server.recording import Recorder
from server.session import (
    Event,
    Outbox,
    Session,
    SessionEnded,
    SessionLimits,
    SessionOptions,
    SlowClient,
)

log = logging.getLogger("assistant.server")

DEFAULT_PORT = 8998
TEST_BACKEND_MAX_SESSIONS = 64
DEFAULT_MOSHI_MODEL = "kyutai/moshiko-pytorch-bf16"
SEND_BUFFER_BYTES = 64 * 1024  # ~0.7 s of 24 kHz PCM16 per connection in the kernel


@dataclass
class ServerConfig:
    backend: str = "moshi"
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_sessions: int | None = None  # None: ask the backend
    auth_token: str | None = None
    allowed_origins: list[str] | None = None  # None: the server's own host:port
    record_dir: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    barge_in: str = "model"
    device: str | None = None
    dtype: str | None = None
    engine_options: dict[str, Any] = field(default_factory=dict)
    limits: SessionLimits = field(default_factory=SessionLimits)
    vad: VadConfig = field(default_factory=VadConfig)
    web_root: Path = static.WEB_ROOT
    max_outbox_items: int = 64
    max_send_lag_s: float = 2.0  # a client this far behind reading is disconnected (1008)
    messages_per_s: float = 250.0  # per connection, audio and events together
    message_burst: float = 500.0
    flood_close_after: int = 500  # refused messages (beyond a fifth of the rate) before closing (1008)
    drain_timeout_s: float = 5.0
    clock_stats_path: str | None = None  # write frame-clock figures (JSON) here at exit
    captions: str | None = None  # caption model ("auto", a faster-whisper size or dir); None: off
    captions_device: str = "cpu"


def default_max_sessions(backend: str, device: str | None = None) -> int:
    """How many sessions a backend serves when --max-sessions is not given."""
    if backend == "moshi":
        try:
            from assistant.backends.moshi import MoshiEngine
        except ImportError:
            return 1
        suggest = getattr(MoshiEngine, "suggested_batch_size", None)
        return int(suggest(device)) if callable(suggest) else 1
    return TEST_BACKEND_MAX_SESSIONS


def default_origins(host: str, port: int, tls: bool) -> list[str]:
    """The server's own origin in every loopback spelling, http and https."""
    hosts = {host}
    if host in ("127.0.0.1", "localhost", "0.0.0.0", "::", "::1"):
        hosts |= {"127.0.0.1", "localhost", "[::1]"}
    hosts.discard("0.0.0.0")
    hosts.discard("::")
    schemes = ("https", "http") if tls else ("http", "https")
    return sorted(f"{s}://{h}:{port}" for s in schemes for h in hosts)


class ServerContext:
    """Everything a protocol adapter needs: the scheduler, options, metrics, recording."""

    def __init__(self, config: ServerConfig, engine: Engine):
        self.config = config
        self.engine = engine
        self.metrics = Metrics()
        self.scheduler = Scheduler(engine, metrics=self.metrics)
        self.sessions: dict[str, Session] = {}
        self.started_at = time.monotonic()
        self.port = config.port
        self.draining = False
        self.caption_worker = None
        self.captions_model: str | None = None  # what clients are told captions use; None when off
        if config.captions:
            from assistant.captions import CaptionWorker

            # The model loads on the worker's own thread; the server is listening meanwhile.
            self.caption_worker = CaptionWorker(config.captions, device=config.captions_device)
            self.caption_worker.start()
            self.captions_model = f"faster-whisper:{Path(self.caption_worker.model_path).name}"
        self.metrics.gauge("live_sessions", "Sessions in progress.", lambda: len(self.sessions))
        self.metrics.gauge(
            "capacity_left", "Sessions that can still join.", lambda: self.scheduler.free_slots
        )
        self.metrics.gauge(
            "max_sessions", "Sessions this server holds at most.", lambda: self.scheduler.capacity
        )

    def reserve(self) -> SlotHandle | None:
        """An engine slot for a new connection, or None when the server is full (or draining)."""
        if self.draining:
            return None
        slot = self.scheduler.reserve()
        if slot is None:
            self.metrics.inc("refused_total")
        return slot

    def open_session(
        self,
        slot: SlotHandle,
        sample_rate_hz: int,
        emit,
        options: SessionOptions | None = None,
    ) -> Session:
        """Start a conversation in `slot`; emits SessionReady. Raises ValueError for a bad rate/options."""
        options = options or SessionOptions(barge_in=self.config.barge_in)
        options.vad_config(self.config.vad)  # raises ValueError for bad VAD options before any file is made
        session_id = "sess_" + secrets.token_hex(6)
        recorder = Recorder(self.config.record_dir, session_id) if self.config.record_dir else None
        session = Session(
            session_id,
            sample_rate_hz,
            emit,
            options=options,
            limits=self.config.limits,
            vad_config=self.config.vad,
            slot=slot,
            recorder=recorder,
            metrics=self.metrics,
            captions=self._caption_job if self.caption_worker is not None else None,
        )
        slot.attach(session, options.slot_options())
        self.sessions[session_id] = session
        self.metrics.inc("sessions_total")
        session.start()
        return session

    def _caption_job(self, pcm_24k, start_ms: float, end_ms: float, done) -> None:
        """Queue one utterance for captioning; `done(text)` runs on the event loop when it is ready."""
        loop = asyncio.get_running_loop()

        def finished(caption) -> None:
            loop.call_soon_threadsafe(done, caption.text)

        if not self.caption_worker.submit(id(done), pcm_24k, start_ms, end_ms, finished):
            self.metrics.inc("captions_dropped")

    def close(self) -> None:
        if self.caption_worker is not None:
            self.caption_worker.close(timeout=5)

    def forget(self, session: Session) -> None:
        self.sessions.pop(session.session_id, None)

    def healthz(self) -> dict[str, Any]:
        info = self.engine.describe()
        return {
            "status": "draining" if self.draining else "ok",
            "live_sessions": len(self.sessions),
            "max_sessions": self.scheduler.capacity,
            "capacity_left": 0 if self.draining else self.scheduler.free_slots,
            "backend": info.get("backend"),
            "model": info.get("model"),
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "captions": None if self.caption_worker is None else self.caption_worker.describe(),
        }


# -- HTTP / handshake ---------------------------------------------------------------------------


def _response(status: int, content_type: str, body: bytes, extra: dict[str, str] | None = None) -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-store"
    headers["X-Content-Type-Options"] = "nosniff"
    for k, v in (extra or {}).items():
        headers[k] = v
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def _text(status: int, message: str) -> Response:
    return _response(status, "text/plain; charset=utf-8", (message + "\n").encode())


def check_auth(token: str | None, request: Request) -> bool:
    """Bearer header or ?token= query parameter, compared in constant time."""
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    offered = header[7:].strip() if header.lower().startswith("bearer ") else None
    if offered is None:
        offered = (parse_qs(urlsplit(request.path).query).get("token") or [None])[0]
    return offered is not None and hmac.compare_digest(offered.encode(), token.encode())


def check_origin(allowed: list[str], request: Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # SDKs and CLIs send none; browsers always do
    return "*" in allowed or origin.rstrip("/") in allowed


def make_process_request(ctx: ServerContext):
    config = ctx.config

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path in ("/ws", "/v1/realtime"):
            if not check_auth(config.auth_token, request):
                return _text(
                    401, "missing or wrong token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN"
                )
            if not check_origin(config.allowed_origins or [], request):
                return _text(
                    403, f"origin {request.headers.get('Origin')} is not allowed; see --allowed-origins"
                )
            if path == "/v1/realtime" and importlib.util.find_spec("server.realtime") is None:
                return _text(404, "the OpenAI Realtime endpoint is not available in this build")
            return None
        if path == "/healthz":
            return _response(200, "application/json", json.dumps(ctx.healthz()).encode())
        if path == "/metrics":
            return _response(200, "text/plain; version=0.0.4; charset=utf-8", ctx.metrics.render().encode())
        status, ctype, body = static.load(config.web_root, path)
        return _response(status, ctype, body)

    return process_request


# -- the native adapter -------------------------------------------------------------------------


class NativeConnection:
    """One /ws connection: JSON events and PCM frames <-> a Session."""

    def __init__(self, ctx: ServerContext, ws: ServerConnection, slot: SlotHandle):
        self.ctx = ctx
        self.ws = ws
        self.slot = slot
        self.session: Session | None = None
        self.outbox = Outbox(
            ws.send, max_items=ctx.config.max_outbox_items, max_lag_s=ctx.config.max_send_lag_s
        )
        self.writer = asyncio.create_task(self.outbox.run())
        now = time.monotonic()
        self.limiter = RateLimiter(ctx.config.messages_per_s, ctx.config.message_burst, now)
        self.flood = RateLimiter(ctx.config.messages_per_s / 5, ctx.config.flood_close_after, now)
        self.last_rate_error = -1e9
        self.closing: asyncio.Task | None = None

    # Events from the session (event loop thread).
    def emit(self, event: Event) -> None:
        if self.closing:
            return
        try:
            self.outbox.put(protocol.encode_event(event))
        except SlowClient as exc:
            self.ctx.metrics.inc("slow_clients")
            log.warning("disconnecting slow client: %s", exc)
            self.close(CLOSE_POLICY, str(exc), flush=False)
            return
        if isinstance(event, SessionEnded):
            self.close(CLOSE_NORMAL, event.reason[:120], flush=True)

    def send_error(self, code: str, message: str) -> None:
        self.ctx.metrics.inc("errors", label=code)
        if self.closing:
            return
        try:
            self.outbox.put(protocol.error_event(code, message))
        except SlowClient as exc:
            self.close(CLOSE_POLICY, str(exc), flush=False)

    def close(self, code: int, reason: str, *, flush: bool) -> None:
        if self.closing is None:
            self.closing = asyncio.create_task(self._close(code, reason, flush))

    async def _close(self, code: int, reason: str, flush: bool) -> None:
        if self.session:
            self.session.end(reason if code != CLOSE_NORMAL else self.session.ended or reason)
        await close_connection(
            self.ws, self.outbox, self.writer, code, reason, flush=flush, timeout_s=self.ctx.config.drain_timeout_s
        )

    async def handle_message(self, message: str | bytes) -> None:
        now = time.monotonic()
        if not self.limiter.allow(now):
            # Refusals drain their own bucket: a client persistently over the rate is closed, one that
            # bursts now and then only gets errors (at most one a second).
            if not self.flood.allow(now):
                self.close(CLOSE_POLICY, "event flood: too many messages, closing", flush=False)
                return
            if now - self.last_rate_error >= 1.0:
                self.last_rate_error = now
                self.send_error(
                    "rate_limited", f"more than {self.ctx.config.messages_per_s:g} messages/s; slow down"
                )
            return
        try:
            if isinstance(message, bytes):
                protocol.check_audio(message, started=self.session is not None)
                assert self.session is not None
                self.session.push_audio(message)
                return
            event = protocol.decode_text(message)
            self.handle_event(event)
        except ProtocolError as exc:
            self.send_error(exc.code, exc.message)

    def handle_event(self, event) -> None:
        if isinstance(event, SessionStart):
            if self.session is not None:
                raise ProtocolError(
                    "already_started", f"session {self.session.session_id} is already running"
                )
            try:
                options = SessionOptions(barge_in=self.ctx.config.barge_in).replace(**event.options)
                self.session = self.ctx.open_session(self.slot, event.sample_rate, self.emit, options)
            except ValueError as exc:
                raise ProtocolError("invalid_value", str(exc)) from None
            return
        if self.session is None:
            raise ProtocolError("not_started", f"send session.start before {type(event).__name__}")
        if isinstance(event, SessionUpdate):
            try:
                self.session.update(**event.options)
            except ValueError as exc:
                raise ProtocolError("invalid_value", str(exc)) from None
        elif isinstance(event, PlaybackPosition):
            self.session.set_played_ms(event.played_ms)
        elif isinstance(event, SessionEnd):
            self.session.end("client_ended")

    async def run(self) -> None:
        idle = self.ctx.config.limits.idle_timeout_s
        try:
            while self.closing is None:
                if self.session is None:
                    # Before session.start only the idle timeout bounds how long a slot stays taken.
                    try:
                        message = await asyncio.wait_for(self.ws.recv(), idle)
                    except TimeoutError:
                        self.send_error("not_started", f"no session.start within {idle:g} s; closing")
                        self.close(CLOSE_NORMAL, "idle_timeout", flush=True)
                        break
                else:
                    message = await self.ws.recv()
                await self.handle_message(message)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("native connection failed")
            self.close(CLOSE_INTERNAL_ERROR, "internal server error", flush=False)
        finally:
            if self.session is not None:
                self.session.end("client_disconnected")
                self.ctx.forget(self.session)
            else:
                self.slot.release()
            if self.closing is not None:
                with contextlib.suppress(Exception):
                    await self.closing
            self.outbox.close()
            self.writer.cancel()


async def handle_native(ctx: ServerContext, ws: ServerConnection) -> None:
    slot = ctx.reserve()
    if slot is None:
        cap = ctx.scheduler.capacity
        reason = (
            "server is shutting down"
            if ctx.draining
            else f"server full: all {cap} sessions are taken; try later"
        )
        await ws.close(CLOSE_TRY_AGAIN_LATER, reason)
        return
    await NativeConnection(ctx, ws, slot).run()


async def route(ctx: ServerContext, ws: ServerConnection) -> None:
    path = urlsplit(ws.request.path).path if ws.request else ""
    sock = ws.transport.get_extra_info("socket") if ws.transport else None
    if sock is not None:
        # A small kernel send buffer makes a stalled reader show up in our own bounded queue within
        # seconds instead of after megabytes of autotuned buffering (and keeps audio latency honest).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    if path == "/ws":
        await handle_native(ctx, ws)
    elif path == "/v1/realtime":
        realtime = importlib.import_module("server.realtime")
        await realtime.handle_realtime(ctx, ws)
    else:
        await ws.close(CLOSE_POLICY, f"no websocket endpoint at {path}; use /ws or /v1/realtime")


# -- running ------------------------------------------------------------------------------------


def _ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert and not key:
        return None
    if not (cert and key):
        raise SystemExit("--ssl-cert and --ssl-key go together; give both")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


async def serve_forever(
    config: ServerConfig, engine: Engine, ready=None, stop: asyncio.Event | None = None
) -> None:
    """Run until `stop` is set (or SIGINT/SIGTERM), then drain and return."""
    ctx = ServerContext(config, engine)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tls = _ssl_context(config.ssl_cert, config.ssl_key)
    # Build one VAD now: its first construction imports and initialises the classifier (~60 ms),
    # which would otherwise stall the frame clock when the first session starts.
    StreamingVad(config.vad, sample_rate_hz=engine.sample_rate_hz)
    # Everything loaded so far lives as long as the process: keep it out of the garbage collector's
    # full passes, which otherwise walk the whole model/library heap and stall the frame clock.
    gc.collect()
    gc.freeze()
    clock = asyncio.create_task(ctx.scheduler.run())
    async with serve(
        lambda ws: route(ctx, ws),
        config.host,
        config.port,
        process_request=make_process_request(ctx),
        max_size=MAX_MESSAGE_BYTES,
        compression=None,  # audio does not compress; deflate would only burn CPU per frame
        ssl=tls,
        close_timeout=config.drain_timeout_s,
    ) as server:
        sock = next(iter(server.sockets))
        ctx.port = sock.getsockname()[1]
        if config.allowed_origins is None:
            config.allowed_origins = default_origins(config.host, ctx.port, tls is not None)
        scheme = "https" if tls else "http"
        shown = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
        print(
            f"assistant: serving {engine.describe().get('backend')} ({engine.describe().get('model')}), "
            f"{ctx.scheduler.capacity} sessions max",
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
        print("assistant: shutting down, ending live sessions", flush=True)
        ctx.draining = True
        server.close(close_connections=False)
        for session in list(ctx.sessions.values()):
            session.end("server_shutdown")
        deadline = time.monotonic() + config.drain_timeout_s
        while ctx.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), config.drain_timeout_s)
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


# -- CLI ----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="moshi",
        help="engine backend (default moshi; scripted and silence need no weights)",
    )
    parser.add_argument(
        "--model",
        help=f"checkpoint directory or Hugging Face id for the moshi backend (default {DEFAULT_MOSHI_MODEL})",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)"
    )
    parser.add_argument(
        "--max-sessions", type=int, help="concurrent sessions (default: what the backend holds)"
    )
    parser.add_argument(
        "--auth-token",
        default=os.environ.get("ASSISTANT_AUTH_TOKEN"),
        help="require this token (Bearer header or ?token=); default $ASSISTANT_AUTH_TOKEN",
    )
    parser.add_argument(
        "--allowed-origins",
        nargs="+",
        default=os.environ.get("ASSISTANT_ALLOWED_ORIGINS", "").split() or None,
        help="browser origins allowed to connect ('*' for any); default the server's own",
    )
    parser.add_argument(
        "--record", metavar="DIR", help="record every session (stereo WAV + JSONL events) in DIR"
    )
    parser.add_argument(
        "--ssl-cert", default=os.environ.get("ASSISTANT_SSL_CERT"), help="TLS certificate (PEM)"
    )
    parser.add_argument(
        "--ssl-key", default=os.environ.get("ASSISTANT_SSL_KEY"), help="TLS private key (PEM)"
    )
    parser.add_argument(
        "--barge-in",
        choices=("model", "vad"),
        default="model",
        help="model: the model decides whether to stop; vad: force it silent while the user talks",
    )
    parser.add_argument("--vad", choices=("webrtc", "silero"), default="webrtc", help="VAD for turn-taking")
    parser.add_argument("--device", help="torch device for the moshi backend (cuda, cpu)")
    parser.add_argument("--dtype", help="torch dtype for the moshi backend (bfloat16, float16, float32)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="moshi backend: capture the frame step as CUDA graphs per batch bucket "
        "(default: $ASSISTANT_COMPILE, on with CUDA)",
    )
    parser.add_argument(
        "--quantize",
        choices=("none", "int8"),
        default=None,
        help="moshi backend: int8 weight-only transformer linears (default: $ASSISTANT_QUANTIZE, none)",
    )
    parser.add_argument("--script-reply", help="scripted backend: reply WAV (text from the .txt beside it)")
    parser.add_argument(
        "--script-delay-ms", type=float, default=0.0, help="scripted backend: pause before replying"
    )
    parser.add_argument(
        "--idle-timeout", type=float, default=60.0, help="end sessions with no audio for this many s"
    )
    parser.add_argument(
        "--max-session-seconds", type=float, default=3600.0, help="end sessions after this many s"
    )
    parser.add_argument(
        "--max-send-lag",
        type=float,
        default=2.0,
        help="disconnect a client that is this many seconds behind reading (1008)",
    )
    parser.add_argument(
        "--captions",
        metavar="MODEL",
        default="auto",
        help="user captions with faster-whisper: auto (tiny.en on cpu, small on cuda), a size, "
        "a CTranslate2 model dir, or off (default auto)",
    )
    parser.add_argument(
        "--captions-device",
        choices=("cpu", "cuda"),
        help="device for captions (default: cuda when --device is cuda, else cpu)",
    )
    parser.add_argument(
        "--clock-stats",
        metavar="FILE",
        help="at exit, write frame-clock figures (tick lateness, step time) as JSON to FILE",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    if args.max_sessions is not None and args.max_sessions < 1:
        raise ValueError(f"--max-sessions must be >= 1, got {args.max_sessions}")
    for name in ("idle_timeout", "max_session_seconds", "max_send_lag"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if bool(args.ssl_cert) != bool(args.ssl_key):
        raise ValueError("--ssl-cert and --ssl-key go together; give both (or neither)")
    for name in ("ssl_cert", "ssl_key"):
        path = getattr(args, name)
        if path and not Path(path).is_file():
            raise ValueError(f"--{name.replace('_', '-')} {path} does not exist")
    vad = VadConfig(backend=args.vad)
    engine_options: dict[str, Any] = {}
    if args.backend == "scripted":
        engine_options = {
            "script_reply": args.script_reply,
            "script_delay_ms": args.script_delay_ms,
            "vad": vad,
        }
    elif args.script_reply is not None:
        raise ValueError("--script-reply only applies to --backend scripted")
    if args.backend == "moshi":
        engine_options = {"compile": args.compile, "quantize": args.quantize}
    elif args.compile is not None or args.quantize is not None:
        raise ValueError("--compile and --quantize only apply to --backend moshi")
    return ServerConfig(
        backend=args.backend,
        model=args.model or (DEFAULT_MOSHI_MODEL if args.backend == "moshi" else None),
        host=args.host,
        port=args.port,
        max_sessions=args.max_sessions,
        auth_token=args.auth_token or None,
        allowed_origins=args.allowed_origins,
        record_dir=args.record,
        ssl_cert=args.ssl_cert,
        ssl_key=args.ssl_key,
        barge_in=args.barge_in,
        device=args.device,
        dtype=args.dtype,
        engine_options=engine_options,
        limits=SessionLimits(idle_timeout_s=args.idle_timeout, max_session_s=args.max_session_seconds),
        vad=vad,
        max_send_lag_s=args.max_send_lag,
        clock_stats_path=args.clock_stats,
        captions=None if args.captions in (None, "off", "none") else args.captions,
        captions_device=args.captions_device or ("cuda" if (args.device or "").startswith("cuda") else "cpu"),
    )


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


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = config_from_args(args)
        engine = build_server_engine(config)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"assistant serve: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve_forever(config, engine))
    except ValueError as exc:  # e.g. an unknown --captions model
        print(f"assistant serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"assistant serve: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0
