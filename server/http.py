"""The HTTP side of the port: auth and Origin checks at the websocket handshake, /healthz and
/readyz (for probes and balancers), /metrics and the static page."""

from __future__ import annotations

import dataclasses
import hmac
import http
import inspect
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
# websockets' parser and counts them; the connection then answers 405/400 before anything else
# looks at the request. The body's bytes are dropped as they arrive, never read as websocket frames.

_BODY_HEADERS = (b"content-length", b"transfer-encoding")
_MAX_BODY_HEADERS = 64  # past this many, the lines go to websockets, which drops the request unanswered


def _announces_body(line: bytes | bytearray) -> bool:
    name, colon, value = bytes(line).partition(b":")
    name = name.strip().lower()
    if not colon or name not in _BODY_HEADERS:
        return False
    return name == b"transfer-encoding" or value.strip() != b"0"  # "Content-Length: 0" is no body


class _BodyAwareReader(StreamReader):
    """websockets' stream reader, but the request head's body headers are counted, not passed on.
    After the head, websockets' own methods serve every read (no extra layer per frame), except
    that with a body the frame parser is held until the refusal replaces it."""

    def __init__(self) -> None:
        super().__init__()
        self.body_headers = 0
        self.read_line = self._read_head_line
        self.read_exact = self._read_exact_after_head

    def _read_head_line(self, m: int, too_long_exc_type: type[Exception] = RuntimeError):
        while True:
            line = yield from StreamReader.read_line(self, m, too_long_exc_type)
            if line.strip() == b"":  # the end of the head
                del self.read_line
                if not self.body_headers:
                    del self.read_exact
                return line
            if self.body_headers >= _MAX_BODY_HEADERS or not _announces_body(line):
                return line
            self.body_headers += 1

    def _read_exact_after_head(self, n: int):
        while self.body_headers and not self.eof:
            self.discard()
            yield
        return (yield from StreamReader.read_exact(self, n))


def _body_refusal(reader: StreamReader, request: Request) -> Response | None:
    if not getattr(reader, "body_headers", 0):
        return None
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request.method, {"Connection": "close"})
    response = _response(
        400, "text/plain; charset=utf-8", b"a request body is not accepted here\n", {"Connection": "close"}
    )
    return _for_method(response, request.method)


def _method_not_allowed(method: str, extra: dict[str, str] | None = None) -> Response:
    return _response(
        405,
        "text/plain; charset=utf-8",
        f"{method} is not served here; use GET\n".encode(),
        {"Allow": "GET, HEAD", **(extra or {})},
    )


def _for_method(response: Response, method: str) -> Response:
    """HEAD gets the GET's headers (Content-Length included) and no body."""
    return dataclasses.replace(response, body=b"") if method == "HEAD" else response


class BodyAwareConnection(ServerConnection):
    """websockets' server connection, whose handshake answers a request that carries a body (405,
    or 400 for GET and HEAD) before `process_request` or an upgrade could see it."""

    def __init__(self, protocol, *args, **kwargs) -> None:
        protocol.reader = _BodyAwareReader()
        protocol.parser = protocol.parse()  # restart the parser on the new reader (no data yet)
        next(protocol.parser)
        super().__init__(protocol, *args, **kwargs)

    async def handshake(self, process_request=None, *args, **kwargs) -> None:
        async def refuse_bodies(connection: ServerConnection, request: Request) -> Response | None:
            refusal = _body_refusal(connection.protocol.reader, request)
            if refusal is not None or process_request is None:
                return refusal
            response = process_request(connection, request)
            return (await response) if inspect.isawaitable(response) else response

        await super().handshake(refuse_bodies, *args, **kwargs)


def make_process_request(ctx):
    """The handshake hook: answers plain HTTP requests, lets authorised websocket upgrades through."""
    config = ctx.config

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
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
            return _method_not_allowed(method)
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
        return _for_method(response, method)

    return process_request
