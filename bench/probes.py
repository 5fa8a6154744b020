"""The probes of `assistant bench reliability` beyond fuzz and churn, each measured while a healthy
client streams a /ws session in real time on the same server:

- full disk: a recording server on a disk that fills (a tmpfs half the size of what the first
  sessions record, when root; else a directory it cannot write): sessions that were recording and
  new ones must go on, unrecorded;
- odd text: lone surrogates, NUL, over-long and other odd strings in every prompt field of the four
  protocols, on a model that takes prompts: typed errors only, no traceback;
- prompt storm: clients asking for a new prompt every frame: a restart a second each, `rate_limited`
  for the rest, and the prefill bounded per tick;
- long session: one Live session past the model's context window, its persona pinned: the session
  goes on, and the Live usage event reports the context's real fill;
- big static file: a 64 MB asset of a `--moshi-ui` build fetched several times;
Each returns its figures as a dict; bench/reliability.py runs them (and the idle slot holders of
bench/idle_holders.py) and prints them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np

from bench.loopback import HealthyClient, Server, gaps_by_phase
from bench.traffic import FRAME_BYTES, STARTS

PERSONAPLEX_TINY = Path(__file__).resolve().parents[1] / "tests" / "data" / "personaplex_tiny"  # a checkout's
SILENCE = b"\x00" * FRAME_BYTES
RECORDED_BYTES_PER_S = 24000 * 2 * 2  # a recording: stereo (user, assistant) 16-bit at 24 kHz
STORM_CLIENTS = 8
WAVE = 4  # full disk: sessions recording at once


async def stream(ws, seconds: float, stop: asyncio.Event | None = None) -> None:
    """Silence in 80 ms frames, paced by the wall clock, for `seconds` or until `stop`."""
    t0 = time.monotonic()
    for n in range(int(seconds * 12.5)):
        if stop is not None and stop.is_set():
            return
        await ws.send(SILENCE)
        await asyncio.sleep(max(0.0, t0 + (n + 1) * 0.08 - time.monotonic()))


class Listener:
    """Reads a websocket in the background: the JSON events (audio and other binary messages
    counted), and how it closed."""

    def __init__(self, ws):
        self.ws = ws
        self.events: list[dict] = []
        self.binary = 0
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                if isinstance(message, bytes):
                    self.binary += 1
                else:
                    self.events.append(json.loads(message))

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("type") == kind]

    async def wait_for(self, *kinds: str, timeout_s: float = 30.0) -> dict | None:
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline and not self.task.done():
            for event in self.events[seen:]:
                if event.get("type") in kinds:
                    return event
            seen = len(self.events)
            await asyncio.sleep(0.01)
        return next((e for e in self.events[seen:] if e.get("type") in kinds), None)


class Phases:
    """The healthy client of one server, and the phases its long gaps are filed under."""

    def __init__(self, server: Server, out: Path):
        self.healthy = HealthyClient(server.url("/ws"), out)
        self.started: list[tuple[str, float]] = [("start-up", time.time())]

    async def __aenter__(self) -> Phases:
        await self.healthy.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.healthy.stop()

    def begin(self, name: str) -> None:
        self.started.append((name, time.time()))

    def largest_gap_ms(self, name: str) -> float | None:
        """The healthy client's largest gap over 120 ms that began in phase `name` (None: none)."""
        return gaps_by_phase(self.healthy.gaps, self.started).get(name)


# -- full disk -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def small_disk(directory: Path, size_kib: int) -> Iterator[tuple[Path | None, str]]:
    """(a directory, what it is): a tmpfs of `size_kib` when root may mount one, else a directory
    this user cannot write; (None, why not) when neither can be had (root without mount rights)."""
    directory.mkdir(parents=True)
    if os.geteuid() == 0:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(directory)], capture_output=True
        )
        if mounted.returncode != 0:
            yield None, f"root, but no tmpfs: {mounted.stderr.decode().strip()}"
            return
        try:
            yield directory, f"{size_kib} KiB tmpfs"
        finally:
            subprocess.run(["umount", "-l", str(directory)], check=False)
        return
    directory.chmod(0o555)
    try:
        yield directory, "read-only directory"
    finally:
        directory.chmod(0o755)


