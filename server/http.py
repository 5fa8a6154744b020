"""The HTTP side of the port: auth and Origin checks at the websocket handshake, /healthz and
/readyz (for probes and balancers), /metrics and the static page."""

from __future__ import annotations

import dataclasses
import hmac
import http
import json
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.streams import StreamReader

from server import static

WEBSOCKET_PATHS = ("/ws", "/v1/realtime", "/v1/live/sessions", "/api/chat")
# The process is alive (503 only while draining: liveness, Docker HEALTHCHECK, HAProxy `check`) /
# it takes a new session now (503 when full or draining: a readiness probe).
HEALTH_PATHS = ("/healthz", "/readyz")
TOKEN_HINT = "missing or wrong token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN"


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


def health_response(health: dict, path: str, figures: bool) -> Response:
    """/healthz or /readyz from `ctx.healthz()`; without `figures` only the status words go out."""
    up = health["ready"] if path == "/readyz" else health["status"] != "draining"
    body = health if figures else {"status": health["status"], "ready": health["ready"]}
    return _response(200 if up else 503, "application/json", json.dumps(body).encode())


# -- requests with a body -----------------------------------------------------------------------
# websockets reads only a request's head and drops a request that announces a body without any
# answer. Nothing here takes a body, but a client that sends one (a POST, a health checker that
# posts) deserves a status line saying so. The reader below keeps the body headers away from
# websockets' parser and puts them back on the parsed request, so `process_request` answers it; the
# body's bytes are dropped as they arrive and never read as websocket frames.

_BODY_HEADERS = (b"content-length", b"transfer-encoding")
_MAX_HELD_HEADERS = 4  # more body headers than this: websockets refuses the request as before


class _BodyAwareReader(StreamReader):
    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[str, str]] = []
        self._head_read = False

    def read_line(self, m: int, too_long_exc_type: type[Exception] = RuntimeError):
        while True:
            line = yield from super().read_line(m, too_long_exc_type)
            if self._head_read:
                return line
            if line.strip() == b"":
                self._head_read = True
                return line
            name, colon, value = bytes(line).partition(b":")
            announces = name.strip().lower() in _BODY_HEADERS and value.strip() != b"0"
            if not colon or not announces or len(self.held) >= _MAX_HELD_HEADERS:
                return line
            self.held.append((name.strip().decode("latin-1"), value.strip().decode("latin-1")))

    def read_exact(self, n: int):
        # Reached only after the head, by websockets' frame parser. For a request with a body that
        # parser waits here until the refusal replaces it (the body is dropped meanwhile).
        while self.held:
            self.discard()
            yield
        return (yield from super().read_exact(n))


class BodyAwareConnection(ServerConnection):
    """websockets' server connection whose handshake answers requests that carry a body."""

    def __init__(self, protocol, *args, **kwargs) -> None:
        protocol.reader = _BodyAwareReader()
        protocol.parser = protocol.parse()  # restart the parser on the new reader (no data yet)
        next(protocol.parser)
        super().__init__(protocol, *args, **kwargs)


def _body_refusal(connection: ServerConnection, request: Request) -> Response | None:
    reader = connection.protocol.reader
    held = getattr(reader, "held", [])
    if not held:
        return None
    for name, value in held:  # the request as sent, for anyone who looks at it later
        request.headers[name] = value
    method = request.method
    if method not in ("GET", "HEAD"):
        return _response(
            405,
            "text/plain; charset=utf-8",
            f"{method} is not served here; use GET\n".encode(),
            {"Allow": "GET, HEAD", "Connection": "close"},
        )
    return _response(
        400,
        "text/plain; charset=utf-8",
        b"a request body is not accepted here\n",
        {"Connection": "close"},
    )


def make_process_request(ctx):
    """The handshake hook: answers plain HTTP requests, lets authorised websocket upgrades through."""
    config = ctx.config

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        refusal = _body_refusal(connection, request)
        if refusal is not None:  # always refused: an upgrade would leave its frames unread
            return refusal
        path = urlsplit(request.path).path
        if path in WEBSOCKET_PATHS:
            if not check_auth(config.auth_token, request):
                return _text(401, TOKEN_HINT)
            if not check_origin(config.allowed_origins or [], request):
                return _text(
                    403, f"origin {request.headers.get('Origin')} is not allowed; see --allowed-origins"
                )
            return None
        method = getattr(request, "method", "GET")
        if method not in ("GET", "HEAD"):
            return _response(
                405,
                "text/plain; charset=utf-8",
                f"{method} is not served here; use GET\n".encode(),
                {"Allow": "GET, HEAD"},
            )
        # Probes carry no token: with --protect-metrics they still get the status, not the figures.
        authorised = not config.protect_metrics or check_auth(config.auth_token, request)
        if path in HEALTH_PATHS:
            response = health_response(ctx.healthz(), path, figures=authorised)
        elif path == "/metrics" and not authorised:
            response = _text(401, TOKEN_HINT)
        elif path == "/metrics":
            response = _response(
                200, "text/plain; version=0.0.4; charset=utf-8", ctx.metrics.render().encode()
            )
        elif path == "/v1/voices":
            response = _response(200, "application/json", json.dumps(ctx.voices()).encode())
        else:
            response = _response(*static.load(config.web_root, path))
        if method == "HEAD":  # the GET's headers (Content-Length included), no body
            response = dataclasses.replace(response, body=b"")
        return response

    return process_request
