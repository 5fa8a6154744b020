"""The OpenAI Realtime API (GA) on `/v1/realtime`, as pure code: no sockets, no clocks, no threads.

- `parse_client_event(text)` (server/protocols/realtime/client_events.py) turns one JSON text frame into a
  typed client event, or raises `RealtimeError` (code, message, param, event_id) that becomes an
  `error` server event.
- `RealtimeConversation` is the response/item state machine. It is fed client messages (`receive`)
  and the conversation core's events in the core's order (`conversation_event`), and returns, in
  order, `RealtimeOutput`s (server/protocols/realtime/records.py) for the adapter to carry out
  after the call: server events to send, actions on the conversation (push audio, hold the
  assistant, reconfigure VAD and captions, a new prompt, an image to check or to remove).

How a full-duplex model maps onto turns (docs/realtime.md says it for users):
- The model hears every appended sample as it arrives; commit/clear only shape conversation items.
- A response is one contiguous stretch of assistant speech as the conversation core reports it
  (assistant/conversation/turns.py): it opens on the first speaking frame and closes when the core
  ends the stretch after its hangover. Quiet frames inside a stretch are sent (they are pauses
  between words); quiet frames at its tail and outside responses are never sent.
- `create_response: false` or `turn_detection: null`: the engine is held silent except while a
  response the client asked for (`response.create`) is open.
- `interrupt_response`: the core's barge-in (user speech over the assistant's, detected once, in
  the core) cancels the open response and drops the rest of its stretch, and the core holds the
  engine silent until the user's speech stops (its own barge-in hold, asked for here); a user turn
  that starts before a requested response has begun cancels that response the same way.
- `response.cancel` and `max_output_tokens` (1 token = one 80 ms frame) cut the stretch and keep the
  engine silent until the user's next turn (or the next `response.create`).
"""

from __future__ import annotations

import base64
from typing import Any

