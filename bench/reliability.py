"""`assistant bench reliability`: hostile input, churn, a killed server and a drain, on loopback.

Starts `assistant serve --backend scripted` as its own process (its log kept in a file) and, while
one healthy client streams a session in real time on /ws the whole time, measures:

- fuzz: random and mutated messages to every websocket endpoint, paced below the rate limits so
  each one is parsed; figures: messages sent, tracebacks in the server's log, whether /healthz
  still answers after each endpoint;
- churn: workers open sessions and end them at random points (clean close, or a TCP reset in
  the middle of an audio frame); figures: cycles, refusals (1013) while capacity was free,
  slots still taken afterwards (leaks), the server's RSS after a warm-up and at the end, raw and
  once glibc has returned its free heap (server/memory.py's report, by SIGUSR1);
- the healthy client's largest gap between two audio frames, throughout;
- kill -9: a recording server killed mid-session; seconds of the user's audio the recording lost;
- drain: SIGTERM with a live session and --drain-seconds: /healthz while draining, how a new
  session is refused, and seconds until the live session is ended and the process exits;
- a big static file, a full recording disk, idle slot holders, odd text, a prompt storm and a
  long session (bench/probes.py, bench/idle_holders.py), each with its own healthy client.

Bounded (counts and a wall-clock limit), loopback only, and it stops by itself. It prints figures
and never fails on them; docs/reliability.md keeps the last table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.idle_holders import idle_holders
from bench.loopback import HealthyClient, Server, gaps_by_phase
from bench.probes import big_static_file, full_disk, moshi_ui_with_a_big_file, print_probes, prompted_model
from bench.traffic import FRAME_BYTES, STARTS, churn, fuzz_endpoint


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fuzz", type=int, default=20000, help="fuzz messages per endpoint (default 20000)")
    parser.add_argument("--churn", type=int, default=2000, help="churn cycles (default 2000)")
    parser.add_argument(
        "--warm-up", type=int, default=2000, help="churn cycles before memory is measured (default 2000)"
    )
    parser.add_argument(
        "--rounds",
        type=_at_least_one,
        default=1,
        help="rounds of --churn cycles, memory measured after each (default 1)",
    )
    parser.add_argument("--workers", type=int, default=24, help="churn workers (default 24)")
    parser.add_argument("--max-sessions", type=int, default=32, help="server capacity (default 32)")
    parser.add_argument("--connections", type=int, default=12, help="parallel fuzz connections (default 12)")
    parser.add_argument(
        "--rate", type=float, default=150.0, help="fuzz messages/s per connection (default 150)"
    )
    parser.add_argument(
        "--limit-s", type=float, default=600.0, help="stop after this many seconds (default 600)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the traffic (default: 0)")
    parser.add_argument(
        "--disk-seconds",
        type=float,
        default=3.0,
        help="full disk: seconds each of the recording sessions streams (default 3)",
    )
    parser.add_argument(
        "--odd-texts",
        type=int,
        default=50,
        help="odd text: random strings beside the fixed ones (default 50)",
    )
    parser.add_argument(
        "--storm-seconds", type=float, default=10.0, help="prompt storm: how long it lasts (default 10)"
    )
    parser.add_argument(
        "--long-session-s",
        type=float,
        default=40.0,
        help="long session: its length; the tiny model's context window is 16 s (default 40)",
    )
    parser.add_argument(
        "--holders", type=int, default=64, help="idle slot holders: upgrades kept open (default 64)"
    )
    parser.add_argument(
        "--holders-seconds", type=float, default=8.0, help="idle slot holders: how long they hold (default 8)"
    )
    parser.add_argument("--static-mb", type=int, default=64, help="big static file: its size (default 64)")
    parser.add_argument("--static-fetches", type=int, default=5, help="big static file: fetches (default 5)")
    parser.add_argument(
        "--trace-memory",
        action="store_true",
        help="run the server under tracemalloc and report which source lines grew during fuzz and "
        "churn (slower: its timing figures are then not comparable)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


# -- kill -9 and drain -------------------------------------------------------------------------------
async def stream_speech(ws, seconds: float) -> int:
    """Send `seconds` of a tone in 80 ms frames, paced; returns samples sent."""
    t = np.arange(int(seconds * 24000)) / 24000
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()
    t0 = time.monotonic()
    for i in range(0, len(pcm), FRAME_BYTES):
        await ws.send(pcm[i : i + FRAME_BYTES])
        await asyncio.sleep(max(0.0, t0 + (i // FRAME_BYTES + 1) * 0.08 - time.monotonic()))
    return len(pcm) // 2


async def killed_recording(workdir: Path) -> dict:
    import soundfile as sf
    from websockets.asyncio.client import connect

    record = workdir / "record"
    with Server(
        ["--backend", "scripted", "--captions", "off", "--record", str(record)], workdir / "kill.log"
    ) as s:
        # The killed server answers no close frame: the client waits no more than a second for it.
        async with connect(s.url("/ws"), close_timeout=1.0) as ws:
            await ws.send(json.dumps(STARTS["/ws"]))
            sent = await stream_speech(ws, 3.0)
            s.proc.kill()  # SIGKILL: no chance to flush
            s.proc.wait(10)
    wavs = list(record.glob("*.wav"))
    kept = sf.info(str(wavs[0])).frames if wavs else 0
    return {
        "sent_s": round(sent / 24000, 2),
        "recorded_s": round(kept / 24000, 2),
        "lost_s": round((sent - kept) / 24000, 2),
    }


async def drain(workdir: Path) -> dict:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    args = ["--backend", "scripted", "--captions", "off", "--drain-seconds", "2"]
    with Server(args, workdir / "drain.log") as s:
        async with connect(s.url("/ws")) as ws:
            await ws.send(json.dumps(STARTS["/ws"]))
            await ws.recv()
            t0 = time.monotonic()
            s.proc.send_signal(signal.SIGTERM)
            for _ in range(50):  # the signal is handled on the server's loop: wait until it says so
                status, health = s.health()
                if health.get("status") == "draining":
                    break
                await asyncio.sleep(0.1)
            try:
                async with connect(s.url("/ws"), open_timeout=5) as late:
                    await late.recv()
                    refused = "accepted"
            except ConnectionClosed as exc:
                refused = f"{exc.rcvd.code} {exc.rcvd.reason}" if exc.rcvd else "closed"
            except OSError as exc:
                refused = f"not listening ({type(exc).__name__})"
            ended = None
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    if isinstance(message, str) and '"session.ended"' in message:
                        ended = json.loads(message).get("reason")
            session_s = time.monotonic() - t0
        s.proc.wait(30)
        exit_s = time.monotonic() - t0
    return {
        "healthz_while_draining": f"{status} {health.get('status')}",
        "new_session": refused,
        "live_session_ended": ended,
        "session_end_s": round(session_s, 2),
        "exit_s": round(exit_s, 2),
    }


# -- memory --------------------------------------------------------------------------------------------
def memory_figures(reports: dict[str, dict], top: int = 8) -> dict:
    """Objects the server counts at each point; under tracemalloc also the traced total and the
    source lines that grew most from one point to the next."""
    import tracemalloc

    figures: dict = {
        "objects": {k: r.get("objects") for k, r in reports.items()},
        "rss_mb": {k: (r.get("rss_mb"), r.get("rss_mb_trimmed")) for k, r in reports.items()},
        "took_ms": {k: r.get("took_ms") for k, r in reports.items()},
    }
    snapshots = {k: tracemalloc.Snapshot.load(r["snapshot"]) for k, r in reports.items() if r.get("snapshot")}
    if not snapshots:
        return figures
    figures["traced_mb"] = {
        k: round(sum(s.size for s in snap.statistics("filename")) / 2**20, 2) for k, snap in snapshots.items()
    }
    names = list(snapshots)
    figures["grown"] = {}
    for a, b in zip(names, names[1:], strict=False):
        stats = snapshots[b].compare_to(snapshots[a], "lineno")
        stats.sort(key=lambda s: -s.size_diff)
        figures["grown"][f"{a} -> {b}"] = [
            {
                "kib": round(s.size_diff / 1024, 1),
                "blocks": s.count_diff,
                "line": f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
            }
            for s in stats[:top]
            if s.size_diff > 0
        ]
    return figures


def _short(filename: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    with contextlib.suppress(ValueError):
        return str(Path(filename).relative_to(Path.cwd()))
    return filename


# -- the run -----------------------------------------------------------------------------------------
async def bench(args) -> dict:
    from server.app import ENDPOINTS

    figures: dict = {}
    deadline = time.monotonic() + args.limit_s
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
        workdir = Path(tmp)
        serve = ["--backend", "scripted", "--captions", "off", "--max-sessions", str(args.max_sessions)]
        serve += ["--max-connections-per-client", "0"]  # fuzz and churn come from one address
        serve += ["--moshi-ui", str(moshi_ui_with_a_big_file(workdir / "ui", args.static_mb))]
        with Server(serve, workdir / "server.log", args.trace_memory) as server:
            healthy = HealthyClient(server.url("/ws"), workdir / "healthy.json")
            await healthy.start()
            phases: list[tuple[str, float]] = [("idle", time.time())]  # (name, unix time it began)

            async def report(name: str) -> None:
                phases.append(("memory reports", time.time()))
                reports[name] = await server.memory_report()
                phases.append(("idle", time.time()))

            await asyncio.sleep(3.0)
            reports: dict[str, dict] = {}
            await report("start")
            figures["fuzz"] = {}
            for path in ENDPOINTS:
                if time.monotonic() > deadline:
                    break
                before = server.tracebacks()
                phases.append((f"fuzz {path}", time.time()))
                result = await fuzz_endpoint(server, path, args.fuzz, args)
                result["tracebacks"] = server.tracebacks() - before
                figures["fuzz"][path] = result
            await report("after fuzz")
            phases.append(("churn", time.time()))
            warm = await churn(server, args.warm_up, args)
            await asyncio.sleep(1.0)
            rss_before = server.rss_mb()  # before the report: it hands free heap back to the system
            await report("after warm-up")
            result = {"cycles": 0, "refused": 0, "rss_mb_rounds": []}
            for r in range(args.rounds):
                phases.append(("churn", time.time()))
                one = await churn(server, args.churn, args)
                result["cycles"] += one["cycles"]
                result["refused"] += one["refused"]
                await asyncio.sleep(1.5)  # closes finish; the last frames are sent
                result["rss_mb_rounds"].append(round(server.rss_mb(), 1))
                await report("after churn" if args.rounds == 1 else f"after round {r + 1}")
            _, health = server.health()
            last = list(reports.values())[-1]
            result.update(
                warm_up_cycles=warm["cycles"],
                live_after=health.get("live_sessions"),
                leaked_slots=(health.get("live_sessions") or 0) - 1,  # the healthy client's is the only one
                capacity_left=health.get("capacity_left"),
                rss_mb_before=round(rss_before, 1),
                rss_mb_after=result["rss_mb_rounds"][-1],
                retained_mb_before=reports["after warm-up"].get("rss_mb_trimmed"),
                retained_mb_after=last.get("rss_mb_trimmed"),
            )
            figures["churn"] = result
            figures["memory"] = memory_figures(reports)
            phases.append(("big static file", time.time()))
            figures["big_static_file"] = await big_static_file(server, args)
            phases.append(("idle", time.time()))
            await asyncio.sleep(1.0)
            await healthy.stop()
            figures["healthy_client"] = {
                "frames": healthy.frames,
                "max_gap_ms": round(healthy.max_gap_ms, 1),
                "max_gap_ms_by_phase": gaps_by_phase(healthy.gaps, phases),
            }
            figures["tracebacks_total"] = server.tracebacks()
        figures["kill_9"] = await killed_recording(workdir)
        figures["drain"] = await drain(workdir)
        figures["full_disk"] = await full_disk(workdir, args)
        figures["idle_holders"] = await idle_holders(workdir, args)
        figures["prompted_model"] = await prompted_model(workdir, args)
    return figures


def _growth(before: float, after: float) -> str:
    return f"{100 * (after - before) / max(before, 1e-9):+.1f}%"


def run(args: argparse.Namespace) -> int:
    figures = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    print("fuzz (messages, tracebacks, /healthz after, closes):")
    for path, f in figures["fuzz"].items():
        print(
            f"  {path:20s} {f['messages']:6d} msgs  {f['tracebacks']} tracebacks  {f['healthz_after']}  {f['closes']}"
        )
    c = figures["churn"]
    print(
        f"churn: {c['cycles']} cycles ({args.workers} workers, {args.max_sessions} slots) after "
        f"{c['warm_up_cycles']} warm-up cycles: {c['refused']} refused, {c['leaked_slots']} slots leaked"
    )
    print(
        f"  RSS {c['rss_mb_before']} -> {c['rss_mb_after']} MB ({_growth(c['rss_mb_before'], c['rss_mb_after'])})"
    )
    if c["retained_mb_before"] is not None:
        print(
            f"  retained (RSS once glibc returns its free heap) {c['retained_mb_before']} -> {c['retained_mb_after']} MB "
            f"({_growth(c['retained_mb_before'], c['retained_mb_after'])})"
        )
    if len(c["rss_mb_rounds"]) > 1:
        print(f"  RSS after each round of {args.churn}: {c['rss_mb_rounds']}")
    m = figures["memory"]
    print(
        "server objects (created after start-up): " + ", ".join(f"{k} {v}" for k, v in m["objects"].items())
    )
    print(
        "server RSS MB (-> once glibc returns its free heap): "
        + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in m["rss_mb"].items())
    )
    if "traced_mb" in m:
        print("tracemalloc, traced MB: " + ", ".join(f"{k} {v}" for k, v in m["traced_mb"].items()))
        for span, lines in m["grown"].items():
            print(f"  grew most, {span}:")
            for g in lines:
                print(f"    {g['kib']:+9.1f} KiB {g['blocks']:+7d} blocks  {g['line']}")
    h = figures["healthy_client"]
    print(f"healthy client: {h['frames']} frames, largest gap {h['max_gap_ms']} ms")
    if h["max_gap_ms_by_phase"]:
        print(
            "  gaps over 120 ms, the largest by phase: "
            + ", ".join(f"{k} {v} ms" for k, v in h["max_gap_ms_by_phase"].items())
        )
    print("memory reports took (ms): " + ", ".join(f"{k} {r}" for k, r in m["took_ms"].items()))
    print(f"tracebacks in the server log: {figures['tracebacks_total']}")
    k = figures["kill_9"]
    print(
        f"kill -9 while recording: sent {k['sent_s']} s, recorded {k['recorded_s']} s, lost {k['lost_s']} s"
    )
    d = figures["drain"]
    print(
        f"drain: /healthz {d['healthz_while_draining']}, new session {d['new_session']}, live session "
        f"{d['live_session_ended']} after {d['session_end_s']} s, exit after {d['exit_s']} s"
    )
    print_probes(figures, h["max_gap_ms_by_phase"])
    return 0
