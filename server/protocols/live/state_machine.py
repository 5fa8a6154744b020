"""The OpenAI Live API on `/v1/live/sessions`, as pure code: no sockets, no clocks, no threads.

`LiveConversation` is fed client messages (`receive`, parsed by server/protocols/live/client_events.py)
and the conversation core's events in the core's order (`conversation_event`: each output frame with
its speaking flag, the start and end of a stretch of assistant speech, text pieces, user captions,
barge-ins, the end of the session). Every method returns, in order, `LiveOutput`s for the adapter
(server/protocols/live/adapter.py) to carry out after the call: server events to send (`SendEvent`),
and actions: open the session, push audio, give the model a new prompt, close.

How full duplex maps onto the Live API (docs/live.md says it for users):
- There are no turns to commit: every appended sample reaches the model as it arrives, and the
  model decides when to talk and when to stop. Barge-in is the model's own, or the server's
  `--barge-in vad` policy (the core holds the engine silent while the user talks over it; an `info`
  event with code `barge_in` tells the client to drop the assistant audio it has queued).
- Output audio goes out per stretch of assistant speech as the core reports it (the hangover rule of
  /v1/realtime): pauses inside a stretch are sent, quiet frames at its tail and between stretches
  are not. Each delta carries `start_ms`/`end_ms` on the session timeline; a gap is silence.
- The session timeline is ms since the session started: the frame clock for what the model says
  and for acknowledgements, the position in the appended audio for user captions (a client that
  streams in real time sees the two agree within a frame).
- Instructions and voice are fixed at `session.start`; `session.instructions.append` on a model
  that takes prompts appends to the role text and starts the model's context over with it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from assistant.conversation import (
    AssistantSpeechStarted,
    AssistantSpeechStopped,
    AssistantText,
    AudioOut,
    BargeIn,
    ConversationEvent,
    Error,
    PromptChangeLimited,
    SessionEnded,
    UserTranscriptDelta,
)
from audio.frames import FRAME_MS
from server.protocols.live.client_events import (
    NO_TEXT_CONTEXT,
    OPENAI_VOICES,
    AudioAppend,
    AudioFormat,
    ClientEvent,
    ContextAppend,
    Delegation,
    InstructionsAppend,
    LiveError,
    Mute,
    SessionClose,
    SessionStart,
    SessionUpdate,
    decode_audio,
    notices,
    parse_client_event,
)
from server.protocols.realtime.records import PushAudio, SendEvent, SetPrompt

USAGE_EVERY_FRAMES = 62  # session.usage.updated about every 5 s


@dataclass(frozen=True)
class OpenSession:
    """Start the conversation (session.start was valid); the adapter answers `started` or `start_refused`."""

    sample_rate_hz: int
    instructions: str | None  # None: none (models without prompts) or the server's default
    voice: str | None  # None: the server's default voice
    captions: bool


@dataclass(frozen=True)
class CloseSession:
    """End the conversation (session.closed is already out) and close the socket."""


LiveOutput = SendEvent | PushAudio | SetPrompt | OpenSession | CloseSession


class LiveConversation:
    """One `/v1/live/sessions` connection. Every method returns the `LiveOutput`s it caused, in order."""

    def __init__(
        self,
        *,
        id_prefix: str,
        engine_name: str,
        default_voice: str | None = None,
        takes_prompts: bool = False,
        check_prompt=None,
        default_instructions: str = "",
        captions: bool = False,
        context_fill: Callable[[], float | None] | None = None,
        max_session_s: float | None = None,
        barge_in: str = "model",
        check_prompt_change=None,
    ):
        """default_voice: the voice a session gets when it names none (models that take prompts; the
        others speak in their one voice, shown as `engine_name`). check_prompt(instructions, voice)
        raises ValueError for a prompt the engine cannot use; check_prompt_change() raises
        PromptChangeLimited while a new prompt must wait. context_fill() says how full the
        model's context window is, 0..1 (None, or a None answer: an engine without one)."""
        self.engine_name = engine_name
        self.default_voice = default_voice
        self.takes_prompts = takes_prompts
        self.check_prompt = check_prompt or (lambda instructions, voice: None)
        self.check_prompt_change = check_prompt_change or (lambda: None)
        self.default_instructions = default_instructions
        self.captions = captions
        self.context_fill = context_fill or (lambda: None)
        self.max_session_s = max_session_s
        self.barge_in_policy = barge_in
        self._prefix = id_prefix
        self._counter = 0
        self.state = "new"  # "new" -> "live" (session.started sent) -> "closed" (session.closed sent)
        self._pending: tuple[SessionStart, list, str, str | None] | None = None
        self.session_id = ""
        self.expires_at = 0
        self.model = ""
        self.format = AudioFormat()
        self.instructions = ""
        self.voice: str | None = None  # what the engine was given (None: a model without voices)
        self.delegation: Delegation | None = None
        self._notified: set[str] = set()  # codes of the `info` notices sent: each is sent once
        self.safety_identifier: str | None = None
        self.muted = False
        self.frames_out = 0  # the session clock: 80 ms frames since the session started
        self._in_stretch = False
        self._held: list[tuple[bytes, float]] = []  # quiet frames inside a stretch: sent if speech follows
        self._captioned = False

    # -- ids and events ------------------------------------------------------------------------
    def event(self, type_: str, client_event_id: str | None = None, **fields: Any) -> dict[str, Any]:
        self._counter += 1
        event = {"type": type_, "event_id": f"event_{self._prefix}{self._counter:05d}", **fields}
        if client_event_id is not None:
            event["client_event_id"] = client_event_id
        return event

    def send(self, type_: str, client_event_id: str | None = None, **fields: Any) -> SendEvent:
        return SendEvent(self.event(type_, client_event_id, **fields))

    def error(self, err: LiveError) -> dict[str, Any]:
        body = {"type": err.error_type, "code": err.code, "message": err.message, "param": err.param}
        return self.event("error", err.event_id, error={**body, "client_event_id": err.event_id})

    def info(self, code: str, message: str, client_event_id: str | None = None) -> dict[str, Any]:
        return self.event("info", client_event_id, code=code, message=message)

    @property
    def session_ms(self) -> int:
        return self.frames_out * FRAME_MS

    def session_json(self) -> dict[str, Any]:
        return {
            "id": self.session_id,
            "expires_at": self.expires_at,
            "model": self.model,
            "status": "active",
            "audio": {"format": self.format.to_json(), "output": {"voice": self.voice or self.engine_name}},
            "instructions": self.instructions,
            "delegation": self.delegation and self.delegation.applied,
            "input": [],
            "safety_identifier": self.safety_identifier,
            "store": False,
            "triggers": [],
        }

    def _usage(self) -> dict[str, Any]:
        return {"seconds": float(self.session_ms // 1000)}

    # -- client events -------------------------------------------------------------------------
    def receive(self, data: str | bytes) -> list[LiveOutput]:
        """One raw websocket message in; events and actions out (an `error` event if it was refused)."""
        if self.state == "closed":
            return []
        try:
            return self.handle(parse_client_event(data))
        except LiveError as err:
            return [SendEvent(self.error(err))]

    def handle(self, ev: ClientEvent) -> list[LiveOutput]:
        if isinstance(ev, SessionStart):
            if self.state != "new":
                raise LiveError(
                    "session_already_started",
                    f"session {self.session_id} has started; instructions, voice and audio format are "
                    "fixed at session.start",
                    "type",
                    ev.event_id,
                )
            return self._start(ev)
        if isinstance(ev, SessionClose):
            if self.state != "live":
                return [CloseSession()]  # no session to report on: the socket just closes
            return self._close("close_requested", ev.event_id) + [CloseSession()]
        if self.state != "live":
            raise LiveError(
                "session_not_started",
                "send session.start and wait for session.started first",
                "type",
                ev.event_id,
            )
        if isinstance(ev, AudioAppend):
            pcm16 = decode_audio(ev.audio, self.format, ev.event_id)
            if self.muted:
                pcm16 = bytes(len(pcm16))  # a muted microphone: the model hears silence, the clock runs on
            return [PushAudio(pcm16)] if pcm16 else []
        if isinstance(ev, Mute):
            self.muted = ev.muted
            kind = "session.input_audio.muted" if ev.muted else "session.input_audio.unmuted"
            return [self.send(kind, ev.event_id)]
        if isinstance(ev, InstructionsAppend):
            return self._append_instructions(ev)
        if isinstance(ev, SessionUpdate):
            if "delegation" in ev.session.model_fields_set:
                self.delegation = ev.session.delegation
            out = [self.send("session.updated", ev.event_id, session=self.session_json())]
            return out + self._notices(notices(ev.session), ev.event_id)
        if isinstance(ev, ContextAppend):
            return self._notices([(f"{ev.kind}_not_supported", NO_TEXT_CONTEXT)], ev.event_id)
        raise TypeError(f"not a client event: {ev!r}")

    def _notices(self, found: list[tuple[str, str]], client_event_id: str | None) -> list[LiveOutput]:
        """An `info` event for each (code, message) not reported yet in this session."""
        out: list[LiveOutput] = []
        for code, message in found:
            if code not in self._notified:
                self._notified.add(code)
                out.append(SendEvent(self.info(code, message, client_event_id)))
        return out

    def _start(self, ev: SessionStart) -> list[LiveOutput]:
        notices = ev.session.notices()
        instructions, voice = self._resolve_prompt(ev, notices)
        if not self.captions:
            notices.append(
                (
                    "input_transcripts_off",
                    "this server makes no user captions (`assistant serve --captions auto` does): "
                    "no session.input_transcript.delta events will come",
                )
            )
        self._pending = (ev, notices, instructions, voice)
        return [OpenSession(ev.session.audio_format.rate_hz, instructions or None, voice, self.captions)]

    def _resolve_prompt(self, ev: SessionStart, notices: list) -> tuple[str, str | None]:
        """The instructions and voice the engine gets ("" and None: a model without prompts). Raises LiveError."""
        asked, voice = ev.session.instructions, ev.session.audio.output.voice
        if not self.takes_prompts:
            if asked and asked.strip():
                notices.append(("instructions_not_applied", self._no_prompt()))
            if voice is not None:
                notices.append(
                    (
                        "voice_not_applied",
                        f"the voice is fixed by the model ({self.engine_name}); {voice!r} ignored",
                    )
                )
            return "", None
        instructions = asked if asked and asked.strip() else self.default_instructions
        if voice is not None:
            try:
                self.check_prompt(None, voice)
            except ValueError as exc:
                if voice not in OPENAI_VOICES:
                    raise LiveError(
                        "invalid_value", str(exc), "session.audio.output.voice", ev.event_id
                    ) from None
                # Code written for OpenAI names its voices: it gets this model's default one.
                notices.append(
                    (
                        "voice_not_available",
                        f"{voice!r} is an OpenAI voice; this model speaks with its own voices "
                        f"(GET /v1/voices); using {self.default_voice or 'its default'}",
                    )
                )
                voice = None
        voice = voice or self.default_voice
        try:
            self.check_prompt(instructions or None, voice)
        except ValueError as exc:
            raise LiveError("invalid_value", str(exc), "session.instructions", ev.event_id) from None
        return instructions, voice

    def _no_prompt(self) -> str:
        return (
            f"this model ({self.engine_name}) takes no text prompt; instructions need a "
            "PersonaPlex-family checkpoint; ignored"
        )

    def started(self, session_id: str, now_s: float) -> list[LiveOutput]:
        """The adapter opened the session (`now_s`: unix time): session.started, then any notices."""
        ev, notices, self.instructions, self.voice = self._pending
        self._pending = None
        self.state = "live"
        self.session_id = session_id
        self.expires_at = int(now_s + self.max_session_s) if self.max_session_s else 0
        self.model = ev.session.model
        self.format = ev.session.audio_format
        self.delegation = ev.session.delegation
        self.safety_identifier = ev.session.safety_identifier
        out = [self.send("session.started", ev.event_id, session=self.session_json())]
        return out + self._notices(notices, ev.event_id)

    def start_refused(self, message: str) -> list[LiveOutput]:
        """The session could not open (the core refused the options); the client may try again."""
        ev = self._pending[0]
        self._pending = None
        return [SendEvent(self.error(LiveError("invalid_value", message, "session", ev.event_id)))]

    def _append_instructions(self, ev: InstructionsAppend) -> list[LiveOutput]:
        if not self.takes_prompts:
            return self._notices([("instructions_not_applied", self._no_prompt())], ev.event_id)
        content = ev.content.strip()
        out: list[LiveOutput] = []
        if content:
            instructions = f"{self.instructions}\n{content}" if self.instructions else content
            try:
                self.check_prompt(instructions, self.voice)
            except ValueError as exc:
                raise LiveError("invalid_value", str(exc), "content", ev.event_id) from None
            try:
                self.check_prompt_change()
            except PromptChangeLimited as exc:
                raise LiveError(exc.code, str(exc), "content", ev.event_id) from None
            self.instructions = instructions
            out.append(SetPrompt(instructions, self.voice))
        at = self.session_ms
        return out + [self.send("session.instructions.appended", ev.event_id, start_ms=at, end_ms=at)]

    def _close(self, reason: str, client_event_id: str | None) -> list[LiveOutput]:
        self.state = "closed"
        return [
            self.send(
                "session.closed",
                client_event_id,
                reason=reason,
                session=self.session_json(),
                usage=self._usage(),
            )
        ]

    # -- what the conversation core reports ----------------------------------------------------
    def conversation_event(self, event: ConversationEvent) -> list[LiveOutput]:
        """One event the conversation returned, in the order it returned them."""
        if isinstance(event, Error):
            return [SendEvent(self.error(LiveError(event.code, event.message, error_type="server_error")))]
        if self.state != "live":
            return []
        if isinstance(event, AudioOut):
            return self._output_audio(event.pcm16, event.speaking, event.at_ms)
        if isinstance(event, AssistantText):
            return self._output_text(event.text, event.at_ms)
        if isinstance(event, AssistantSpeechStarted | AssistantSpeechStopped):
            # A stretch began (reported before that frame's audio) or ended after its hangover of
            # quiet frames: those are never sent.
            self._in_stretch = isinstance(event, AssistantSpeechStarted)
            self._held = []
            return []
        if isinstance(event, UserTranscriptDelta):  # the deltas are the transcript: no final event
            return self._user_transcript(event.text, event.start_ms, event.end_ms)
        if isinstance(event, BargeIn):
            return self._barge_in(event.at_ms)
        if isinstance(event, SessionEnded) and event.reason != "client_disconnected":
            return self._ended(event.reason)
        # SessionReady is `started` (the host passes its time); SessionUpdated, Stats, PlaybackClear and
        # the VAD's turns have no Live counterpart: there are no turns, and the barge_in notice says
        # what playback.clear would.
        return []

    def _output_audio(self, pcm16: bytes, speaking: bool, at_ms: float) -> list[LiveOutput]:
        """One 80 ms frame of the engine's output at the session's rate (PCM16), at `at_ms`."""
        self.frames_out += 1
        out: list[LiveOutput] = []
        if self._in_stretch:
            if speaking:
                out += [self._delta(held_pcm, held_at) for held_pcm, held_at in self._held]
                out.append(self._delta(pcm16, at_ms))
                self._held = []
            else:
                self._held.append((pcm16, at_ms))
        if self.frames_out % USAGE_EVERY_FRAMES == 0:
            out.append(SendEvent(self.usage_event()))
        return out

    def _delta(self, pcm16: bytes, at_ms: float) -> SendEvent:
        start = int(at_ms)
        return SendEvent(
            {
                "type": "session.output_audio.delta",
                "delta": base64.b64encode(self.format.from_pcm16(pcm16)).decode(),
                "start_ms": start,
                "end_ms": start + FRAME_MS,
            }
        )

    def usage_event(self) -> dict[str, Any]:
        body: dict[str, Any] = {"usage": self._usage()}
        fill = self.context_fill()
        if fill is not None:
            body["context_window"] = {"usage_ratio": round(fill, 4)}
        return self.event("session.usage.updated", **body)

    def _output_text(self, text: str, at_ms: float) -> list[LiveOutput]:
        """A piece of the model's own text, produced with the frame at `at_ms`."""
        if not text:
            return []
        start = int(at_ms)
        return [
            self.send("session.output_transcript.delta", delta=text, start_ms=start, end_ms=start + FRAME_MS)
        ]

    def _user_transcript(self, text: str, start_ms: float, end_ms: float) -> list[LiveOutput]:
        """New words of a user utterance (fragments accumulate: later ones lead with a space)."""
        if not text:
            return []
        delta = f" {text}" if self._captioned and not text.startswith(" ") else text
        self._captioned = True
        return [
            self.send(
                "session.input_transcript.delta", delta=delta, start_ms=int(start_ms), end_ms=int(end_ms)
            )
        ]

    def _barge_in(self, at_ms: float) -> list[LiveOutput]:
        """The core saw the user talk over the assistant; with the `vad` policy it holds the engine silent."""
        if self.barge_in_policy != "vad":
            return []  # the model hears the user and decides itself whether to stop
        self._held = []
        message = (
            f"the user talked over the assistant at {int(at_ms)} ms of input: its audio stops here; "
            "drop what you have queued for playback"
        )
        return [SendEvent(self.info("barge_in", message))]

    def _ended(self, reason: str) -> list[LiveOutput]:
        """The core ended the session on its own (limits, shutdown): an error that says why, then session.closed."""
        expired = reason.startswith(("max_duration", "idle_timeout"))
        code = "session_expired" if expired else "session_ended"
        out: list[LiveOutput] = [SendEvent(self.error(LiveError(code, f"the session is over: {reason}")))]
        return out + self._close("expired" if expired else "connection_lost", None)
