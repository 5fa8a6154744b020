"""HTTP on the server's port (web page, health, metrics) and the handshake checks: auth, origin,
capacity. Real servers on loopback, real websocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time

import pytest
from server_utils import NativeClient, http_get, start_server
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server.static import resolve


@pytest.fixture(scope="module")
def server():
    # Verbose: every line the server logs is checked for what it must not say.
    with start_server("--backend", "silence", "--max-sessions", "2", "--verbose") as address:
        yield address


def test_web_page_and_static_files(server):
    status, headers, body = http_get(server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"<html" in body.lower()
    status, headers, _ = http_get(server, "/capture-worklet.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    status, headers, _ = http_get(server, "/style.css")
    assert status == 200 and headers["content-type"].startswith("text/css")


@pytest.mark.parametrize(
    "path",
    [
        "/nope.html",
        "/../pyproject.toml",
        "/%2e%2e/pyproject.toml",
        "/..%2fpyproject.toml",
        "/.hidden",
        "//etc/passwd",
        "/web/",
        "/%00",
        "/" + "a" * 5000,  # longer than any file name the OS takes
        "/" + "b/" * 2000,
    ],
)
def test_no_traversal_no_listing_404s(server, path):
    status, _, body = http_get(server, path)
    assert status == 404
    assert b"[project]" not in body and b"root:" not in body


def test_resolve_refuses_symlinks_out_of_root(tmp_path):
    root = tmp_path / "web"
    root.mkdir()
    (root / "index.html").write_text("<html>")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "sub").mkdir()
    assert resolve(root, "/") == (root / "index.html").resolve()
    assert resolve(root, "/link.txt") is None
    assert resolve(root, "/sub") is None and resolve(root, "/sub/") is None


def test_healthz_reports_capacity_and_backend(server):
    status, headers, body = http_get(server, "/healthz")
    info = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert info["status"] == "ok" and info["ready"] is True and info["backend"] == "silence"
    assert info["max_sessions"] == 2 and info["capacity_left"] == 2 and info["live_sessions"] == 0
    status, _, body = http_get(server, "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True and json.loads(body)["capacity_left"] == 2


async def test_capacity_refusal_with_1013_and_healthz_shows_it(server):
    async with connect(server.ws_url) as a, connect(server.ws_url) as b:
        ca, cb = NativeClient(a), NativeClient(b)
        await ca.start()
        await cb.start()
        status, _, body = http_get(server, "/healthz")
        info = json.loads(body)
        assert info["live_sessions"] == 2 and info["capacity_left"] == 0
        # Full is alive (liveness passes) but not ready (a readiness probe sends sessions elsewhere).
        assert status == 200 and info["status"] == "full" and info["ready"] is False
        assert http_get(server, "/readyz")[0] == 503
        async with connect(server.ws_url) as c:
            await asyncio.wait_for(c.wait_closed(), 5)
            assert c.close_code == 1013 and "full" in c.close_reason
    for _ in range(50):  # the slots come back once the clients have gone
        if json.loads(http_get(server, "/healthz")[2])["capacity_left"] == 2:
            break
        await asyncio.sleep(0.1)
    assert json.loads(http_get(server, "/healthz")[2])["capacity_left"] == 2
    metrics = http_get(server, "/metrics")[2].decode()
    assert "assistant_refused_total 1" in metrics


def test_metrics_in_prometheus_text(server):
    status, headers, body = http_get(server, "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in (
        "assistant_step_ms_bucket",
        "assistant_live_sessions",
        "assistant_underruns_total",
        "assistant_drops_total",
        "assistant_barge_ins_total",
        "assistant_errors_total",
    ):
        assert name in text
    assert "# TYPE assistant_step_ms histogram" in text
    for line in text.splitlines():
        assert line.startswith("#") or len(line.split(" ")) == 2, line


async def test_origin_checks(server):
    own = f"http://localhost:{server.port}"
    async with connect(server.ws_url, origin=own) as ws:
        await NativeClient(ws).start()
    async with connect(server.ws_url, origin=f"http://127.0.0.1:{server.port}") as ws:
        await NativeClient(ws).start()
    with pytest.raises(InvalidStatus) as info:
        async with connect(server.ws_url, origin="http://evil.example"):
            pass
    assert info.value.response.status_code == 403
    # The page diagnoses a failed handshake with a plain GET of the same URL: the same answer.
    assert http_get(server, "/ws", {"Origin": "http://evil.example"})[0] == 403


async def test_auth_token_by_header_query_or_env():
    with start_server("--backend", "silence", env={"ASSISTANT_AUTH_TOKEN": "s3cret"}) as address:
        for kwargs, url in (
            ({}, address.ws_url),
            ({"additional_headers": {"Authorization": "Bearer nope"}}, address.ws_url),
            ({}, address.ws_url + "?token=nope"),
        ):
            with pytest.raises(InvalidStatus) as info:
                async with connect(url, **kwargs):
                    pass
            assert info.value.response.status_code == 401
        async with connect(address.ws_url, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            await NativeClient(ws).start()
        async with connect(address.ws_url + "?token=s3cret") as ws:
            await NativeClient(ws).start()
        # Health checks stay open for load balancers.
        assert http_get(address, "/healthz")[0] == 200
        # A plain GET of a websocket URL (the page's handshake diagnosis): the token first, then 426.
        status, _, body = http_get(address, "/ws")
        assert status == 401 and b"Bearer" in body
        status, headers, _ = http_get(address, "/ws?token=s3cret")
        assert status == 426 and headers["upgrade"] == "websocket"


async def test_protect_metrics_needs_the_token_but_probes_still_get_their_status():
    token = {"Authorization": "Bearer s3cret"}
    args = ("--backend", "silence", "--max-sessions", "1", "--auth-token", "s3cret", "--protect-metrics")
    with start_server(*args) as address:
        status, _, body = http_get(address, "/metrics")
        assert status == 401 and b"assistant_" not in body
        assert http_get(address, "/metrics", token)[0] == 200
        assert http_get(address, "/metrics?token=s3cret")[0] == 200
        # A probe without the token: the status code and words, none of the figures.
        status, _, body = http_get(address, "/healthz")
        assert status == 200 and json.loads(body) == {"status": "ok", "ready": True}
        assert json.loads(http_get(address, "/healthz", token)[2])["max_sessions"] == 1
        async with connect(address.ws_url, additional_headers=token) as ws:
            await NativeClient(ws).start()
            status, _, body = http_get(address, "/readyz")
            assert status == 503 and json.loads(body) == {"status": "full", "ready": False}
            assert json.loads(http_get(address, "/readyz", token)[2])["live_sessions"] == 1


def test_startup_prints_the_url(server):
    assert any(f"open http://127.0.0.1:{server.port}/" in line for line in server.output)


async def test_unknown_websocket_path_is_refused(server):
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://{server.host}:{server.port}/elsewhere"):
            pass
    assert info.value.response.status_code == 404


async def test_tls_serves_wss(tmp_path):
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found (needed to make a test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    with start_server("--backend", "silence", "--ssl-cert", str(cert), "--ssl-key", str(key)) as address:
        assert any("open https://" in line and "wss://" in line for line in address.output)
        context = ssl.create_default_context(cafile=str(cert))
        async with connect(f"wss://{address.host}:{address.port}/ws", ssl=context) as ws:
            ready = await NativeClient(ws).start()
            assert ready["frame_ms"] == 80
        # Static files over TLS take the chunked path (no sendfile through the TLS layer).
        import urllib.request

        page = urllib.request.urlopen(f"https://{address.host}:{address.port}/", context=context, timeout=10)
        assert page.status == 200 and b"<html" in page.read().lower()
    with pytest.raises(RuntimeError, match="go together"):
        with start_server("--backend", "silence", "--ssl-cert", str(cert)):
            pass


async def test_session_update_and_playback_position_over_the_wire(server):
    import numpy as np

    async with connect(server.ws_url) as ws:
        client = NativeClient(ws)
        ready = await client.start(48000, min_interrupt_ms=200)
        assert ready["sample_rate"] == 48000 and ready["options"]["min_interrupt_ms"] == 200
        await ws.send(
            json.dumps({"type": "session.update", "barge_in": "vad", "vad": {"min_silence_ms": 300}})
        )
        _, updated = await client.wait_for("session.updated")
        assert updated["options"]["barge_in"] == "vad"
        assert (
            updated["options"]["vad"]["min_silence_ms"] == 300
            and updated["options"]["min_interrupt_ms"] == 200
        )
        await ws.send(json.dumps({"type": "session.update", "vad": {"threshold": 0}}))
        _, error = await client.wait_for("error")
        assert error["code"] == "invalid_value" and "threshold" in error["message"]
        await client.stream(np.zeros(48000 * 3 // 2, dtype="<i2"), sample_rate=48000)
        await ws.send(json.dumps({"type": "playback.position", "played_ms": 400}))
        await asyncio.sleep(1.1)
        stats = client.of("stats")[-1][1]
        assert stats["played_ms"] == 400 and stats["sent_ms"] >= 1000
        # 48 kHz out: one message per 80 ms frame; the resampler's blocks make sizes vary, but they
        # add up to 3840 samples a frame.
        sizes = [len(m) // 2 for _, m in client.audio]
        assert abs(sum(sizes) - 3840 * len(sizes)) <= 3840
        assert max(sizes) <= 1.5 * 3840


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH", "OPTIONS", "TRACE"])
def test_methods_other_than_get_and_head_get_405_with_allow(server, method):
    import http.client

    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request(method, "/healthz")
        resp = conn.getresponse()
        assert resp.status == 405 and resp.getheader("Allow") == "GET, HEAD"
        assert b"GET" in resp.read()
    finally:
        conn.close()


def _raw_exchange(server, head: bytes, body_chunks=(), timeout=10.0) -> bytes:
    """Send a request head and a body (possibly larger than any buffer), then read the answer."""
    import socket

    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and stopped reading: the answer is already on its way
        raw = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                raw += chunk
    return raw


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/healthz", 405),
        ("POST", "/", 405),
        ("PUT", "/ws", 405),
        ("POST", "/v1/realtime", 405),
        ("GET", "/healthz", 400),
        ("GET", "/ws", 400),
    ],
)
def test_a_request_with_a_body_gets_an_answer(server, method, path, status):
    # A status line, not a bare reset: the client learns that this port takes no request bodies.
    body = b'{"probe": true}'
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    raw = _raw_exchange(server, head, [body])
    assert raw.startswith(f"HTTP/1.1 {status} ".encode()), raw[:200]
    head_out = raw.partition(b"\r\n\r\n")[0].lower()
    if status == 405:
        assert b"allow: get, head" in head_out
    assert b"connection: close" in head_out


def test_large_and_chunked_bodies_are_answered_and_dropped(server):
    chunk = bytes(range(256)) * 256  # 64 KiB; the body bytes must never be read as frames
    head = f"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: {len(chunk) * 64}\r\n\r\n".encode()
    raw = _raw_exchange(server, head, [chunk] * 64)
    assert raw.startswith(b"HTTP/1.1 405 "), raw[:200]
    head = b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw = _raw_exchange(server, head, [b"10000\r\n" + chunk + b"\r\n"] * 8 + [b"0\r\n\r\n"])
    assert raw.startswith(b"HTTP/1.1 405 "), raw[:200]
    # The server is unharmed: HTTP and a websocket session still work.
    status, _, _ = http_get(server, "/healthz")
    assert status == 200

    async def session():
        async with connect(server.ws_url) as ws:
            return await NativeClient(ws).start()

    assert asyncio.run(session())["sample_rate"] == 24000


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \x01abc\r\n\r\nab",  # no valid value
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: 0\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
        b"PUT /ws HTTP/1.1\r\nHost: x\r\n  content-LENGTH  : 3\r\n\r\nabc",
    ],
)
def test_malformed_body_headers_get_400_without_an_error_in_the_log(server, head):
    # A request whose body cannot be framed is answered 400 and its connection closed (RFC 9112 6.3).
    raw = _raw_exchange(server, head)
    assert re.match(rb"HTTP/1\.[01] 400 ", raw), raw[:200]
    assert not [line for line in server.output if "Traceback" in line or "ERROR" in line]


def test_head_with_a_body_gets_400_and_no_body(server):
    raw = _raw_exchange(server, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and rest == b""


def test_a_client_that_leaves_in_the_middle_of_a_body_costs_nothing(server):
    import socket

    for how in ("fin", "reset"):
        sock = socket.create_connection((server.host, server.port), timeout=10)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
        if how == "fin":
            sock.shutdown(socket.SHUT_WR)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    assert http_get(server, "/healthz")[0] == 200
    assert not [line for line in server.output if "Traceback" in line or "ERROR" in line]


def test_an_empty_body_header_is_an_ordinary_request(server):
    raw = _raw_exchange(
        server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("path", ["/", "/healthz", "/metrics"])
def test_head_gets_the_get_headers_and_no_body(server, path):
    import socket

    status, headers, body = http_get(server, path)
    # Read HEAD's raw bytes: a body after the headers would be a protocol error a client may not see.
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and rest == b""
    assert f"content-type: {headers['content-type']}".encode() in head.lower()
    if path == "/":
        assert f"content-length: {len(body)}".encode() in head.lower()


def test_a_long_junk_path_gets_404_and_stays_out_of_the_log(server):
    assert http_get(server, "/" + "junk-" * 800)[0] == 404
    raw = _raw_exchange(server, b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", raw), raw[:200]  # past the request-line limit
    assert http_get(server, "/healthz")[0] == 200
    log = "\n".join(server.output)
    assert "junk-junk" not in log and "xxxxxxxx" not in log and "Traceback" not in log


def test_a_huge_announced_body_is_answered_at_once_and_dropped_in_constant_memory(server):
    import socket

    from server.memory import rss_mb

    before_mb = peak_mb = rss_mb(server.proc.pid)
    sent = 0
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        announced = 3_700_000_000
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % announced)
        assert sock.recv(65536).startswith(b"HTTP/1.1 405 ")  # before any of the body was sent
        block = bytes(1 << 20)
        deadline = time.monotonic() + 3.0
        # Never past the announced length: a fast box sends all 3.7 GB in 3 s, and the server,
        # having read the whole body, closes; bytes beyond it would meet a reset.
        while time.monotonic() < deadline and sent + len(block) <= announced:
            sock.sendall(block)
            sent += len(block)
            peak_mb = max(peak_mb, rss_mb(server.proc.pid))
    assert sent >= 64 << 20, f"the server stopped reading the body after {sent >> 20} MB"
    assert peak_mb - before_mb < 16, f"RSS {before_mb:.0f} -> {peak_mb:.0f} MB while {sent >> 20} MB arrived"
    assert http_get(server, "/healthz")[0] == 200


async def test_permessage_deflate_is_declined_so_a_deflate_bomb_has_nothing_to_inflate(server):
    import os
    import socket
    import zlib

    import numpy as np
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    async with connect(server.ws_url) as ws:  # the client offers permessage-deflate
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
    # A frame flagged compressed anyway (RSV1): 64 MiB of zeros in 64 KiB, a protocol error (1002).
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = deflate.compress(bytes(64 << 20)) + deflate.flush(zlib.Z_SYNC_FLUSH)
    mask = os.urandom(4)
    masked = np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), len(payload))
    frame = bytes([0xC2, 0x80 | 127]) + len(payload).to_bytes(8, "big") + mask + masked.tobytes()
    peer = ClientProtocol(parse_uri(server.ws_url))
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        peer.send_request(peer.connect())
        sock.sendall(b"".join(peer.data_to_send()))
        sock.sendall(frame)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                peer.receive_data(chunk)
    assert peer.close_rcvd is not None and peer.close_rcvd.code == 1002
    assert http_get(server, "/healthz")[0] == 200


def test_a_connection_that_never_finishes_its_request_is_closed():
    """No request head held open for ever (one socket each: an easy way to pile up idle sockets)."""
    import socket

    from server.app import HTTP_IDLE_TIMEOUT_S

    with start_server("--backend", "silence") as address:
        with socket.create_connection((address.host, address.port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            t0 = time.monotonic()
            assert sock.recv(65536) == b""
            closed_after_s = time.monotonic() - t0
        assert HTTP_IDLE_TIMEOUT_S - 1 <= closed_after_s <= HTTP_IDLE_TIMEOUT_S + 5
