"""The OpenAI Realtime API (GA) on `/v1/realtime`, as pure code: no sockets, no clocks, no threads.

- `parse_client_event(text)` (server/protocols/realtime/client_events.py) turns one JSON text frame into a
  typed client event, or raises `RealtimeError` (code, message, param, event_id) that becomes an
  `error` server event.
- `RealtimeConversation` is the response/item state machine. It is fed client events and what the
  core reports (user speech started/stopped on the input timeline, one output frame of assistant
  audio with its speaking flag, text pieces, user captions) and returns, in order, server events
  (plain dicts, ready for `json.dumps`) and `Action`s (server/protocols/realtime/records.py) for the adapter
  to carry out on the session (push audio, force silence, reconfigure VAD and captions).

How a full-duplex model maps onto turns (docs/realtime.md says it for users):
- The model hears every appended sample as it arrives; commit/clear only shape conversation items.
- A response is one contiguous stretch of assistant speech as the conversation core reports it
  (assistant/conversation/turns.py): it opens on the first speaking frame and closes when the core
  ends the stretch after its hangover. Quiet frames inside a stretch are sent (they are pauses
  between words); quiet frames at its tail and outside responses are never sent.
- `create_response: false` or `turn_detection: null`: the engine is held silent except while a
  response the client asked for (`response.create`) is open.
- `interrupt_response`: the core's barge-in (user speech over the assistant's, detected once, in
  the core) cancels the open response, drops the rest of its stretch, and holds the engine silent
  until the user's speech stops; a user turn that starts before a requested response has begun
  cancels that response.
- `response.cancel` and `max_output_tokens` (1 token = one 80 ms frame) cut the stretch and keep the
  engine silent until the user's next turn (or the next `response.create`).
"""

from __future__ import annotations

import base64
from typing import Any

from audio.frames import FRAME_MS, SAMPLE_RATE_HZ
from server.protocols.realtime.client_events import (
    BYTES_PER_MS,
    MAX_AUDIO_BACKLOG_MS,
    MIN_COMMIT_MS,
    NO_CAPTIONS,
    PCM_FORMAT,
    AudioAppend,
    AudioClear,
    AudioCommit,
    ClientEvent,
    ItemCreate,
    ItemRetrieve,
    ItemTruncate,
    RealtimeError,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
    TurnDetection,
    parse_client_event,
    warning,
)
from server.protocols.realtime.prompt import prompt_update
from server.protocols.realtime.records import (
    ConfigureInput,
    Item,
    PushAudio,
    Response,
    SetPrompt,
    SetSilenced,
)

__all__ = [
    "BYTES_PER_MS",
    "FRAME_MS",
    "SAMPLE_RATE_HZ",
    "ConfigureInput",
    "PushAudio",
    "RealtimeConversation",
    "RealtimeError",
    "SetPrompt",
    "SetSilenced",
    "TurnDetection",
]


