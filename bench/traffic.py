"""The traffic `assistant bench reliability` throws at a server: random and mutated messages for
every websocket endpoint (`fuzz_endpoint`), and sessions opened and ended at random (`churn`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import time
from typing import Protocol

from server.protocols.live import client_events as live_events
from server.protocols.realtime import client_events as realtime_events


class Target(Protocol):
    """The server under test, as the traffic sees it (bench/reliability.py's Server)."""

    def url(self, path: str) -> str: ...

    def health(self) -> tuple[int, dict]: ...


FRAME_BYTES = 1920 * 2
# Per endpoint: a message that starts a session, and event types worth mutating.
STARTS = {
    "/ws": {"type": "session.start", "sample_rate": 24000},
    "/v1/realtime": {"type": "session.update", "session": {"type": "realtime"}},
    "/v1/live/sessions": {
        "type": "session.start",
        "session": {"model": "bench", "audio": {"format": {"type": "audio/pcm", "rate": 24000}}},
    },
}
# Event types worth mutating, per endpoint; the OpenAI APIs' come from their own decoders. Live's
# session.close is left out (it would end the session a fuzz connection exercises), and one event
# of each API that the server refuses by design is kept in.
EVENT_TYPES = {
    "/ws": ["session.start", "session.update", "playback.position", "session.end"],
    "/v1/realtime": [*realtime_events.CLIENT_EVENTS, "conversation.item.delete"],
    "/v1/live/sessions": [e for e in live_events.CLIENT_EVENTS if e != "session.close"] + ["response.create"],
}


# -- fuzz --------------------------------------------------------------------------------------------
def random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63, 10**400, rng.randrange(-(10**6), 10**6)])
    if kind == 3:
        return rng.choice([0.5, -1e308, float("1e308"), 24000.0, rng.random() * 1e4])
    if kind in (4, 5):
        return rng.choice(["", "x" * rng.randrange(1, 3000), "é\u0000\ud7ff", "audio/pcm", "NATF2", "../etc"])
    if kind == 6:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(["type", "session", "audio", "x", "rate"]): random_json(rng, depth + 1) for _ in range(3)
    }


def mutate(value, rng: random.Random, depth: int = 0):
    """A copy of a JSON value with one place replaced by something random."""
    if isinstance(value, dict) and value and depth < 5 and rng.random() < 0.7:
        key = rng.choice(list(value))
        return {**value, key: mutate(value[key], rng, depth + 1)}
    return random_json(rng)


def fuzz_message(path: str, rng: random.Random) -> str | bytes:
    roll = rng.random()
    if roll < 0.15:
        return rng.randbytes(rng.choice([0, 1, 3, FRAME_BYTES, FRAME_BYTES + 1, rng.randrange(6000)]))
    if roll < 0.25:
        return rng.choice(["", "{", "[" * 3000 + "]" * 3000, "null", '{"type": 1}', "\u2028", "1e99999"])
    if roll < 0.40:
        return json.dumps(random_json(rng))
    events = EVENT_TYPES.get(path)
    if not events:  # a binary protocol (/api/chat): a kind byte and garbage
        return bytes([rng.randrange(5)]) + rng.randbytes(rng.randrange(400))
    event: dict = {"type": rng.choice(events)}
    if event["type"].endswith("append"):
        event["audio"] = base64.b64encode(rng.randbytes(rng.randrange(0, 4000))).decode()
    if rng.random() < 0.7:
        event = mutate(event if rng.random() < 0.5 else STARTS.get(path, event), rng)
    return json.dumps(event, allow_nan=True)


async def fuzz_endpoint(server: Target, path: str, total: int, args) -> dict:
    """`total` fuzz messages to `path` over parallel connections, each paced at args.rate msg/s."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    rng = random.Random(f"{args.seed}:{path}")
    sent = 0
    closes: dict[str, int] = {}

    async def drain(ws) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    async def one_connection(budget: int) -> None:
        nonlocal sent
        try:
            async with connect(server.url(path), max_size=None, open_timeout=10) as ws:
                reader = asyncio.create_task(drain(ws))
                if path in STARTS and rng.random() < 0.8:
                    await ws.send(json.dumps(STARTS[path]))
                t0 = time.monotonic()
                for i in range(budget):
                    await ws.send(fuzz_message(path, rng))
                    sent += 1
                    await asyncio.sleep(max(0.0, t0 + (i + 1) / args.rate - time.monotonic()))
                await ws.close()
                reader.cancel()
                code = ws.close_code
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
        except (InvalidStatus, OSError, TimeoutError) as exc:
            code = type(exc).__name__
        closes[str(code)] = closes.get(str(code), 0) + 1

    while sent < total:
        share = min(400, -(-(total - sent) // args.connections))  # a connection sends at most this many
        batch = [min(share, total - sent - k * share) for k in range(args.connections)]
        await asyncio.gather(*(one_connection(b) for b in batch if b > 0))
    status, _ = server.health()
    return {"messages": sent, "closes": closes, "healthz_after": status}


# -- churn -------------------------------------------------------------------------------------------
async def churn(server: Target, cycles: int, args) -> dict:
    """Workers open /ws sessions and end them at random: clean close, or a reset mid-frame."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    rng = random.Random(args.seed)
    done = refused = 0
    todo = cycles

    async def worker() -> None:
        nonlocal done, refused, todo
        while todo > 0:
            todo -= 1
            try:
                ws = await connect(server.url("/ws"), open_timeout=10)
                await ws.send(json.dumps(STARTS["/ws"]))
                for _ in range(rng.randrange(4)):
                    await ws.send(b"\x00" * FRAME_BYTES)
                    await asyncio.sleep(0.02)
                if rng.random() < 0.5:
                    await ws.send(b"\x00" * rng.randrange(1, FRAME_BYTES))  # half a frame, then gone
                    ws.transport.abort()
                else:
                    await ws.close()
                if ws.close_code == 1013:
                    refused += 1
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == 1013:
                    refused += 1
            except OSError:
                pass
            done += 1

    await asyncio.gather(*(worker() for _ in range(args.workers)))
    return {"cycles": done, "refused": refused}
