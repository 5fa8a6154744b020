"""The HTTP side of the port (an aiohttp application): auth and Origin checks before a websocket
upgrade, /healthz and /readyz (for probes and balancers), /metrics, /v1/voices and the static page.

Only GET and HEAD are served; HEAD gets GET's headers and no body. Nothing here takes a request
body, but a client that sends one (a POST, a health checker that posts) gets a status line saying
so: 405 for other methods, 400 for GET and HEAD, with `Connection: close`; aiohttp then reads the
body into nothing, 64 KiB at a time (for at most its lingering time), before it closes the socket.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from aiohttp.http import HttpProcessingError

from server import static

# The process is alive (503 only while draining: liveness, Docker HEALTHCHECK, HAProxy `check`) /
# it takes a new session now (503 when full or draining: a readiness probe).
HEALTH_PATHS = ("/healthz", "/readyz")
TOKEN_HINT = "missing or wrong token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN"
ALLOWED_METHODS = "GET, HEAD"
# The built-in page changes with the server: browsers revalidate every file (a 304 when unchanged).
STATIC_CACHE_CONTROL = "no-cache"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("assistant.server")


def _response(
    status: int, content_type: str, body: bytes, extra: dict[str, str] | None = None
) -> web.Response:
    headers = {
        "Content-Type": content_type,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        **(extra or {}),
    }
    return web.Response(status=status, body=body, headers=headers)


def _text(status: int, message: str, extra: dict[str, str] | None = None) -> web.Response:
    return _response(status, "text/plain; charset=utf-8", (message + "\n").encode(), extra)


def check_auth(token: str | None, request: web.BaseRequest) -> bool:
    """Bearer header or ?token= query parameter, compared in constant time."""
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    offered = header[7:].strip() if header.lower().startswith("bearer ") else None
    if offered is None:
        offered = (parse_qs(urlsplit(request.raw_path).query).get("token") or [None])[0]
    return offered is not None and hmac.compare_digest(offered.encode(), token.encode())


def check_origin(allowed: list[str], request: web.BaseRequest) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # SDKs and CLIs send none; browsers always do
    return "*" in allowed or origin.rstrip("/") in allowed


def health_response(health: dict, path: str, figures: bool) -> web.Response:
    """/healthz or /readyz from `ctx.healthz()`; without `figures` only the status words go out."""
    up = health["ready"] if path == "/readyz" else health["status"] != "draining"
    body = health if figures else {"status": health["status"], "ready": health["ready"]}
    return _response(200 if up else 503, "application/json", json.dumps(body).encode())


def upgrade_required() -> web.Response:
    """The answer to a request for a websocket endpoint that is not a websocket upgrade."""
    return _text(
        426, "this is a websocket endpoint: connect with a websocket client", {"Upgrade": "websocket"}
    )


@web.middleware
async def get_and_head_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a request body (400, or 405 for another method) and other methods (405) before routing."""
    if request.body_exists:
        if request.method in ("GET", "HEAD"):
            response = _text(400, "a request body is not accepted here")
        else:
            response = _text(405, f"{request.method} is not served here; use GET", {"Allow": ALLOWED_METHODS})
        response.force_close()
        return response
    if request.method not in ("GET", "HEAD"):
        return _text(405, f"{request.method} is not served here; use GET", {"Allow": ALLOWED_METHODS})
    return await handler(request)


class MalformedRequestsInBrief(logging.Filter):
    """aiohttp answers a request it cannot parse with 400 and logs it as an error with a traceback;
    it is the client's mistake, so: one line at INFO, naming the kind, not the request's bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            log.info("answered a malformed HTTP request with 400 (%s)", type(error).__name__)
            return False
        return True


# aiohttp's server logs here (`web.AppRunner(logger=...)`).
server_log = logging.getLogger("assistant.server.http")
server_log.addFilter(MalformedRequestsInBrief())


def make_app(ctx, upgrades: dict[str, Handler]) -> web.Application:
    """The port's routes: each of `upgrades` (path -> websocket handler) behind the auth and Origin
    checks, then health, metrics, voices, and static files for every other path."""
    config = ctx.config

    def guarded(upgrade: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            if not check_auth(config.auth_token, request):
                return _text(401, TOKEN_HINT)
            if not check_origin(config.allowed_origins or [], request):
                return _text(
                    403, f"origin {request.headers.get('Origin')} is not allowed; see --allowed-origins"
                )
            return await upgrade(request)

        return checked

    def authorised(request: web.Request) -> bool:
        # Probes carry no token: with --protect-metrics they still get the status, not the figures.
        return not config.protect_metrics or check_auth(config.auth_token, request)

    async def health(request: web.Request) -> web.Response:
        return health_response(ctx.healthz(), request.path, figures=authorised(request))

    async def metrics(request: web.Request) -> web.Response:
        if not authorised(request):
            return _text(401, TOKEN_HINT)
        return _response(200, "text/plain; version=0.0.4; charset=utf-8", ctx.metrics.render().encode())

    async def voices(request: web.Request) -> web.Response:
        return _response(200, "application/json", json.dumps(ctx.voices()).encode())

    async def static_file(request: web.Request) -> web.StreamResponse:
        path = static.resolve(config.web_root, request.raw_path)
        if path is None:
            return _text(404, "404 not found")
        # Sent with sendfile (or read in chunks off the event loop), with ETag and Last-Modified.
        headers = {
            "Content-Type": static.content_type(path),
            "Cache-Control": STATIC_CACHE_CONTROL,
            "X-Content-Type-Options": "nosniff",
        }
        return web.FileResponse(path, headers=headers)

    app = web.Application(middlewares=[get_and_head_only])
    for path, upgrade in upgrades.items():
        app.router.add_get(path, guarded(upgrade))
    for path in HEALTH_PATHS:
        app.router.add_get(path, health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/voices", voices)
    app.router.add_get(r"/{path:(?s:.*)}", static_file)
    return app