class RealtimeConversation:
    """One `/v1/realtime` conversation. Every method returns a list of server events (dicts) and Actions."""

    def __init__(
        self,
        *,
        session_id: str,
        model: str,
        voice: str,
        id_prefix: str,
        captions_model: str | None = None,
        threshold_applies: bool = True,
        response_start_timeout_ms: int = 5000,
        pending_text_frames: int = 4,
        takes_prompts: bool = False,
        instructions: str = "",
        check_prompt=None,
    ):
        """takes_prompts: the model honours instructions and voice (PersonaPlex family); then
        check_prompt(instructions, voice) raises ValueError for a prompt the engine cannot use."""
        self.session_id = session_id
        self.model = model
        self.voice = voice
        self.takes_prompts = takes_prompts
        self.instructions = instructions
        self.check_prompt = check_prompt or (lambda instructions, voice: None)
        self.captions_model = captions_model
        self.threshold_applies = threshold_applies  # False: the server's VAD decides voiced/unvoiced itself
        self.response_start_timeout_frames = max(1, response_start_timeout_ms // FRAME_MS)
        self.pending_text_frames = pending_text_frames
        self.conversation_id = f"conv_{id_prefix}"
        self._prefix = id_prefix
        self._counter = 0
        self.turn_detection: TurnDetection | None = TurnDetection()
        self.transcription: dict | None = None
        self.max_output_tokens: int | None = None
        self.items: dict[str, Item] = {}
        self.order: list[str] = []
        self.response: Response | None = None
        self.input_ms = 0.0  # input timeline: ms of user audio received
        self.buffer_start_ms = 0.0  # where the uncommitted input buffer begins
        self.frames_out = 0
        self._silenced: bool | None = None
        self._user_speaking = False
        self._speech_from_frame = 0  # output frame at which the user's current speech began
        self._speech_item_id: str | None = None  # id announced in speech_started
        self._speech_committed = False  # the current speech was committed by the client already
        self._barge_in_mute = False  # interrupt_response: hold the engine until the user stops
        self._muted_until_user_turn = False  # after response.cancel / max_output_tokens
        self._drop_stretch = False  # ignore the rest of a cut stretch of speech
        self._in_stretch = False  # the core reports a stretch of assistant speech in progress
        self._pending_text: list[tuple[int, str]] = []
        self._injected: list[tuple[float, float]] = []  # input spans fed by conversation.item.create
        self._suppress_vad_turn = False
        # Set by the adapter before each client event: user audio queued behind item audio, not yet heard.
        self.audio_backlog_ms = 0.0

    # -- ids and events ------------------------------------------------------------------------
    def _new_id(self, kind: str) -> str:
        self._counter += 1
        return f"{kind}_{self._prefix}{self._counter:05d}"

    def event(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"type": type_, "event_id": self._new_id("event"), **fields}

    def error(self, err: RealtimeError) -> dict[str, Any]:
        return self.event("error", error=err.body())

    def session_json(self) -> dict[str, Any]:
        td = self.turn_detection.to_json() if self.turn_detection else None
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.session_id,
            "model": self.model,
            "output_modalities": ["audio"],
            "instructions": self.instructions,
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf" if self.max_output_tokens is None else self.max_output_tokens,
            "tracing": None,
            "truncation": "disabled",
            "prompt": None,
            "include": None,
            "audio": {
                "input": {
                    "format": dict(PCM_FORMAT),
                    "transcription": self.transcription,
                    "noise_reduction": None,
                    "turn_detection": td,
                },
                "output": {"format": dict(PCM_FORMAT), "voice": self.voice, "speed": 1.0},
            },
        }

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> list:
        out: list = [self.event("session.created", session=self.session_json())]
        out.append(self._configure())
        out += self._sync_silence()
        return out

    def _configure(self) -> ConfigureInput:
        return ConfigureInput(self.turn_detection, self.transcription is not None)

    # -- client events -------------------------------------------------------------------------
    def receive(self, data: str | bytes) -> list:
        """One raw websocket message in; events and actions out (an `error` event if it was refused)."""
        try:
            return self.handle(parse_client_event(data))
        except RealtimeError as err:
            return [self.error(err)]

    def handle(self, ev: ClientEvent) -> list:
        if isinstance(ev, SessionUpdate):
            return self._session_update(ev)
        if isinstance(ev, AudioAppend):
            self.input_ms += len(ev.audio) / BYTES_PER_MS
            return [PushAudio(ev.audio)] if ev.audio else []
        if isinstance(ev, AudioCommit):
            return self._commit(ev)
        if isinstance(ev, AudioClear):
            self.buffer_start_ms = self.input_ms
            if self._user_speaking:
                self._speech_committed = True  # the cleared speech does not become an item
            return [self.event("input_audio_buffer.cleared")]
        if isinstance(ev, ItemCreate):
            return self._item_create(ev)
        if isinstance(ev, ItemTruncate):
            return self._truncate(ev)
        if isinstance(ev, ItemRetrieve):
            return self._retrieve(ev)
        if isinstance(ev, ResponseCreate):
            return self._response_create(ev)
        if isinstance(ev, ResponseCancel):
            return self._response_cancel(ev)
        raise TypeError(f"not a client event: {ev!r}")

    def _session_update(self, ev: SessionUpdate) -> list:
        out: list = []
        session, audio_in = ev.session, ev.session.audio.input
        warnings = session.warnings()
        prompt = prompt_update(
            (self.instructions, self.voice),
            ev,
            warnings,
            takes_prompts=self.takes_prompts,
            check_prompt=self.check_prompt,
            model=self.model,
            heard_audio=self.input_ms > 0,
        )
        if prompt is not None:
            self.instructions, self.voice = prompt
            out.append(SetPrompt(prompt[0] or None, prompt[1]))
        reconfigure = False
        if "turn_detection" in audio_in.model_fields_set:
            vad = audio_in.turn_detection
            current = self.turn_detection or TurnDetection()
            self.turn_detection = vad and vad.applied_to(
                current, warnings, threshold_applies=self.threshold_applies
            )
            reconfigure = True
            # The session restarts its VAD from silence on a new configuration: so does the turn state here.
            self._user_speaking = self._barge_in_mute = self._suppress_vad_turn = False
        if "transcription" in audio_in.model_fields_set:
            tr = audio_in.transcription
            if tr is None or self.captions_model is not None:
                self.transcription = tr and tr.setting(self.captions_model, warnings)
                reconfigure = True
            else:
                warnings.append(warning("session.audio.input.transcription", NO_CAPTIONS))
        if "max_output_tokens" in session.model_fields_set:
            self.max_output_tokens = session.max_output_tokens
        if reconfigure:
            out.append(self._configure())
        updated = self.event("session.updated", session=self.session_json())
        if warnings:
            updated["warnings"] = warnings
        out.append(updated)
        return out + self._sync_silence()

    def _commit(self, ev: AudioCommit) -> list:
        buffered = self.input_ms - self.buffer_start_ms
        if buffered < MIN_COMMIT_MS:
            raise RealtimeError(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered:.2f}ms of audio.",
                None,
                ev.event_id,
            )
        item_id = self._speech_item_id if self._user_speaking and not self._speech_committed else None
        if item_id is not None:
            self._speech_committed = True
        return self._add_user_item(item_id or self._new_id("item"), self.buffer_start_ms, self.input_ms)

    def _add_user_item(
        self,
        item_id: str,
        start_ms: float,
        end_ms: float,
        transcript: str | None = None,
        committed: bool = True,
    ) -> list:
        previous = self.order[-1] if self.order else None
        item = Item(item_id, "user", start_ms=start_ms, end_ms=end_ms, transcript=transcript)
        self.items[item_id] = item
        self.order.append(item_id)
        self.buffer_start_ms = max(self.buffer_start_ms, end_ms)
        out = []
        if committed:
            out.append(self.event("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous))
        out.append(self.event("conversation.item.added", previous_item_id=previous, item=item.to_json()))
        out.append(self.event("conversation.item.done", previous_item_id=previous, item=item.to_json()))
        return out

    def _item_create(self, ev: ItemCreate) -> list:
        if ev.item.id is not None and ev.item.id in self.items:
            raise RealtimeError(
                "invalid_value", f"item.id {ev.item.id!r} already exists", "item.id", ev.event_id
            )
        last = self.order[-1] if self.order else None
        appending = ev.previous_item_id in (None, last) or (ev.previous_item_id == "root" and not self.order)
        if not appending:
            raise RealtimeError(
                "unsupported_feature",
                "items can only be appended at the end of the conversation "
                "(previous_item_id must be the last item or omitted)",
                "previous_item_id",
                ev.event_id,
            )
        part = ev.item.content[0]
        item_ms = len(part.audio) / BYTES_PER_MS
        if self.audio_backlog_ms + item_ms > MAX_AUDIO_BACKLOG_MS:
            raise RealtimeError(
                "input_audio_backlog_full",
                f"{self.audio_backlog_ms / 1000:.1f} s of audio are still waiting to be heard (item audio is "
                f"fed at real-time speed) and this item adds {item_ms / 1000:.1f} s; at most "
                f"{MAX_AUDIO_BACKLOG_MS / 1000:g} s may wait: send it once the model has heard more",
                "item.content[0].audio",
                ev.event_id,
            )
        start = self.input_ms
        self.input_ms += item_ms
        self._injected.append((start, self.input_ms))
        out: list = [PushAudio(part.audio, paced=True)]
        return out + self._add_user_item(
            ev.item.id or self._new_id("item"), start, self.input_ms, part.transcript, committed=False
        )

    def _truncate(self, ev: ItemTruncate) -> list:
        item = self.items.get(ev.item_id)
        if item is None:
            raise RealtimeError(
                "item_not_found",
                f"Error truncating item: the item with id {ev.item_id!r} does not exist.",
                "item_id",
                ev.event_id,
            )
        if item.role != "assistant":
            raise RealtimeError(
                "invalid_value",
                f"item {ev.item_id!r} is a {item.role} item; only assistant audio can be truncated",
                "item_id",
                ev.event_id,
            )
        # Audio goes out in real time, so a client's playback clock can name more than was sent (Pipecat
        # counts wall time from the first delta): the listener heard all of it.
        end_ms = min(ev.audio_end_ms, item.audio_ms)
        out: list = []
        if self.response is not None and self.response.item is item:
            # The listener stopped hearing it: generating more of it makes no sense.
            out += self._finish("cancelled", "client_cancelled")
        item.audio_end_ms = end_ms
        item.pieces = [(i, p) for i, p in item.pieces if i * FRAME_MS < end_ms]
        out.append(
            self.event("conversation.item.truncated", item_id=item.id, content_index=0, audio_end_ms=end_ms)
        )
        return out + self._sync_silence()

    def _retrieve(self, ev: ItemRetrieve) -> list:
        """The item as the server holds it: id, role, status, transcripts (its audio is not kept)."""
        item = self.items.get(ev.item_id)
        if item is None:
            raise RealtimeError(
                "item_retrieve_invalid_item_id",
                f"Error retrieving item: the item with id {ev.item_id!r} does not exist.",
                "item_id",
                ev.event_id,
            )
        return [self.event("conversation.item.retrieved", item=item.to_json())]

    def _response_create(self, ev: ResponseCreate) -> list:
        if self.response is not None:
            raise RealtimeError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.response.id}. "
                "Wait until the response is finished before creating a new one.",
                None,
                ev.event_id,
            )
        max_frames = self.max_output_tokens if ev.max_output_tokens == "session" else ev.max_output_tokens
        self._muted_until_user_turn = False
        out = self._open_response(
            requested=True, metadata=ev.response.metadata, max_frames=max_frames, warnings=ev.warnings()
        )
        return out + self._sync_silence()

    def _response_cancel(self, ev: ResponseCancel) -> list:
        r = self.response
        if r is None or (ev.response_id is not None and ev.response_id != r.id):
            # OpenAI's wording: clients (LiveKit) ignore this race with a barge-in by its message.
            raise RealtimeError(
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
                "response_id" if ev.response_id else None,
                ev.event_id,
            )
        out = self._finish("cancelled", "client_cancelled")
        return out + self._sync_silence()

    # -- response lifecycle --------------------------------------------------------------------
    def _open_response(
        self,
        *,
        requested: bool,
        metadata: dict | None = None,
        max_frames: int | None = None,
        warnings: tuple = (),
    ) -> list:
        r = Response(self._new_id("resp"), metadata, max_frames, requested, input_ms_at_start=self.input_ms)
        self.response = r
        created = self.event(
            "response.created", response=r.to_json(self.conversation_id, self.input_ms, self.voice)
        )
        if warnings:
            created["warnings"] = list(warnings)
        return [created]

    def _open_item(self, r: Response) -> list:
        previous = self.order[-1] if self.order else None
        item = Item(self._new_id("item"), "assistant", status="in_progress")
        r.item = item
        r.speech_from_frame = self.frames_out
        self.items[item.id] = item
        self.order.append(item.id)
        added = item.to_json()
        return [
            self.event("response.output_item.added", response_id=r.id, output_index=0, item=added),
            self.event("conversation.item.added", previous_item_id=previous, item=added),
            self.event(
                "response.content_part.added",
                response_id=r.id,
                item_id=item.id,
                output_index=0,
                content_index=0,
                part={"type": "audio", "transcript": ""},
            ),
        ]

    def _finish(self, status: str, reason: str | None = None) -> list:
        """Close the open response with `status`; a cut (not completed) stretch is dropped from here on."""
        r = self.response
        assert r is not None
        self.response = None
        r.status = status
        r.status_details = (
            None if status == "completed" else {"type": status, "reason": reason, "error": None}
        )
        out: list = []
        if r.item is not None:
            item = r.item
            item.status = "completed" if status == "completed" else "incomplete"
            ids = {"response_id": r.id, "item_id": item.id, "output_index": 0, "content_index": 0}
            out += [
                self.event("response.output_audio.done", **ids),
                self.event("response.output_audio_transcript.done", **ids, transcript=item.text),
                self.event(
                    "response.content_part.done", **ids, part={"type": "audio", "transcript": item.text}
                ),
                self.event(
                    "response.output_item.done", response_id=r.id, output_index=0, item=item.to_json()
                ),
                self.event(
                    "conversation.item.done", previous_item_id=self._previous_of(item.id), item=item.to_json()
                ),
            ]
        out.append(
            self.event("response.done", response=r.to_json(self.conversation_id, self.input_ms, self.voice))
        )
        if status != "completed" and r.item is not None and self._in_stretch:
            self._drop_stretch = True
        if status != "completed" and reason != "turn_detected":
            self._muted_until_user_turn = True
        return out

    def _previous_of(self, item_id: str) -> str | None:
        i = self.order.index(item_id)
        return self.order[i - 1] if i else None

    def _auto_responses(self) -> bool:
        return self.turn_detection is not None and self.turn_detection.create_response

    def _wanted_silence(self) -> bool:
        if self._barge_in_mute:
            return True
        if self.response is not None and self.response.requested:
            return False  # the client gave the model the floor
        if self._muted_until_user_turn:
            return True
        return self.response is None and not self._auto_responses()

    def _sync_silence(self) -> list:
        silent = self._wanted_silence()
        if silent == self._silenced:
            return []
        self._silenced = silent
        return [SetSilenced(silent)]

    # -- what the session core reports ---------------------------------------------------------
    def user_speech_started(self, at_ms: float) -> list:
        """Server VAD: user speech began at `at_ms` on the input timeline."""
        if self.turn_detection is None:
            return []
        if any(start <= at_ms < end for start, end in self._injected):
            self._suppress_vad_turn = True  # conversation.item.create audio already is an item
            return []
        self._user_speaking = True
        self._speech_committed = False
        self._speech_item_id = self._new_id("item")
        self._speech_from_frame = self.frames_out
        self._muted_until_user_turn = False
        out: list = [
            self.event(
                "input_audio_buffer.speech_started", audio_start_ms=int(at_ms), item_id=self._speech_item_id
            )
        ]
        r = self.response
        if r is not None and r.item is None and self.turn_detection.interrupt_response:
            # A response the model has not started yet gives way to the user's turn.
            out += self._finish("cancelled", "turn_detected")
            self._barge_in_mute = True
        return out + self._sync_silence()

    def barge_in(self, at_ms: float) -> list:
        """The core detected the user talking over the assistant (its one barge-in detector)."""
        td = self.turn_detection
        r = self.response
        if td is None or not td.interrupt_response or r is None or r.item is None or self._suppress_vad_turn:
            return []  # a response not yet speaking gave way at speech_started already
        if not self._user_speaking or self._speech_from_frame < r.speech_from_frame:
            # The model began over a user already talking (its own choice, a backchannel perhaps):
            # only speech that starts over the response interrupts it, as in the Realtime API.
            return []
        out = self._finish("cancelled", "turn_detected")
        self._barge_in_mute = self._user_speaking  # hold the engine until the user stops
        return out + self._sync_silence()

    def assistant_started(self) -> list:
        """The core saw a stretch of assistant speech begin (comes before that frame's audio)."""
        self._in_stretch = True
        return []

    def assistant_stopped(self) -> list:
        """The core saw the stretch end, after its hangover of quiet frames (before that frame's audio)."""
        self._in_stretch = False
        if self._drop_stretch:
            self._drop_stretch = False
            return []
        r = self.response
        if r is None or r.item is None:
            return []
        return self._finish("completed") + self._sync_silence()

    def user_speech_stopped(self, at_ms: float) -> list:
        if self.turn_detection is None:
            return []
        if self._suppress_vad_turn:
            self._suppress_vad_turn = False
            return []
        if not self._user_speaking:
            return []
        self._user_speaking = False
        self._barge_in_mute = False
        item_id = self._speech_item_id or self._new_id("item")
        out: list = [
            self.event("input_audio_buffer.speech_stopped", audio_end_ms=int(at_ms), item_id=item_id)
        ]
        if not self._speech_committed:
            out += self._add_user_item(item_id, self.buffer_start_ms, max(at_ms, self.buffer_start_ms))
        return out + self._sync_silence()

    def user_transcript_delta(self, text: str, start_ms: float) -> list:
        """New words of the user's utterance that began at `start_ms` (with its prefix padding), as the
        caption of its item: the one the current speech will become (announced in speech_started), or
        the committed one it became."""
        if self.transcription is None:
            return []
        committed = self._user_item_at(start_ms, start_ms + 1)
        if committed is not None:
            item_id = committed.id
        elif self._user_speaking and self._speech_item_id is not None:
            item_id = self._speech_item_id
        else:
            return []
        return [
            self.event(
                "conversation.item.input_audio_transcription.delta",
                item_id=item_id,
                content_index=0,
                delta=text,
            )
        ]

    def _user_item_at(self, start_ms: float, end_ms: float) -> Item | None:
        """The user item without a transcript that overlaps [start_ms, end_ms) most."""
        best, best_overlap = None, 0.0
        for item in self.items.values():
            if item.role == "user" and item.transcript is None:
                overlap = min(end_ms, item.end_ms) - max(start_ms, item.start_ms)
                if overlap > best_overlap:
                    best, best_overlap = item, overlap
        return best

    def user_transcript(self, text: str, start_ms: float, end_ms: float) -> list:
        """A caption of a finished user utterance; attached to the user item it overlaps most."""
        if self.transcription is None:
            return []
        best = self._user_item_at(start_ms, end_ms)
        if best is None:
            return []
        best.transcript = text
        return [
            self.event(
                "conversation.item.input_audio_transcription.completed",
                item_id=best.id,
                content_index=0,
                transcript=text,
                usage={"type": "duration", "seconds": round((end_ms - start_ms) / 1000, 3)},
            )
        ]

    def output_audio(self, pcm16: bytes, speaking: bool) -> list:
        """One 80 ms frame of the engine's output (silence included) and its voice-activity flag."""
        self.frames_out += 1
        if self._drop_stretch:
            return []
        r = self.response
        if r is None:
            if not speaking or self._silenced:
                return []  # outside a response (or a frame computed before the hold took effect)
            out = self._open_response(requested=False, max_frames=self.max_output_tokens)
            return out + self._frame_in_response(self.response, pcm16, speaking)
        return self._frame_in_response(r, pcm16, speaking)

    def _frame_in_response(self, r: Response, pcm16: bytes, speaking: bool) -> list:
        out: list = []
        if r.item is None:
            if not speaking:
                r.waited_frames += 1
                if r.waited_frames >= self.response_start_timeout_frames:
                    # The model kept quiet with the floor: the response completes empty.
                    out += self._finish("completed")
                    out += self._sync_silence()
                return out
            out += self._open_item(r)
            fresh = [(i, t) for i, t in self._pending_text if i > self.frames_out - self.pending_text_frames]
            self._pending_text = []
            if fresh:
                r.held.append([b"", "".join(t for _, t in fresh)])
        if not speaking:
            r.held.append([pcm16, ""])  # sent if speech follows; dropped if the stretch ends here
            return out
        for held_pcm, held_text in r.held:
            out += self._send_frame(r, held_pcm, held_text)
        r.held = []
        out += self._send_frame(r, pcm16, "")
        if r.max_frames is not None and r.item.frames >= r.max_frames:
            out += self._finish("incomplete", "max_output_tokens")
            out += self._sync_silence()
        return out

    def _send_frame(self, r: Response, pcm16: bytes, text: str) -> list:
        item = r.item
        ids = {"response_id": r.id, "item_id": item.id, "output_index": 0, "content_index": 0}
        out: list = []
        if pcm16:
            item.frames += 1
            out.append(
                self.event("response.output_audio.delta", **ids, delta=base64.b64encode(pcm16).decode())
            )
        if text:
            item.pieces.append((max(0, item.frames - 1), text))
            out.append(self.event("response.output_audio_transcript.delta", **ids, delta=text))
        return out

    def output_text(self, text: str) -> list:
        """A piece of the model's own text, produced with the last output frame."""
        if not text or self._drop_stretch:
            return []
        r = self.response
        if r is None or r.item is None:
            self._pending_text.append((self.frames_out, text))
            return []
        if r.held:
            r.held[-1][1] += text  # spoken after a pause that may still turn out to be the end
            return []
        return self._send_frame(r, b"", text)