async def recorded_session(server: Server, seconds: float) -> str:
    """A /ws session streaming `seconds` then ending itself: how it ended ("client_ended", or what
    else the server said or did)."""
    from websockets.asyncio.client import connect

    async with connect(server.url("/ws"), open_timeout=10) as ws:
        listener = Listener(ws)
        await ws.send(json.dumps(STARTS["/ws"]))
        if await listener.wait_for("session.ready", "error") is None or not listener.of("session.ready"):
            return f"not started: {listener.events[-1:] or ws.close_code}"
        await stream(ws, seconds)
        await ws.send(json.dumps({"type": "session.end"}))
        ended = await listener.wait_for("session.ended")
        errors = [e["code"] for e in listener.of("error")]
        if ended is None:
            return f"closed {ws.close_code} without session.ended"
        return ended["reason"] if not errors else f"{ended['reason']} after errors {errors}"


async def full_disk(workdir: Path, args) -> dict:
    """Two waves of WAVE sessions recording: the first fills the disk (it holds half of what they
    record), the second starts on the full disk."""
    size_kib = max(256, int(WAVE * args.disk_seconds * RECORDED_BYTES_PER_S / 2 / 1024))
    with small_disk(workdir / "disk", size_kib) as (directory, kind):
        if directory is None:
            return {"skipped": kind}
        serve = ["--backend", "scripted", "--captions", "off", "--record", str(directory / "sessions")]
        with Server([*serve, "--record-min-free-mb", "0.25"], workdir / "full-disk.log") as server:
            async with Phases(server, workdir / "healthy-disk.json") as phases:
                ends: list[str] = []
                for wave in ("recording while the disk fills", "new sessions on the full disk"):
                    phases.begin(wave)
                    ends += await asyncio.gather(
                        *(recorded_session(server, args.disk_seconds) for _ in range(WAVE))
                    )
                phases.begin("end")
            status, health = server.health()
            return {
                "disk": kind,
                "sessions": len(ends),
                "ended_other_than_asked": [e for e in ends if e != "client_ended"],
                "healthz": f"{status} {health.get('status')}",
                "recording": health.get("recording"),
                "recording_error": health.get("recording_error"),
                "failures": server.metric("assistant_recording_failures_total"),
                "warnings": server.log_path.read_text().count("goes on unrecorded"),
                "largest_gap_ms": max(
                    (phases.largest_gap_ms(w) or 0.0)
                    for w in ("recording while the disk fills", "new sessions on the full disk")
                ),
                "tracebacks": server.tracebacks(),
            }


# -- odd text, prompt storm and a long session, on a model that takes prompts --------------------------
ODD_TEXT = [
    "You are \ud800 a pirate.",  # a lone high surrogate (valid JSON: "\ud800")
    "\udfff",  # a lone low surrogate
    "a\x00b",  # NUL
    "x" * 70000,  # longer than any prompt field takes
    "\ufeff\u202e\u200b You are kind.",  # BOM, right-to-left override, zero-width space
    "e" + "\u0301" * 3000,  # one letter and three thousand combining accents
    "\U0001f9d1\u200d\U0001f680 \U0010ffff \uffff",  # emoji with a joiner, noncharacters
    "\ud83d\ude00 is a grin",  # a surrogate pair: well-formed, one emoji
]


def random_text(rng: random.Random) -> str:
    """Random code points, surrogates included, of random length."""
    ranges = [(0, 0x7F), (0x80, 0xD7FF), (0xD800, 0xDFFF), (0xE000, 0x10FFFF)]
    picks = [rng.choice(ranges) for _ in range(rng.randrange(1, 60))]
    return "".join(chr(rng.randint(lo, hi)) for lo, hi in picks)


def start_with(path: str, text: str) -> dict:
    """`path`'s session start with `text` as its instructions (Realtime has none: it starts at connect)."""
    start = json.loads(json.dumps(STARTS[path]))
    (start if path == "/ws" else start["session"])["instructions"] = text
    return start


