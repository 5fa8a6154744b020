"""What every protocol adapter shares in one server process: the frame loop, capacity, sessions,
captions, metrics and recording. `ctx.admit(address)` lets a websocket in (or says why not),
`ctx.reserve()` takes an engine slot when it starts its session (None when full or draining);
`ctx.open_session(...)` starts a conversation (assistant/conversation) in it."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assistant.conversation import CaptionUtterance, Conversation, ConversationOptions
from assistant.engine import Engine
from assistant.scheduler import Host, Scheduler, SlotHandle
from server.codec_lanes import CodecPool
from server.config import ServerConfig
from server.metrics import Metrics
from server.recording import Recordings


class ServerContext:
    """Everything a protocol adapter needs: the scheduler, options, metrics, recording."""

    def __init__(self, config: ServerConfig, engine: Engine):
        self.config = config = prompt_defaults(config, engine)  # ValueError: a bad --voice / --instructions
        self.engine = engine
        self.metrics = Metrics()
        self.scheduler = Scheduler(engine, metrics=self.metrics, collect_garbage=True)
        self.codecs = CodecPool(config.codec_threads)  # Opus coding, off the event loop
        self.recordings = (
            Recordings(config.record_dir, min_free_mb=config.record_min_free_mb, metrics=self.metrics)
            if config.record_dir
            else None
        )
        self.sessions: dict[str, Conversation] = {}
        self._hosts: dict[str, Host] = {}  # who carries out each live session's events
        self.connections: collections.Counter[str] = collections.Counter()  # open websockets by address
        self.started_at = time.monotonic()
        self.port = config.port
        self.draining = False
        self.caption_worker = None
        self.captions_model: str | None = None  # what clients are told captions use; None when off
        if config.captions:
            from assistant.captions import CaptionWorker

            # The model loads on the worker's own thread; the server is listening meanwhile.
            self.caption_worker = CaptionWorker(
                config.captions, device=config.captions_device, cpu_threads=config.caption_threads
            )
            self.caption_worker.start()
            self.captions_model = self.caption_worker.name
        self.metrics.gauge("live_sessions", "Sessions in progress.", lambda: len(self.sessions))
        self.metrics.gauge(
            "capacity_left", "Sessions that can still join.", lambda: self.scheduler.free_slots
        )
        self.metrics.gauge(
            "max_sessions", "Sessions this server holds at most.", lambda: self.scheduler.capacity
        )

    def admit(self, address: str | None) -> str | None:
        """Let a new websocket from `address` in, counted until `leave`; or why not (the 1013 close
        reason): the server is full or draining, or the address holds its share of connections.
        No slot is taken: a connection takes one when it starts its session."""
        if self.draining or self.scheduler.free_slots == 0:
            self.metrics.inc("refused_total")
            return self.refusal_reason()
        cap = self.config.max_connections_per_client
        if cap and address is not None and self.connections[address] >= cap:
            self.metrics.inc("client_cap_refused_total")
            return f"{cap} connections are open from this address already; close one or try later"
        if address is not None:
            self.connections[address] += 1
        return None

    def leave(self, address: str | None) -> None:
        """A websocket `admit` let in has closed."""
        if address is not None:
            self.connections[address] -= 1
            if self.connections[address] <= 0:
                del self.connections[address]

    def reserve(self) -> SlotHandle | None:
        """An engine slot for a session about to start, or None when the server is full (or draining)."""
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
        host: Host,
        options: ConversationOptions | None = None,
    ) -> Conversation:
        """A conversation in `slot`, whose events of the frame loop's calls go to `host`. The frame
        loop starts it (its SessionReady to `host`) once the engine slot is open (and its prompt in),
        and feeds it from its first whole frame of input on, so that frame is what the model hears
        first. Raises ValueError for a bad rate/options."""
        options = options or self.default_options()
        options.vad_config(self.config.vad)  # raises ValueError for bad VAD options before any file is made
        self.check_prompt(options.instructions, options.voice)
        session_id = "sess_" + secrets.token_hex(6)
        recorder = self.recordings.open(session_id) if self.recordings else None  # None: unrecorded
        session = Conversation(
            session_id,
            sample_rate_hz,
            options=options,
            limits=self.config.limits,
            vad_config=self.config.vad,
            recorder=recorder,
            metrics=self.metrics,
            can_caption=self.caption_worker is not None,
            check_prompt=self.check_prompt,
        )
        slot.attach(session, options.slot_options(), host, announce=True)
        self.sessions[session_id] = session
        self._hosts[session_id] = host
        self.metrics.inc("sessions_total")
        return session

    def caption(
        self, utterance: CaptionUtterance, done: Callable[[CaptionUtterance, str | None], None]
    ) -> None:
        """Queue one utterance (or, interim, the part said so far) for captioning; `done(utterance,
        text)` runs on the event loop when it is ready (text None: a quick reading did not work)."""
        loop = asyncio.get_running_loop()

        def finished(caption) -> None:
            loop.call_soon_threadsafe(done, utterance, caption.text)

        queued = self.caption_worker.submit(
            id(utterance),
            utterance.pcm,
            utterance.start_ms,
            utterance.end_ms,
            finished,
            interim=utterance.interim,
            quick=utterance.quick,
        )
        if not queued and not utterance.interim:  # an interim is skipped, by design, while finals wait
            self.metrics.inc("captions_dropped")
            if utterance.quick:  # a reading at a pause: the end of the turn may wait on it
                loop.call_soon(done, utterance, None)

    def close(self) -> None:
        if self.caption_worker is not None:
            self.caption_worker.close(timeout=5)
        self.codecs.shutdown()

    def default_options(self) -> ConversationOptions:
        """What a session starts with before the client's own options: the server's flags."""
        config = self.config
        return ConversationOptions(
            barge_in=config.barge_in,
            instructions=config.instructions,
            voice=config.voice,
            temperature=config.temperature,
            text_temperature=config.text_temperature,
        )

    def check_prompt(self, instructions: str | None, voice: str | None) -> None:
        """ValueError unless the engine can use this role and voice prompt from a client: a client
        names one of the model's voices (files on this machine are the operator's: `--voice FILE`)."""
        if voice and self.engine.takes_prompts and not self._is_voice(voice):
            shown = ", ".join(self.engine.voices()[:24]) or "none"
            raise ValueError(f"unknown voice {voice!r}: use one of the model's voices ({shown})")
        self.engine.check_prompt(instructions, voice)

    def _is_voice(self, voice: str) -> bool:
        names = set(self.engine.voices())
        return voice in names or f"{voice}.pt" in names or f"{voice}.wav" in names

    def voices(self) -> dict[str, Any]:
        """GET /v1/voices: the voices a session may name, and whether prompts apply at all."""
        return {
            "object": "list",
            "takes_prompts": self.engine.takes_prompts,
            "default": (
                self.config.voice or getattr(getattr(self.engine, "loaded", None), "default_voice", None)
            )
            if self.engine.takes_prompts
            else None,
            "data": [{"id": name, "object": "voice"} for name in self.engine.voices()],
        }

    def refusal_reason(self) -> str:
        """Why a new connection was refused (the 1013 close reason)."""
        if self.draining:
            return "server is shutting down"
        capacity = self.scheduler.capacity
        taken = "its one session is" if capacity == 1 else f"all {capacity} sessions are"
        return f"server full: {taken} taken; try later"

    def forget(self, session: Conversation) -> None:
        self.sessions.pop(session.session_id, None)
        self._hosts.pop(session.session_id, None)

    def end_session(self, session: Conversation, reason: str) -> None:
        """End a live session from outside its connection (the shutdown); its host carries it out."""
        self._hosts[session.session_id](session.end(reason))

    def status(self) -> str:
        """What a balancer acts on: "ok" (takes new sessions), "full" or "draining" (send them elsewhere)."""
        if self.draining:
            return "draining"
        return "ok" if self.scheduler.free_slots > 0 else "full"

    def recording_health(self) -> tuple[str, str | None]:
        """("off" | "ok" | "failing", why it fails): sessions go on unrecorded while it fails."""
        return ("off", None) if self.recordings is None else self.recordings.describe()

    def healthz(self) -> dict[str, Any]:
        info = self.engine.describe()
        status = self.status()
        recording, recording_error = self.recording_health()
        # Serving goes on unrecorded; readiness waits for the recordings only when the operator asks.
        ready = status == "ok" and not (self.config.record_required and recording == "failing")
        return {
            "status": status,
            "ready": ready,
            "recording": recording,
            "recording_error": recording_error,
            "live_sessions": len(self.sessions),
            "max_sessions": self.scheduler.capacity,
            "capacity_left": 0 if self.draining else self.scheduler.free_slots,
            "backend": info.get("backend"),
            "model": info.get("model"),
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "captions": None if self.caption_worker is None else self.caption_worker.describe(),
            "takes_prompts": self.engine.takes_prompts,
            "voices": self.engine.voices(),
            "takes_images": self.engine.takes_images,
        }


def prompt_defaults(config: ServerConfig, engine: Engine) -> ServerConfig:
    """The server's --voice / --instructions, checked before it listens. A --voice FILE becomes a
    preset named by its file name, so clients see (and may name) that name, never the path."""
    voice = config.voice
    if (
        voice
        and engine.takes_prompts
        and voice not in engine.voices()
        and Path(voice).suffix in (".wav", ".pt")
    ):
        voice = engine.add_voice(voice)
    engine.check_prompt(config.instructions, voice)
    return dataclasses.replace(config, voice=voice) if voice != config.voice else config