from assistant.conversation import (
    AssistantSpeechStarted,
    AssistantSpeechStopped,
    AssistantText,
    AudioOut,
    BargeIn,
    ConversationEvent,
    Error,
    InputSpeechStarted,
    InputSpeechStopped,
    PromptChangeLimited,
    SessionEnded,
    UserTranscript,
    UserTranscriptDelta,
)
from audio.frames import FRAME_MS
from server.protocols.realtime.client_events import (
    BYTES_PER_MS,
    MIN_COMMIT_MS,
    NO_CAPTIONS,
    AudioAppend,
    AudioClear,
    AudioCommit,
    ClientEvent,
    InputImagePart,
    ItemCreate,
    ItemDelete,
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
from server.protocols.realtime.client_items import ClientItems
from server.protocols.realtime.prompt import prompt_update
from server.protocols.realtime.records import (
    ConfigureInput,
    HoldUntilUserStops,
    Item,
    PushAudio,
    RealtimeOutput,
    Response,
    SendEvent,
    SetPrompt,
    SetSilenced,
    session_json,
)


class RealtimeConversation(ClientItems):
    """One `/v1/realtime` conversation. Every method returns the `RealtimeOutput`s it caused, in order."""

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
        check_prompt_change=None,
    ):
        """takes_prompts: the model honours instructions and voice (PersonaPlex family); then
        check_prompt(instructions, voice) raises ValueError for a prompt the engine cannot use, and
        check_prompt_change() raises PromptChangeLimited while a new prompt must wait."""
        self.session_id = session_id
        self.model = model
        self.voice = voice
        self.takes_prompts = takes_prompts
        self.instructions = instructions
        self.check_prompt = check_prompt or (lambda instructions, voice: None)
        self.check_prompt_change = check_prompt_change or (lambda: None)
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
        self._muted_until_user_turn = False  # after response.cancel / max_output_tokens
        self._drop_stretch = False  # ignore the rest of a cut stretch of speech
        self._in_stretch = False  # the core reports a stretch of assistant speech in progress
        self._pending_text: list[tuple[int, str]] = []
        self._injected: list[tuple[float, float]] = []  # input spans fed by conversation.item.create
        self._suppress_vad_turn = False
        # Set by the adapter before each client event: user audio queued behind item audio, not yet heard.
        self.audio_backlog_ms = 0.0
        self.image_item_id: str | None = None  # the item whose image the model sees
        self.pending_image_ids: set[str] = set()  # items whose image is being checked

    # -- ids and events ------------------------------------------------------------------------
    def _new_id(self, kind: str) -> str:
        self._counter += 1
        return f"{kind}_{self._prefix}{self._counter:05d}"

    def event(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"type": type_, "event_id": self._new_id("event"), **fields}

    def send(self, type_: str, **fields: Any) -> SendEvent:
        return SendEvent(self.event(type_, **fields))

    def error(self, err: RealtimeError) -> dict[str, Any]:
        return self.event("error", error=err.body())

    def session_json(self) -> dict[str, Any]:
        settings = (self.instructions, self.max_output_tokens, self.turn_detection, self.transcription)
        return session_json(self.session_id, self.model, *settings, self.voice)

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> list[RealtimeOutput]:
        created = self.send("session.created", session=self.session_json())
        return [created, self._configure(), *self._sync_silence()]

    def _configure(self) -> ConfigureInput:
        return ConfigureInput(self.turn_detection, self.transcription is not None)

    # -- client events -------------------------------------------------------------------------
    def receive(self, data: str | bytes) -> list[RealtimeOutput]:
        """One raw websocket message in; events and actions out (an `error` event if it was refused)."""
        try:
            return self.handle(parse_client_event(data))
        except RealtimeError as err:
            return [SendEvent(self.error(err))]

    def handle(self, ev: ClientEvent) -> list[RealtimeOutput]:
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
            return [self.send("input_audio_buffer.cleared")]
        if isinstance(ev, ItemCreate):
            return self._image_item_create(ev) if ev.item.part(InputImagePart)[1] else self._item_create(ev)
        if isinstance(ev, ItemDelete):
            return self._item_delete(ev)
        if isinstance(ev, ItemTruncate):
            return self._truncate(ev)
        if isinstance(ev, ItemRetrieve):
            return self._retrieve(ev)
        if isinstance(ev, ResponseCreate):
            return self._response_create(ev)
        if isinstance(ev, ResponseCancel):
            return self._response_cancel(ev)
        raise TypeError(f"not a client event: {ev!r}")

    def _session_update(self, ev: SessionUpdate) -> list[RealtimeOutput]:
        out: list[RealtimeOutput] = []
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
            try:
                self.check_prompt_change()
            except PromptChangeLimited as exc:  # before anything changes: the update is refused whole
                param = (
                    "session.instructions" if prompt[0] != self.instructions else "session.audio.output.voice"
                )
                raise RealtimeError(exc.code, str(exc), param, ev.event_id) from None
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
            self._user_speaking = self._suppress_vad_turn = False
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
        out.append(
            self.send(
                "session.updated", session=self.session_json(), **({"warnings": warnings} if warnings else {})
            )
        )
        return out + self._sync_silence()

    def _commit(self, ev: AudioCommit) -> list[RealtimeOutput]:
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
        image: bool = False,
    ) -> list[RealtimeOutput]:
        previous = self.order[-1] if self.order else None
        item = Item(item_id, "user", start_ms=start_ms, end_ms=end_ms, transcript=transcript, image=image)
        self.items[item_id] = item
        self.order.append(item_id)
        self.buffer_start_ms = max(self.buffer_start_ms, end_ms)
        out = []
        if committed:
            out.append(self.send("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous))
        out.append(self.send("conversation.item.added", previous_item_id=previous, item=item.to_json()))
        out.append(self.send("conversation.item.done", previous_item_id=previous, item=item.to_json()))
        return out

    def _response_create(self, ev: ResponseCreate) -> list[RealtimeOutput]:
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

    def _response_cancel(self, ev: ResponseCancel) -> list[RealtimeOutput]:
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
    ) -> list[RealtimeOutput]:
        r = Response(self._new_id("resp"), metadata, max_frames, requested, input_ms_at_start=self.input_ms)
        self.response = r
        response = r.to_json(self.conversation_id, self.input_ms, self.voice)
        return [
            self.send(
                "response.created", response=response, **({"warnings": list(warnings)} if warnings else {})
            )
        ]

    def _open_item(self, r: Response) -> list[RealtimeOutput]:
        previous = self.order[-1] if self.order else None
        item = Item(self._new_id("item"), "assistant", status="in_progress")
        r.item = item
        r.speech_from_frame = self.frames_out
        self.items[item.id] = item
        self.order.append(item.id)
        added = item.to_json()
        return [
            self.send("response.output_item.added", response_id=r.id, output_index=0, item=added),
            self.send("conversation.item.added", previous_item_id=previous, item=added),
            self.send(
                "response.content_part.added",
                response_id=r.id,
                item_id=item.id,
                output_index=0,
                content_index=0,
                part={"type": "audio", "transcript": ""},
            ),
        ]

    def _finish(self, status: str, reason: str | None = None) -> list[RealtimeOutput]:
        """Close the open response with `status`; a cut (not completed) stretch is dropped from here on."""
        r = self.response
        assert r is not None
        self.response = None
        r.status = status
        r.status_details = (
            None if status == "completed" else {"type": status, "reason": reason, "error": None}
        )
        out: list[RealtimeOutput] = []
        if r.item is not None:
            item = r.item
            item.status = "completed" if status == "completed" else "incomplete"
            ids = {"response_id": r.id, "item_id": item.id, "output_index": 0, "content_index": 0}
            out += [
                self.send("response.output_audio.done", **ids),
                self.send("response.output_audio_transcript.done", **ids, transcript=item.text),
                self.send(
                    "response.content_part.done", **ids, part={"type": "audio", "transcript": item.text}
                ),
                self.send("response.output_item.done", response_id=r.id, output_index=0, item=item.to_json()),
                self.send(
                    "conversation.item.done", previous_item_id=self._previous_of(item.id), item=item.to_json()
                ),
            ]
        out.append(
            self.send("response.done", response=r.to_json(self.conversation_id, self.input_ms, self.voice))
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
        """The session's turn control: the engine held unless a response has (or may take) the floor."""
        if self.response is not None and self.response.requested:
            return False  # the client gave the model the floor
        if self._muted_until_user_turn:
            return True
        return self.response is None and not self._auto_responses()

    def _sync_silence(self) -> list[RealtimeOutput]:
        silent = self._wanted_silence()
        if silent == self._silenced:
            return []
        self._silenced = silent
        return [SetSilenced(silent)]

    # -- what the conversation core reports ----------------------------------------------------
    def conversation_event(self, event: ConversationEvent) -> list[RealtimeOutput]:
        """One event the conversation returned, in the order it returned them."""
        if isinstance(event, AudioOut):
            return self._output_audio(event.pcm16, event.speaking)
        if isinstance(event, AssistantText):
            return self._output_text(event.text)
        if isinstance(event, AssistantSpeechStarted):
            self._in_stretch = True  # comes before that frame's audio
            return []
        if isinstance(event, AssistantSpeechStopped):
            return self._assistant_stopped()
        if isinstance(event, BargeIn):
            return self._barge_in()
        if isinstance(event, InputSpeechStarted):
            return self._user_speech_started(event.at_ms)
        if isinstance(event, InputSpeechStopped):
            return self._user_speech_stopped(event.at_ms)
        if isinstance(event, UserTranscriptDelta):
            return self._user_transcript_delta(event.text, event.start_ms)
        if isinstance(event, UserTranscript):
            return self._user_transcript(event.text, event.start_ms, event.end_ms)
        if isinstance(event, Error):
            return [
                SendEvent(self.error(RealtimeError(event.code, event.message, error_type="server_error")))
            ]
        if isinstance(event, SessionEnded) and event.reason not in ("client_disconnected", "client_ended"):
            code = "session_expired" if event.reason.startswith("max_duration") else "session_ended"
            return [SendEvent(self.error(RealtimeError(code, f"the session is over: {event.reason}")))]
        return []  # no counterpart: speech_started and response.done tell the client to stop playback

    def _user_speech_started(self, at_ms: float) -> list[RealtimeOutput]:
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
        out: list[RealtimeOutput] = [
            self.send(
                "input_audio_buffer.speech_started", audio_start_ms=int(at_ms), item_id=self._speech_item_id
            )
        ]
        r = self.response
        if r is not None and r.item is None and self.turn_detection.interrupt_response:
            # A response the model has not started yet gives way to the user's turn.
            out += self._finish("cancelled", "turn_detected")
            out.append(HoldUntilUserStops())
        return out + self._sync_silence()

    def _barge_in(self) -> list[RealtimeOutput]:
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
        return out + [HoldUntilUserStops()] + self._sync_silence()

    def _assistant_stopped(self) -> list[RealtimeOutput]:
        """The core saw the stretch end, after its hangover of quiet frames (before that frame's audio)."""
        self._in_stretch = False
        if self._drop_stretch:
            self._drop_stretch = False
            return []
        r = self.response
        if r is None or r.item is None:
            return []
        return self._finish("completed") + self._sync_silence()

    def _user_speech_stopped(self, at_ms: float) -> list[RealtimeOutput]:
        if self.turn_detection is None:
            return []
        if self._suppress_vad_turn:
            self._suppress_vad_turn = False
            return []
        if not self._user_speaking:
            return []
        self._user_speaking = False
        item_id = self._speech_item_id or self._new_id("item")
        out: list[RealtimeOutput] = [
            self.send("input_audio_buffer.speech_stopped", audio_end_ms=int(at_ms), item_id=item_id)
        ]
        if not self._speech_committed:
            out += self._add_user_item(item_id, self.buffer_start_ms, max(at_ms, self.buffer_start_ms))
        return out + self._sync_silence()

    def _user_transcript_delta(self, text: str, start_ms: float) -> list[RealtimeOutput]:
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
            self.send(
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

    def _user_transcript(self, text: str, start_ms: float, end_ms: float) -> list[RealtimeOutput]:
        """A caption of a finished user utterance; attached to the user item it overlaps most."""
        if self.transcription is None:
            return []
        best = self._user_item_at(start_ms, end_ms)
        if best is None:
            return []
        best.transcript = text
        return [
            self.send(
                "conversation.item.input_audio_transcription.completed",
                item_id=best.id,
                content_index=0,
                transcript=text,
                usage={"type": "duration", "seconds": round((end_ms - start_ms) / 1000, 3)},
            )
        ]

    def _output_audio(self, pcm16: bytes, speaking: bool) -> list[RealtimeOutput]:
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

    def _frame_in_response(self, r: Response, pcm16: bytes, speaking: bool) -> list[RealtimeOutput]:
        out: list[RealtimeOutput] = []
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

    def _send_frame(self, r: Response, pcm16: bytes, text: str) -> list[RealtimeOutput]:
        item = r.item
        ids = {"response_id": r.id, "item_id": item.id, "output_index": 0, "content_index": 0}
        out: list[RealtimeOutput] = []
        if pcm16:
            item.frames += 1
            out.append(
                self.send("response.output_audio.delta", **ids, delta=base64.b64encode(pcm16).decode())
            )
        if text:
            item.pieces.append((max(0, item.frames - 1), text))
            out.append(self.send("response.output_audio_transcript.delta", **ids, delta=text))
        return out

    def _output_text(self, text: str) -> list[RealtimeOutput]:
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
