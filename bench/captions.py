"""`assistant bench captions`: how soon a user's words reach the client, with 1 and more sessions.

For each session count N: start `assistant serve --backend silence --captions MODEL` as its own
process (its caption model loaded before anything is measured), connect N clients from this process
that ask for user captions, and have each say tests/data/speech q2.wav and interrupt.wav (3.4 and
3.3 s) in turn, `--rounds` times, with silence between, streamed in real time. By default all N
talk at once (their streams start within one 80 ms frame of each other): the worst case for the
captioner, which gets every session's utterance at the same moment. `--staggered`: each starts at
its own random point of a turn (utterance and the silence after it), as people in separate
conversations do, so utterances end at different moments but overlap. Measured on the client's side, from sending the
chunk that holds an utterance's last voiced sample (the end of the utterance):
- final: `--protocol live`: the utterance's last `session.input_transcript.delta`;
  `--protocol realtime`: `conversation.item.input_audio_transcription.completed`, which the API
  sends for the committed item, so after the end of the turn (500 ms of silence by default), and
  the last `...transcription.delta` before it (the text complete),
- interim: how many transcript deltas came while the user was still speaking, and the first one's
  delay from the start of the utterance.
and, from the server's own frame clock, how late its ticks came (p99 / max): what reading
captions on the same CPU costs the conversations. Prints p50/p95 figures; never fails on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.live import Mic, load_clip, voiced_span
from bench.server import SPEECH_DIR, serving, wait_captions_ready

CLIPS = ("q2.wav", "interrupt.wav")
GAP_S = 3.0  # silence after each utterance: the end of its turn, its caption, a breath


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", default="1,4", help="comma-separated session counts (default 1,4)")
    parser.add_argument("--rounds", type=int, default=4, help="utterances per session (default 4)")
    parser.add_argument("--captions", default="tiny.en", help="the server's caption model (default tiny.en)")
    parser.add_argument(
        "--staggered",
        action="store_true",
        help="sessions start at random points of a turn, not all at once",
    )
    parser.add_argument(
        "--caption-threads",
        type=int,
        help="the server's --caption-threads (default: the server's own default)",
    )
    parser.add_argument(
        "--protocol",
        choices=("live", "realtime"),
        default="live",
        help="what the clients speak (default live)",
    )
    parser.add_argument(
        "--audio-dir",
        type=Path,
        default=SPEECH_DIR,
        help="where the clips are (default: the checkout's tests/data/speech)",
    )


async def _session(
    url: str, protocol: str, clips: list[np.ndarray], rounds: int, phase_s: float
) -> list[dict]:
    """One client: says the clips in turn; per utterance its end time and the caption events' times."""
    from websockets.asyncio.client import connect

    events: list[tuple[float, dict]] = []
    async with connect(url, compression=None, max_queue=None) as ws:
        if protocol == "live":
            start = {"type": "session.start", "session": {"model": "bench"}}
            append = "session.input_audio.append"
        else:
            start = {
                "type": "session.update",
                "session": {"audio": {"input": {"transcription": {"model": "whisper-1"}}}},
            }
            append = "input_audio_buffer.append"
        await ws.send(json.dumps(start))

        async def read() -> None:
            async for message in ws:
                if (
                    "transcript" in message[:80]
                    or "transcription" in message[:80]
                    or "speech_stopped" in message[:60]
                ):
                    events.append((time.monotonic(), json.loads(message)))

        reader = asyncio.create_task(read())
        await asyncio.sleep(phase_s)
        mic = Mic(lambda audio: ws.send(json.dumps({"type": append, "audio": audio})))
        mic_task = asyncio.create_task(mic.run())
        utterances = []
        try:
            for i in range(rounds):
                clip = clips[i % len(clips)]
                at = mic.say(clip)
                first, last = voiced_span(clip)
                started = await mic.wait_sent(at + first)
                ended = await mic.wait_sent(at + last - 1)
                utterances.append(
                    {"span_ms": ((at + first) / 24, (at + last) / 24), "start": started, "end": ended}
                )
                await asyncio.sleep(GAP_S)
            await asyncio.sleep(2.0)
        finally:
            mic_task.cancel()
            reader.cancel()
    return [_timings(u, events, protocol) for u in utterances]