def prompt_updates(path: str, text: str) -> list[dict]:
    """The messages that put `text` in each prompt field of a started session on `path`."""
    if path == "/ws":
        return [{"type": "session.update", "instructions": text}, {"type": "session.update", "voice": text}]
    if path == "/v1/realtime":
        realtime = {"type": "realtime"}
        return [
            {"type": "session.update", "session": {**realtime, "instructions": text}},
            {"type": "session.update", "session": {**realtime, "audio": {"output": {"voice": text}}}},
        ]
    return [{"type": "session.instructions.append", "content": text}]


# The answer to each message that carries a prompt (Realtime's session.created is its start).
ANSWERS = ("error", "session.ready", "session.updated", "session.started", "session.instructions.appended")


async def ask(ws, listener: Listener, message: dict | None) -> str:
    """Send `message` (None: only wait for the connection's first answer) and name its answer."""
    seen = len(listener.events)
    if message is not None:
        await ws.send(json.dumps(message))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not listener.task.done():
        for event in listener.events[seen:]:
            if event.get("type") == "error":
                return f"error {event.get('error', event).get('code')}"
            if event.get("type") in ANSWERS or event.get("type") == "session.created":
                return "accepted"
        await asyncio.sleep(0.005)
    return f"no answer (close {ws.close_code})"


async def odd_text(server: Server, args) -> dict:
    """Every odd string into every prompt field of the four protocols: answers by kind."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

    rng = random.Random(args.seed)
    texts = ODD_TEXT + [random_text(rng) for _ in range(args.odd_texts)]
    answers: dict[str, int] = {}

    def tally(answer: str) -> None:
        answers[answer] = answers.get(answer, 0) + 1

    for path in ("/ws", "/v1/live/sessions"):  # session starts that carry the text, one per connection
        for text in texts:
            async with connect(server.url(path), max_size=None) as ws:
                tally(await ask(ws, Listener(ws), start_with(path, text)))
    for path in ("/ws", "/v1/realtime", "/v1/live/sessions"):  # a started session's prompt fields
        async with connect(
            server.url(path + ("?model=bench" if path == "/v1/realtime" else "")), max_size=None
        ) as ws:
            listener = Listener(ws)
            await ask(ws, listener, STARTS[path] if path != "/v1/realtime" else None)
            for text in texts:
                for message in prompt_updates(path, text):
                    tally(await ask(ws, listener, message))
    # /api/chat: the role is the query string's text_prompt, percent-encoded UTF-8 (a surrogate as the
    # bytes Python would give it, which no UTF-8 decoder takes); answered by the handshake or a refusal.
    for text in texts:
        encoded = quote(text.encode("utf-8", "surrogatepass"), safe="")
        try:
            async with connect(server.url(f"/api/chat?text_prompt={encoded}"), open_timeout=10) as ws:
                first = await asyncio.wait_for(ws.recv(), 10)
                tally(
                    {b"\x00": "accepted", b"\x05": "error (/api/chat)"}.get(
                        first[:1], f"/api/chat {first[:1]!r}"
                    )
                )
        except ConnectionClosed as exc:
            tally(f"/api/chat close {exc.rcvd.code if exc.rcvd else None}")
        except InvalidStatus as exc:
            tally(f"/api/chat HTTP {exc.response.status_code}")
        except InvalidMessage as exc:  # aiohttp's answer to a request line over its limit, in HTTP/1.0
            tally(f"/api/chat refused: {str(exc.__cause__).rsplit(': ', 1)[-1]}")
    return {"strings": len(texts), "messages": sum(answers.values()), "answers": answers}


async def storm_client(server: Server, k: int, stop: asyncio.Event) -> tuple[int, int, int]:
    """A /ws session asking for a new prompt every 80 ms: (asked, accepted, refused rate_limited)."""
    from websockets.asyncio.client import connect

    async with connect(server.url("/ws")) as ws:
        listener = Listener(ws)
        await ws.send(json.dumps(STARTS["/ws"]))
        await listener.wait_for("session.ready")
        asked = 0
        t0 = time.monotonic()
        while not stop.is_set():
            asked += 1
            await ws.send(
                json.dumps({"type": "session.update", "instructions": f"You are storm {k}.{asked}."})
            )
            await ws.send(SILENCE)
            await asyncio.sleep(max(0.0, t0 + asked * 0.08 - time.monotonic()))
        await asyncio.sleep(0.5)
        refused = sum(1 for e in listener.of("error") if e["code"] == "rate_limited")
        return asked, len(listener.of("session.updated")), refused


async def prompt_storm(server: Server, args) -> dict:
    stop = asyncio.Event()
    t0 = time.monotonic()
    clients = [asyncio.create_task(storm_client(server, k, stop)) for k in range(STORM_CLIENTS)]
    await asyncio.sleep(args.storm_seconds)
    stop.set()
    results = await asyncio.gather(*clients)
    return {
        "clients": STORM_CLIENTS,
        "seconds": round(time.monotonic() - t0, 1),
        "asked": sum(r[0] for r in results),
        "accepted": sum(r[1] for r in results),
        "rate_limited": sum(r[2] for r in results),
    }


async def long_session(server: Server, args) -> dict:
    """One Live session with a persona, streaming past the model's context window."""
    from websockets.asyncio.client import connect

    async with connect(server.url("/v1/live/sessions"), max_size=None) as ws:
        listener = Listener(ws)
        start = json.loads(json.dumps(STARTS["/v1/live/sessions"]))
        start["session"]["instructions"] = "You are a patient teacher of astronomy."
        await ws.send(json.dumps(start))
        await listener.wait_for("session.started")
        pcm = np.zeros(1920, "<i2").tobytes()
        t0 = time.monotonic()
        for n in range(int(args.long_session_s * 12.5)):
            audio = {"type": "session.input_audio.append", "audio": _b64(pcm)}
            await ws.send(json.dumps(audio))
            await asyncio.sleep(max(0.0, t0 + (n + 1) * 0.08 - time.monotonic()))
        usage = listener.of("session.usage.updated")
        closed = listener.of("session.closed")
        await ws.close()
    ratios = [u.get("context_window", {}).get("usage_ratio") for u in usage]
    return {
        "seconds": round(time.monotonic() - t0, 1),
        "audio_deltas": len(listener.of("session.output_audio.delta")),
        "still_live": not closed,
        "usage_ratio_first_last": (ratios[0], ratios[-1]) if ratios else None,
        "errors": [e["error"]["code"] for e in listener.of("error")],
    }


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


