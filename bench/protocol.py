"""`assistant bench protocol`: CPU per client event of each websocket protocol, decode + validate.

Each protocol's typical client events go through the same pure functions the server runs on every
message: the JSON text frame is decoded and checked into a typed event (`decode_text` for /ws,
`parse_client_event` for /v1/realtime and /v1/live/sessions, `session_options` for the /api/chat
query string), and, for the OpenAI APIs, through the state machine's `receive` as well (the base64
audio decoded, the event handled). The audio appends matter most: a client streaming 20 ms chunks
sends 50 a second per session. Figures are microseconds of this thread's CPU per event (the best of
`--repeats` runs of `--events` each). Prints figures only; never fails on speed.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from collections.abc import Callable
from urllib.parse import urlencode

from server.protocols.live import client_events as live_events
from server.protocols.live.state_machine import LiveConversation
from server.protocols.moshi import query as moshi_query
from server.protocols.native import wire as native_wire
from server.protocols.realtime import client_events as realtime_events
from server.protocols.realtime.state_machine import RealtimeConversation

CHUNK_MS = 20  # what browsers and the SDK examples send: 50 appends a second


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=2000, help="events per timed run (default 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best counts (default 5)")


def pcm_chunk_b64(rate_hz: int = 24_000, ms: int = CHUNK_MS) -> str:
    """base64 of `ms` of quiet non-zero PCM16 at `rate_hz`, as a client's append carries it."""
    return base64.b64encode(b"\x10\x00" * (rate_hz * ms // 1000)).decode()


def native_events() -> dict[str, str]:
    return {
        "session.start": json.dumps(
            {
                "type": "session.start",
                "sample_rate": 24000,
                "barge_in": "vad",
                "vad": {"min_silence_ms": 400, "threshold": 0.5},
                "min_interrupt_ms": 200,
                "temperature": 0.8,
                "captions": True,
                "instructions": "You are a friendly barista who keeps answers short.",
                "voice": "NATF2",
            }
        ),
        "session.update": json.dumps({"type": "session.update", "barge_in": "model", "top_k": 250}),
        "playback.position": json.dumps({"type": "playback.position", "played_ms": 12345.5}),
    }


def realtime_events_json() -> dict[str, str]:
    return {
        "input_audio_buffer.append (20 ms)": json.dumps(
            {"type": "input_audio_buffer.append", "audio": pcm_chunk_b64(), "event_id": "evt_1"}
        ),
        "session.update": json.dumps(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "instructions": "You are a friendly barista who keeps answers short.",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                        },
                        "output": {"voice": "alloy"},
                    },
                },
            }
        ),
        "response.create": json.dumps({"type": "response.create", "response": {"metadata": {"turn": "1"}}}),
        "conversation.item.truncate": json.dumps(
            {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 0}
        ),
    }


def live_events_json() -> dict[str, str]:
    return {
        "session.input_audio.append (20 ms)": json.dumps(
            {"type": "session.input_audio.append", "audio": pcm_chunk_b64(), "event_id": "evt_1"}
        ),
        "session.start": json.dumps(
            {
                "type": "session.start",
                "session": {
                    "model": "gpt-live-1",
                    "instructions": "You are a friendly barista who keeps answers short.",
                    "audio": {"format": {"type": "audio/pcm", "rate": 24000}, "output": {"voice": "marin"}},
                },
            }
        ),
        "session.instructions.append": json.dumps(
            {"type": "session.instructions.append", "content": "Mention the daily special."}
        ),
        "session.input_audio.mute": json.dumps({"type": "session.input_audio.mute"}),
    }


MOSHI_QUERY = urlencode(
    {
        "text_temperature": "0.7",
        "text_topk": "25",
        "audio_temperature": "0.8",
        "audio_topk": "250",
        "pad_mult": "0",
        "text_seed": "123456",
        "audio_seed": "654321",
        "repetition_penalty_context": "64",
        "repetition_penalty": "1",
        "text_prompt": "You enjoy having a good conversation.",
        "voice_prompt": "NATF2.pt",
    }
)


def cpu_us_per_call(fn: Callable[[], object], events: int, repeats: int) -> float:
    """The best of `repeats` runs: this thread's CPU microseconds per call of `fn`."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time_ns()
        for _ in range(events):
            fn()
        best = min(best, (time.thread_time_ns() - t0) / 1000 / events)
    return best


def realtime_conversation() -> RealtimeConversation:
    conv = RealtimeConversation(session_id="sess_bench", model="bench", voice="bench", id_prefix="b")
    conv.start()
    return conv


def live_conversation() -> LiveConversation:
    conv = LiveConversation(id_prefix="b", engine_name="bench")
    conv.receive(json.dumps({"type": "session.start", "session": {"model": "bench"}}))
    conv.started("sess_bench", 0.0)
    return conv


def measurements() -> list[tuple[str, str, str, Callable[[], object]]]:
    """(protocol, event, stage, the call to time) for every figure of the table."""
    rows: list[tuple[str, str, str, Callable[[], object]]] = []
    for name, text in native_events().items():
        rows.append(("/ws", name, "decode", lambda text=text: native_wire.decode_text(text)))
    chunk = b"\x10\x00" * (24_000 * CHUNK_MS // 1000)
    rows.append(
        ("/ws", "binary audio (20 ms)", "decode", lambda: native_wire.check_audio(chunk, started=True))
    )
    realtime = realtime_conversation()
    for name, text in realtime_events_json().items():
        rows.append(
            ("/v1/realtime", name, "decode", lambda text=text: realtime_events.parse_client_event(text))
        )
        if "append" in name:
            rows.append(("/v1/realtime", name, "receive", lambda text=text: realtime.receive(text)))
    live = live_conversation()
    for name, text in live_events_json().items():
        rows.append(("/v1/live", name, "decode", lambda text=text: live_events.parse_client_event(text)))
        if "input_audio" in name:  # what a started session takes again and again
            rows.append(("/v1/live", name, "receive", lambda text=text: live.receive(text)))
    rows.append(("/api/chat", "query string", "decode", lambda: moshi_query.session_options(MOSHI_QUERY)))
    return rows


def run(args: argparse.Namespace) -> None:
    print(f"CPU per client event, best of {args.repeats} runs of {args.events} (microseconds)")
    print(f"{'protocol':<14}{'event':<40}{'stage':<9}{'us':>9}")
    for protocol, name, stage, fn in measurements():
        us = cpu_us_per_call(fn, args.events, args.repeats)
        print(f"{protocol:<14}{name:<40}{stage:<9}{us:>9.1f}")