def _timings(utterance: dict, events: list[tuple[float, dict]], protocol: str) -> dict:
    """The caption events of one utterance: those whose audio overlaps its voiced span."""
    lo, hi = utterance["span_ms"]
    deltas, final = [], None
    if protocol == "live":
        deltas = [
            t
            for t, e in events
            if e["type"] == "session.input_transcript.delta"
            and e["end_ms"] > lo - 500
            and e["start_ms"] < hi + 500
        ]
        final = deltas[-1] if deltas else None
    else:
        items = {
            e["item_id"]
            for _, e in events
            if e["type"] == "input_audio_buffer.speech_stopped" and lo - 500 < e["audio_end_ms"] < hi + 1000
        }
        deltas = [t for t, e in events if e["type"].endswith("transcription.delta") and e["item_id"] in items]
        final = next(
            (t for t, e in events if e["type"].endswith("transcription.completed") and e["item_id"] in items),
            None,
        )
    return {
        "final_ms": None if final is None else (final - utterance["end"]) * 1000,
        "text_ms": (max(deltas) - utterance["end"]) * 1000 if deltas else None,
        "interims": sum(t < utterance["end"] for t in deltas),
        "first_interim_ms": (min(deltas) - utterance["start"]) * 1000
        if deltas and min(deltas) < utterance["end"]
        else None,
    }


async def _everyone(url: str, protocol: str, clips: list, rounds: int, phases) -> list[list[dict]]:
    return await asyncio.gather(*(_session(url, protocol, clips, rounds, float(p)) for p in phases))


def _percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.percentile(values, 50):.0f}/{np.percentile(values, 95):.0f}"


def run(args: argparse.Namespace) -> int:
    counts = [int(s) for s in args.sessions.split(",") if s.strip()]
    if not counts or min(counts) < 1 or args.rounds < 1:
        print("--sessions needs counts >= 1 and --rounds >= 1")
        return 2
    clips = [load_clip(args.audio_dir / name, 24_000) for name in CLIPS]
    path = "/v1/live/sessions" if args.protocol == "live" else "/v1/realtime"
    print(
        f"captions bench: {args.captions} on the server's CPU, {args.protocol} protocol, each session says "
        f"{' and '.join(CLIPS)} in turn ({args.rounds} utterances), "
        f"{'sessions staggered' if args.staggered else 'all sessions at once'}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    final = "completed" if args.protocol == "realtime" else "last delta"
    print(
        f"{'sessions':>8} {'utterances':>10} {'end -> final (' + final + ') p50/p95 ms':>36} "
        f"{'end -> text complete p50/p95 ms':>32} {'interims/utterance':>18} {'first interim after onset p50 ms':>33} "
        f"{'tick late p99/max ms':>20}"
    )
    fd, stats_path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    for n in counts:
        Path(stats_path).write_text("")  # a server that writes none shows none, not the last one's
        serve_args = [
            "--backend",
            "silence",
            "--captions",
            args.captions,
            "--max-sessions",
            str(n),
            "--idle-timeout",
            "3600",
            "--clock-stats",
            stats_path,
        ]
        if args.caption_threads:
            serve_args += ["--caption-threads", str(args.caption_threads)]
        with serving(serve_args) as (_, port):
            wait_captions_ready(port)
            url = f"ws://127.0.0.1:{port}{path}"
            turn_s = np.mean([clip.shape[0] for clip in clips]) / 24_000 + GAP_S
            phases = np.random.default_rng(0).uniform(0, turn_s if args.staggered else 0.08, n)
            sessions = _everyone(url, args.protocol, clips, args.rounds, phases)
            results = [r for session in asyncio.run(sessions) for r in session]
        # The server wrote its clock figures as it stopped.
        late = json.loads(Path(stats_path).read_text() or "{}").get("late_ms", {})
        tick = "-" if late.get("max") is None else f"{late['p99']:.1f}/{late['max']:.1f}"
        finals = [r["final_ms"] for r in results if r["final_ms"] is not None]
        texts = [r["text_ms"] for r in results if r["text_ms"] is not None]
        firsts = [r["first_interim_ms"] for r in results if r["first_interim_ms"] is not None]
        print(
            f"{n:>8} {len(finals):>4}/{len(results):<5} {_percentiles(finals):>36} {_percentiles(texts):>32} "
            f"{np.mean([r['interims'] for r in results]):>18.1f} "
            f"{(f'{np.median(firsts):.0f}' if firsts else '-'):>33} "
            f"{tick:>20}",
            flush=True,
        )
    Path(stats_path).unlink(missing_ok=True)
    return 0