async def prompted_model(workdir: Path, args) -> dict:
    """The tiny PersonaPlex checkpoint of a checkout on CPU, its persona pinned: odd text, prompt
    storm, long session."""
    if not PERSONAPLEX_TINY.is_dir():
        return {"skipped": f"no {PERSONAPLEX_TINY} (run from a checkout)"}
    serve = ["--backend", "moshi", "--model", str(PERSONAPLEX_TINY), "--device", "cpu", "--no-compile"]
    serve += [
        "--captions",
        "off",
        "--max-sessions",
        str(STORM_CLIENTS + 3),
        "--max-connections-per-client",
        "0",
    ]
    figures: dict = {}
    with Server(serve, workdir / "prompted.log", start_s=300) as server:
        async with Phases(server, workdir / "healthy-prompted.json") as phases:
            for name, probe in (
                ("odd text", odd_text),
                ("prompt storm", prompt_storm),
                ("long session", long_session),
            ):
                phases.begin(name)
                before = server.tracebacks()
                figures[name] = await probe(server, args)
                figures[name]["tracebacks"] = server.tracebacks() - before
            phases.begin("end")
        for name in figures:
            figures[name]["largest_gap_ms"] = phases.largest_gap_ms(name)
        figures["healthy_frames"] = phases.healthy.frames
    return figures


# -- on the main server: a big static file, idle slot holders -------------------------------------------
def moshi_ui_with_a_big_file(directory: Path, megabytes: int) -> Path:
    """A --moshi-ui build: an index.html and `megabytes` of one asset."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "index.html").write_text("<!doctype html><title>ui</title>\n")
    with open(directory / "big.bin", "wb") as f:
        for _ in range(megabytes):
            f.write(os.urandom(1 << 20))
    return directory


async def big_static_file(server: Server, args) -> dict:
    """Fetch the big asset `args.static_fetches` times, one after another; then once conditionally."""
    rss_before = server.rss_mb()
    seconds = []
    sizes = set()
    for _ in range(args.static_fetches):
        t0 = time.monotonic()
        status, body = await asyncio.to_thread(server.get, "/big.bin")
        seconds.append(time.monotonic() - t0)
        sizes.add((status, len(body)))
    etag = await asyncio.to_thread(_etag, server, "/big.bin")
    revalidated, _ = await asyncio.to_thread(server.get, "/big.bin", {"If-None-Match": etag or ""})
    return {
        "fetches": len(seconds),
        "answers": sorted(f"{s} {n / 2**20:.0f} MiB" for s, n in sizes),
        "seconds_each": [round(s, 2) for s in seconds],
        "revalidated": revalidated,
        "rss_mb": (round(rss_before, 1), round(server.rss_mb(), 1)),
    }


def _etag(server: Server, path: str) -> str | None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("HEAD", path)
        return conn.getresponse().getheader("ETag")
    finally:
        conn.close()


# -- the report ----------------------------------------------------------------------------------------
def _gap(ms: float | None) -> str:
    return "under 120 ms" if ms is None else f"{ms} ms"


def print_probes(figures: dict, main_gaps: dict[str, float]) -> None:
    """The probes' lines of `assistant bench reliability`'s report; `main_gaps`: the largest gaps by
    phase of the main server's healthy client."""
    b = figures["big_static_file"]
    print(
        f"big static file: {b['fetches']} fetches ({', '.join(b['answers'])}), {min(b['seconds_each'])}-"
        f"{max(b['seconds_each'])} s each, revalidated {b['revalidated']}; server RSS {b['rss_mb'][0]} -> "
        f"{b['rss_mb'][1]} MB; healthy gap {_gap(main_gaps.get('big static file'))}"
    )
    d = figures["full_disk"]
    if "skipped" in d:
        print(f"full disk: skipped ({d['skipped']})")
    else:
        print(
            f"full disk ({d['disk']}): {d['sessions']} sessions, {len(d['ended_other_than_asked'])} ended "
            f"other than asked {d['ended_other_than_asked'] or ''}; /healthz {d['healthz']}, recording "
            f"{d['recording']} ({d['recording_error']}); failures {d['failures']}, {d['warnings']} warnings; "
            f"healthy gap {_gap(d['largest_gap_ms'] or None)}; {d['tracebacks']} tracebacks"
        )
    i = figures["idle_holders"]
    closes = ", ".join(f"{k} x{v}" for k, v in sorted(i["closes"].items()))
    print(
        f"idle slot holders: {i['holders']} from one address for {i['seconds']} s ({i['server']}): "
        f"closed {closes}; /readyz not 200 {i['readyz_not_200']} times; "
        f"real users in {i['real_users']}; slots held idle: {i['idle_slots_while_holding']} while holding, "
        f"{i['idle_slots_after_timeout']} after the start timeout ({i['holders_open_after_timeout']} holders "
        f"still open); healthy gap {_gap(i['largest_gap_ms'])}; {i['tracebacks']} tracebacks"
    )
    p = figures["prompted_model"]
    if "skipped" in p:
        print(f"odd text, prompt storm, long session: skipped ({p['skipped']})")
        return
    o = p["odd text"]
    answers = ", ".join(f"{k} {v}" for k, v in sorted(o["answers"].items()))
    print(
        f"odd text: {o['strings']} strings, {o['messages']} messages: {answers}; {o['tracebacks']} tracebacks; "
        f"healthy gap {_gap(o['largest_gap_ms'])}"
    )
    s = p["prompt storm"]
    print(
        f"prompt storm: {s['clients']} clients for {s['seconds']} s: {s['asked']} new prompts asked, "
        f"{s['accepted']} taken, {s['rate_limited']} rate_limited; {s['tracebacks']} tracebacks; "
        f"healthy gap {_gap(s['largest_gap_ms'])}"
    )
    long = p["long session"]
    print(
        f"long session: {long['seconds']} s on /v1/live/sessions, {long['audio_deltas']} audio deltas, "
        f"{'still live' if long['still_live'] else 'closed'}, usage ratio first/last {long['usage_ratio_first_last']}, "
        f"errors {long['errors']}; {long['tracebacks']} tracebacks; healthy gap {_gap(long['largest_gap_ms'])}"
    )
