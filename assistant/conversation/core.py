"""The conversation core: one conversation in one engine slot, as pure code.

Every path that holds a conversation drives this class: the server's four protocol adapters,
`assistant talk --local` and `assistant respond`. It knows nothing of sockets, JSON, threads or
wall clocks (the clock is injected). It calls nobody back: each method takes plain data and
returns the `ConversationEvent`s it caused, in order, for its host to carry out after the call
(events for the listener; `SetEngineSilent`/`SetEngineOptions` for the engine slot;
`CaptionUtterance` for the captioner; on `SessionEnded` the host gives the slot back):

    conv = Conversation(session_id, sample_rate_hz, options=..., can_caption=...)
    conv.start()                            # [SessionReady]
    conv.push_audio(pcm16: bytes)           # user audio, PCM16 LE mono at sample_rate_hz, any length
    conv.push_samples(x: float32 (n,))      # the same as float samples at sample_rate_hz
    conv.update(**options)                  # ConversationOptions fields: [..., SessionUpdated]
    conv.check_prompt_change()              # raises PromptChangeLimited while a new prompt must wait
    conv.set_played_ms(ms)                  # how much assistant audio the listener has played
    conv.hold(True/False)                   # the host keeps the assistant quiet (manual turn control)
    conv.hold_until_user_stops()            # ... until the user's current speech ends (an interruption)
    conv.add_caption(request, text)         # the captioner's text for a CaptionUtterance: transcripts
    conv.end(reason)                        # [SessionEnded] (idempotent: [] once ended)
    conv.stats() -> dict                    # latency / underrun / drop figures

The frame loop (assistant/scheduler.py) calls `take_frame` before each batched engine step and
`deliver` after it, and hands what `deliver` returns to the host. Inside, the input is resampled
to 24 kHz, run through a streaming VAD as it arrives, and queued in an `InputBuffer` that hands
out 80 ms frames with bounded latency. VAD events drive `TurnTaking` (listening / assistant
speaking / user barging in), the one barge-in detector: a barge-in clears the listener's playback
at once and, with the `vad` policy (or when the host asks, as the Realtime API does when it
interrupts a response), keeps the engine (and the audio sent) silent until the user's turn ends.
The recording and metrics are injected sinks the core writes to; they never call back.
"""

from __future__ import annotations

import bisect
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from assistant.conversation.captioning import CaptionJob, UtteranceCaptions
from assistant.conversation.events import (
    AssistantSpeechStarted,
    AssistantSpeechStopped,
    AssistantText,
    AudioOut,
    BargeIn,
    CaptionUtterance,
    ConversationEvent,
    Error,
    InputSpeechStarted,
    InputSpeechStopped,
    PlaybackClear,
    SessionEnded,
    SessionReady,
    SessionUpdated,
    SetEngineOptions,
    SetEngineSilent,
    Stats,
    UserTranscript,
    UserTranscriptDelta,
)
from assistant.conversation.frame_phase import FramePhase
from assistant.conversation.input_buffer import (
    FRAME_UNDERRUN,
    InputBuffer,
    UtteranceAudio,
    resampler_burst_samples,
)
from assistant.conversation.options import (
    SUPPORTED_SAMPLE_RATES,
    ConversationLimits,
    ConversationOptions,
    PromptChangeLimited,
)
from assistant.conversation.turns import (
    AssistantHeld,
    BargeInDetected,
    StretchEnded,
    StretchStarted,
    TurnChange,
    TurnTaking,
)
from audio.frames import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE_HZ
from audio.pcm import float32_to_pcm16, pcm16_to_float32
from audio.resample import StreamResampler
from audio.vad import QUIET_LEAD_MS, StreamingVad, VadAnalysis, VadConfig, VadFrontEnd

_SAMPLES_PER_MS = SAMPLE_RATE_HZ // 1000
# Audio after the VAD's end of speech given to captions: the end can sit 30 ms after the last audible
# sample (silero, q2.wav), clipping a soft final phoneme; the end-of-turn silence has it buffered.
_CAPTION_TAIL_SAMPLES = 200 * _SAMPLES_PER_MS
# Interim captions while the user speaks, one a second; the final one is read once the user's sound
# has stopped this long, so it is ready when the VAD's end of turn comes (500 ms of silence by
# default). Shorter means an earlier final caption and more readings at pauses inside a sentence,
# none of them wasted as words (they go out as deltas): 6 readings for the 4 utterances of
# tests/data/speech (q1, q2, interrupt, backchannel) at 150 ms, 5 at 200 ms timed from the
# classifier's voiced end, as this was before.
_CAPTION_INTERIM_SAMPLES = 1000 * _SAMPLES_PER_MS
_CAPTION_PAUSE_SAMPLES = 150 * _SAMPLES_PER_MS
# The quiet a pause reading must hold after the classifier's end of the turn to be its final
# transcript (50 ms). The pause is timed from at most QUIET_LEAD_MS before that end, so when no
# voice came after the reading began it holds this much at least.
_CAPTION_MARGIN_SAMPLES = _CAPTION_PAUSE_SAMPLES - QUIET_LEAD_MS * _SAMPLES_PER_MS
_FRAME_WAITS_KEPT = 750  # the last minute of frames
# Options the engine's slot takes: changing one sends SetEngineOptions.
_SLOT_FIELDS = frozenset(
    {"seed", "temperature", "text_temperature", "top_k", "text_top_k", "instructions", "voice"}
)


@dataclass
class TurnLatency:
    """One user turn: when it ended and how fast the assistant answered (ms).

    response_gap_ms = end_of_turn_ms (last voiced sample arrived -> the VAD's end of turn, the
    silence wait) + server_overhead_ms (end of turn -> first reply frame sent).
    """

    response_gap_ms: float
    server_overhead_ms: float
    end_of_turn_ms: float = 0.0


class Conversation:
    """One conversation. Not thread-safe: call everything from one thread (the event loop's)."""

    def __init__(
        self,
        session_id: str,
        sample_rate_hz: int,
        *,
        options: ConversationOptions | None = None,
        limits: ConversationLimits | None = None,
        vad_config: VadConfig | None = None,
        recorder=None,
        metrics=None,
        can_caption: bool = False,
        check_prompt: Callable[[str | None, str | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        input_clock: bool = False,
    ):
        """can_caption: the host carries out CaptionUtterance (else a client asking for captions
            is told they are off).
        check_prompt(instructions, voice): raises ValueError for a prompt the engine cannot use.
        clock: seconds, monotonic (latency, limits); an offline host passes its frame time.
        input_clock: the frame loop ticks whenever a whole frame of input is queued (talk --local,
            respond) instead of on a wall clock, so no cushion against bursty input is kept.
        """
        if sample_rate_hz not in SUPPORTED_SAMPLE_RATES:
            raise ValueError(
                f"sample_rate {sample_rate_hz} is not supported; use one of {SUPPORTED_SAMPLE_RATES}"
            )
        self.session_id = session_id
        self.sample_rate_hz = sample_rate_hz
        self.options = options or ConversationOptions()
        self.limits = limits or ConversationLimits()
        self.base_vad = vad_config or VadConfig()
        self.recorder = recorder
        self.can_caption = can_caption
        self.check_prompt = check_prompt
        self._utterance: UtteranceAudio | None = None
        self._caption_jobs = UtteranceCaptions(
            _CAPTION_INTERIM_SAMPLES, _CAPTION_PAUSE_SAMPLES, _CAPTION_TAIL_SAMPLES, _CAPTION_MARGIN_SAMPLES
        )
        self.metrics = metrics
        self.clock = clock
        self.ended: str | None = None

        # No resampler at all at 24 kHz: the hot path then only converts and copies.
        same = sample_rate_hz == SAMPLE_RATE_HZ
        self._resample_in = None if same else StreamResampler(sample_rate_hz, SAMPLE_RATE_HZ)
        self._resample_out = None if same else StreamResampler(SAMPLE_RATE_HZ, sample_rate_hz)
        self._input = InputBuffer(
            FRAME_SAMPLES,
            self.limits.max_backlog_frames,
            lead_samples=0 if same or input_clock else resampler_burst_samples(sample_rate_hz),
            trim_silence=not input_clock,
        )
        self._vad = StreamingVad(self.options.vad_config(self.base_vad), sample_rate_hz=SAMPLE_RATE_HZ)
        self.turns = TurnTaking(
            self.options.barge_in,
            self.options.min_interrupt_ms * _SAMPLES_PER_MS,
            self.limits.assistant_hangover_frames,
        )
        self._host_hold = False  # the host keeps the assistant quiet (hold)
        self._engine_silent = False  # what the engine slot was last told

        now = self.clock()
        self.started_at = now
        self.last_input_at = now
        self.samples_in = 0  # input timeline, 24 kHz samples received
        self.samples_heard = 0  # input samples the engine has been given (padding not counted)
        self.frames_out = 0  # output timeline, 80 ms frames sent
        self.underruns = 0
        self.dropped_samples = 0  # input dropped to bound latency while the user spoke
        self.barge_ins = 0
        self.last_step_ms = 0.0
        self.played_ms: float | None = None  # from playback.position; None until the client reports
        # (input sample position at the end of a push, arrival time), to time the last voiced sample.
        self._arrivals: collections.deque[tuple[int, float]] = collections.deque(maxlen=256)
        # How long each frame's newest input sample waited for the tick that took it (s): the
        # wait the frame clock adds before the step, whatever the model does with the frame.
        self._frame_waits: collections.deque[float] = collections.deque(maxlen=_FRAME_WAITS_KEPT)
        self._last_stop_sample: int | None = None  # where the VAD's last end of turn fired (input position)
        self._turn_end: tuple[float, float] | None = None  # (last voiced sample arrival, end detected)
        self.latencies: list[TurnLatency] = []
        self._turn_text: list[tuple[float, str]] = []  # (output ms, piece) of the assistant's stretch
        self._pending_user_frame: np.ndarray | None = None
        self._prompt_free_at = -np.inf  # clock time from which the prompt may change again
        # Where frames end in the input, against a wall clock's ticks (an input clock needs none).
        self._phase = None if input_clock else FramePhase()
        self._tick_s: float | None = None  # when the tick that takes the next frame is due

    # -- host-facing API -----------------------------------------------------------------------
    def start(self) -> list[ConversationEvent]:
        """Announce the session: [SessionReady] (and an Error if captions cannot be had)."""
        refused = self._apply_captions()
        options = self.options.as_dict(self.base_vad)
        out: list[ConversationEvent] = [
            SessionReady(
                session_id=self.session_id,
                sample_rate=self.sample_rate_hz,
                frame_ms=FRAME_MS,
                options=options,
            )
        ]
        self._log({"event": "session.ready", "sample_rate": self.sample_rate_hz, "options": options})
        if refused:
            out.append(refused)
        return out

    def _apply_captions(self) -> Error | None:
        """Set up caption capture for the options; the error to send when captions are unavailable."""
        if not self.options.captions:
            self._utterance = None
            self._caption_jobs.reset()
            return None
        if not self.can_caption:
            self.options = self.options.replace(captions=False)
            return Error(
                code="invalid_value",
                message="captions are off on this server (start it with --captions auto); "
                "the session goes on without them",
            )
        if self._utterance is None:
            self._utterance = UtteranceAudio()
        return None

    def push_audio(self, pcm16: bytes) -> list[ConversationEvent]:
        """Client audio: PCM16 LE mono at sample_rate_hz, any (even) length."""
        if self.ended:
            return []
        return self.push_samples(pcm16_to_float32(pcm16))

    @property
    def vad_front(self) -> VadFrontEnd | None:
        """The VAD's signal half, for a host that analyses its input off this thread (a server's
        codec worker): `push_samples(x, vad_front.analyse(x))`, in order, one chunk at a time. An
        analysis made by a front end the VAD has since replaced is redone here. None where the input
        is resampled first (the VAD hears 24 kHz)."""
        return self._vad.front if self._resample_in is None else None

    def push_samples(
        self, x: np.ndarray, analysis: VadAnalysis | None = None, arrived_at: float | None = None
    ) -> list[ConversationEvent]:
        """Client audio: float32 (n,) in [-1, 1] at sample_rate_hz, any length. analysis: what
        `vad_front.analyse(x)` made of it, where the host has run that already. arrived_at: when
        the audio reached the server (this clock), where the host decoded it first: the frame
        phase and the frames' wait go by the client's arrivals, not by how long decoding took."""
        if self.ended:
            return []
        now = self.clock()
        arrived_at = now if arrived_at is None else min(arrived_at, now)
        self.last_input_at = now
        if analysis is not None and analysis.samples != x.shape[0]:
            raise ValueError(f"the analysis is of {analysis.samples} samples, the chunk {x.shape[0]}")
        if analysis is not None and analysis.front is not self.vad_front:
            analysis = None  # the VAD changed meanwhile (session.update): analysed again below
        if self._resample_in is not None:
            x = self._resample_in.process(x)
        if x.shape[0] == 0:
            return []
        if self._utterance is not None:
            self._utterance.push(x)
        self.samples_in += x.shape[0]
        self._arrivals.append((self.samples_in, arrived_at))
        if self._phase is not None:
            self._phase.arrived(self.samples_in, arrived_at)
        out: list[ConversationEvent] = []
        for ev in self._vad.push(x) if analysis is None else self._vad.apply(analysis):
            out += self._on_vad(ev, now)
        out += self._turn_changes(self.turns.user_input(self.samples_in, self._vad.probability >= 0.5))
        if self._utterance is not None and self._vad.speaking:
            job = self._caption_jobs.progress(self.samples_in, self._vad.quiet_since, self._vad.voiced_end)
            out += self._caption(job)
        dropped = self._input.push(x)
        if dropped:
            self.dropped_samples += dropped
            if self.metrics:
                self.metrics.inc("drops", dropped / FRAME_SAMPLES)
        return out

    def update(self, **changes: Any) -> list[ConversationEvent]:
        """Change options (ConversationOptions fields): [..., SessionUpdated]. Raises ValueError
        for a bad value (PromptChangeLimited for a new prompt too soon), and then changes nothing."""
        options = self.options.replace(**changes)
        vad_config = options.vad_config(self.base_vad)
        if self.check_prompt and changes.keys() & {"instructions", "voice"}:
            self.check_prompt(options.instructions, options.voice)
        new_prompt = (options.instructions, options.voice) != (self.options.instructions, self.options.voice)
        if new_prompt:
            self.check_prompt_change()
            per_s = self.limits.prompt_changes_per_s
            self._prompt_free_at = self.clock() + (1.0 / per_s if per_s else 0.0)
        policy_was = self.options.barge_in
        self.options = options
        self.turns.barge_in = self.options.barge_in
        self.turns.min_interrupt_samples = self.options.min_interrupt_ms * _SAMPLES_PER_MS
        out: list[ConversationEvent] = []
        if "vad" in changes:
            # A new VAD starts from silence; the turn state follows its events from here on.
            self._vad = StreamingVad(vad_config, sample_rate_hz=SAMPLE_RATE_HZ)
            if self.turns.user_speaking:
                out += self._turn_changes(self.turns.user_speech_stopped())
        if changes.keys() & _SLOT_FIELDS:
            out.append(SetEngineOptions(self.options.slot_options()))
        if policy_was == "vad" and self.options.barge_in != "vad":
            out += self._turn_changes(self.turns.release())
        refused = self._apply_captions() if "captions" in changes else None
        out.append(SessionUpdated(options=self.options.as_dict(self.base_vad)))
        self._log({"event": "session.updated", "options": self.options.as_dict(self.base_vad)})
        if refused:
            out.append(refused)
        return out

    def check_prompt_change(self) -> None:
        """Raise PromptChangeLimited while a new prompt would come sooner than the limits allow (a
        protocol that keeps its own copy of the prompt asks before changing it)."""
        wait_s = self._prompt_free_at - self.clock()
        if self.limits.prompt_changes_per_s and wait_s > 0:
            raise PromptChangeLimited(wait_s, self.limits.prompt_changes_per_s)

    def set_played_ms(self, played_ms: float) -> None:
        self.played_ms = min(float(played_ms), self.sent_ms)

    def hold(self, silent: bool) -> list[ConversationEvent]:
        """The host keeps the assistant quiet (True) or lets it talk (False); a barge-in hold stays
        in force on its own until the user's speech ends."""
        self._host_hold = silent
        return self._sync_engine()

    def hold_until_user_stops(self) -> list[ConversationEvent]:
        """Keep the assistant quiet until the user's current speech ends, as the `vad` barge-in
        policy does after every barge-in (for a host that decides which ones interrupt)."""
        return self._turn_changes(self.turns.hold_until_user_stops())

    def add_caption(self, request: CaptionUtterance, text: str | None) -> list[ConversationEvent]:
        """The captioner's text for `request`: the words new to the listener (UserTranscriptDelta),
        and once the utterance is over its UserTranscript; [] for a job overtaken or cancelled.
        None (a quick reading that did not work): the full reading it leaves due, if any."""
        if self.ended:
            return []
        if text is None:
            job = self._caption_jobs.unread(request.job)
            if job is None or self._utterance is None:
                return []
            return [CaptionUtterance(request.pcm, request.start_ms, job.voiced_end / _SAMPLES_PER_MS, job)]
        start, end = self._caption_jobs.span(request.job)
        pieces = self._caption_jobs.transcribed(request.job, text)
        return self._caption_events(pieces, start, end) if self._utterance is not None else []

    def end(self, reason: str) -> list[ConversationEvent]:
        """End the session and finalise the recording: [SessionEnded], then [] once ended."""
        if self.ended:
            return []
        self.ended = reason
        self._log({"event": "session.ended", "reason": reason, **self.stats()})
        if self.recorder:
            self.recorder.close()
        return [SessionEnded(reason=reason)]

    @property
    def drops(self) -> int:
        """Input frames' worth of audio dropped (rounded up)."""
        return -(-self.dropped_samples // FRAME_SAMPLES)

    @property
    def sent_ms(self) -> float:
        return self.frames_out * FRAME_MS

    def stats(self) -> dict[str, Any]:
        last = self.latencies[-1] if self.latencies else None
        return {
            "response_gap_ms": None if last is None else round(last.response_gap_ms, 1),
            "server_overhead_ms": None if last is None else round(last.server_overhead_ms, 1),
            "underruns": self.underruns,
            "drops": self.drops,
            "step_ms": round(self.last_step_ms, 2),
            "played_ms": round(self._played_estimate(), 1),
            "sent_ms": self.sent_ms,
            "end_of_turn_ms": None if last is None else round(last.end_of_turn_ms, 1),
            "frame_wait_ms": self.frame_wait_ms(),
        }

    def frame_wait_ms(self) -> dict[str, float] | None:
        """How long each frame's newest input waited for its tick (ms): p50, p95 and max over the
        recent frames; None before any frame of input was taken."""
        if not self._frame_waits:
            return None
        waits = np.array(self._frame_waits) * 1000
        p50, p95 = np.percentile(waits, [50, 95])
        return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "max": round(float(waits.max()), 1)}

    # -- scheduler-facing API ------------------------------------------------------------------
    def frame_ready(self) -> bool:
        """Whether a whole frame of input is queued (or the user is silent, so none is needed)."""
        return self._input.level >= FRAME_SAMPLES or self._user_silent()

    def frames_queued(self) -> int:
        """Whole frames of input waiting for the frame loop. Against a wall clock's ticks, what the
        next tick can take as FramePhase places it: only input reliably in before the tick, and
        before the first frame any such input (the first frame goes in behind silence), so the
        frame loop starts a session on a placed frame, never one whose last chunk races the tick."""
        level = self._input.level
        if self._phase is not None and self._tick_s is not None:
            end = self._phase.frame_end(self._tick_s)
            if end is not None:
                level = min(level, end - (self.samples_in - level))
                if self.samples_heard == 0 and level > 0:
                    return max(1, level // FRAME_SAMPLES)
        return max(0, level) // FRAME_SAMPLES

    def _user_silent(self) -> bool:
        return not self._vad.speaking and self._vad.probability < 0.5

    def tick_move(self, tick_s: float, *, sooner: bool) -> float | None:
        """How far a frame clock serving this conversation alone should move its tick due at
        `tick_s` to have the client's next chunk in just before it (FramePhase.tick_move; sooner:
        bring it forward, else only put it back a little). Chunks as long as a frame all end at
        one phase, and only the clock can take the wait after them away. None before any audio,
        or where no wall clock drives the frames."""
        return None if self._phase is None else self._phase.tick_move(tick_s, sooner=sooner)

    def tick_due(self, tick_s: float) -> None:
        """The tick that takes the next frame is due at `tick_s` (this conversation's clock): frames
        then end where their last chunk is in just before their tick (FramePhase)."""
        self._tick_s = tick_s

    def take_frame(self) -> np.ndarray | None:
        """The next 80 ms input frame, float32 (1920,) at 24 kHz, or None on underrun."""
        # The user counts as silent only when the VAD is outside a turn and its last frame was unvoiced,
        # so the silence-only shortcuts of InputBuffer never touch the start of an utterance.
        silent = self._user_silent()
        front = self.samples_in - self._input.level  # input position of the oldest queued sample
        may_trim = self._last_stop_sample is None or front >= self._last_stop_sample
        shift = None
        if self._phase is not None and self._tick_s is not None:
            shift = self._phase.shift(front + FRAME_SAMPLES, self._tick_s)
            if self.samples_heard == 0:
                # The model's first frame starts with the client's first audio, never cut, behind
                # silence where that places it (which cuts nothing, whatever the user is doing).
                shift = min(shift, 0)
                silent = silent or shift < 0
        frame, status = self._input.take(silent, may_trim, shift)
        self.samples_heard += self._input.last_taken
        if self._input.last_taken:  # the frame holds input: its newest sample waited for this tick
            heard = self.samples_in - self._input.level  # the input position this frame ends at
            wait_s = self.clock() - self._arrival_of(heard)
            self._frame_waits.append(wait_s)
            if self.metrics:
                self.metrics.observe("frame_wait_ms", wait_s * 1000)
        if status == FRAME_UNDERRUN and self.samples_in > 0:  # before any audio the client cannot be late
            self.underruns += 1
            if self.metrics:
                self.metrics.inc("underruns")
        self._pending_user_frame = frame
        return frame

    def deliver(self, pcm: np.ndarray, text: str, speaking: bool, step_ms: float) -> list[ConversationEvent]:
        """The engine's output for this session's slot: float32 (1920,) at 24 kHz."""
        if self.ended:
            return []
        now = self.clock()
        self.last_step_ms = step_ms
        at_ms = float(self.sent_ms)
        heard_ms = self.samples_heard / _SAMPLES_PER_MS
        if self.turns.held:
            # Held until the user stops: mute at once, even the frame the engine computed before it was told.
            if text:
                self._log({"event": "assistant.text", "text": text, "at_ms": at_ms, "muted": True})
            pcm, text, speaking = np.zeros_like(pcm), "", False
        out: list[ConversationEvent] = []
        for change in self.turns.assistant_frame(bool(speaking), self.samples_in):
            if isinstance(change, StretchStarted):
                self._turn_text = []
                out.append(AssistantSpeechStarted(at_ms=at_ms, input_ms=heard_ms))
                self._log({"event": "assistant.speech_started", "at_ms": at_ms, "input_ms": heard_ms})
            elif isinstance(change, StretchEnded):
                out.append(AssistantSpeechStopped(at_ms=at_ms, input_ms=heard_ms))
                self._log({"event": "assistant.speech_stopped", "at_ms": at_ms, "input_ms": heard_ms})
            else:
                out += self._turn_changes([change])
        sent = pcm if self._resample_out is None else self._resample_out.process(pcm)
        out.append(AudioOut(pcm16=float32_to_pcm16(sent), at_ms=at_ms, speaking=bool(speaking), pcm=pcm))
        if speaking and self._turn_end is not None:
            self._measure_latency(now)
        if text:
            self._turn_text.append((at_ms, text))
            out.append(AssistantText(text=text, at_ms=at_ms))
            self._log({"event": "assistant.text", "text": text, "at_ms": at_ms})
        if self.recorder:
            user = self._pending_user_frame
            self.recorder.write(np.zeros(FRAME_SAMPLES, np.float32) if user is None else user, pcm)
        self._pending_user_frame = None
        self.frames_out += 1
        if self.frames_out % self.limits.stats_every_frames == 0:
            out.append(Stats(**self.stats()))
        return out

    def check_limits(self, now: float) -> list[ConversationEvent]:
        """End the session when it has been idle or live too long (called once per tick)."""
        if self.ended:
            return []
        if self.limits.idle_timeout_s is not None and now - self.last_input_at > self.limits.idle_timeout_s:
            return self.end(f"idle_timeout: no audio for {self.limits.idle_timeout_s:g} s")
        if self.limits.max_session_s is not None and now - self.started_at > self.limits.max_session_s:
            return self.end(f"max_duration: sessions are limited to {self.limits.max_session_s:g} s")
        return []

    # -- internals -----------------------------------------------------------------------------
    def _measure_latency(self, now: float) -> None:
        """The first reply frame after a user turn: how long the assistant took to answer."""
        voiced_at, detected_at = self._turn_end
        self._turn_end = None
        lat = TurnLatency(
            (now - voiced_at) * 1000.0, (now - detected_at) * 1000.0, (detected_at - voiced_at) * 1000.0
        )
        self.latencies.append(lat)
        self._log(
            {
                "event": "latency",
                "response_gap_ms": round(lat.response_gap_ms, 1),
                "server_overhead_ms": round(lat.server_overhead_ms, 1),
                "end_of_turn_ms": round(lat.end_of_turn_ms, 1),
            }
        )
        if self.metrics:
            self.metrics.observe("response_gap_ms", lat.response_gap_ms)
            self.metrics.observe("server_overhead_ms", lat.server_overhead_ms)

    def _played_estimate(self) -> float:
        # Without reports from the client, assume it plays what it gets as it gets it.
        return self.sent_ms if self.played_ms is None else self.played_ms

    def _arrival_of(self, sample: int) -> float:
        """Wall time when input sample `sample` reached the server."""
        i = bisect.bisect_left(self._arrivals, sample, key=lambda arrival: arrival[0])
        if i >= len(self._arrivals):
            return self._arrivals[-1][1] if self._arrivals else self.clock()
        return self._arrivals[i][1]

    def _on_vad(self, ev, now: float) -> list[ConversationEvent]:
        at_ms = ev.sample / _SAMPLES_PER_MS
        if ev.type == "speech_started":
            self._turn_end = None
            self._log({"event": "input.speech_started", "at_ms": at_ms})
            if self._utterance is not None:
                self._utterance.active = True
                self._caption_jobs.speech_started(ev.audio_start_sample, self.samples_in)
            return [InputSpeechStarted(at_ms=at_ms)] + self._turn_changes(
                self.turns.user_speech_started(ev.sample, self.samples_in)
            )
        # speech_stopped: ev.sample is the end of speech (last voiced sample + 1).
        self._turn_end = (self._arrival_of(ev.sample - 1), now)
        self._last_stop_sample = self.samples_in
        self._log({"event": "input.speech_stopped", "at_ms": at_ms})
        out: list[ConversationEvent] = [InputSpeechStopped(at_ms=at_ms)]
        if self._utterance is not None:
            self._utterance.active = False
            job, ready = self._caption_jobs.speech_stopped(ev.sample, self.samples_in)
            out += self._caption(job) + self._caption_events(ready, ev.audio_start_sample, ev.sample)
        return out + self._turn_changes(self.turns.user_speech_stopped())

    def _caption(self, job: CaptionJob | None) -> list[ConversationEvent]:
        """The request to the captioner for one caption job (its text comes back in add_caption)."""
        if job is None:
            return []
        pcm = self._utterance.cut(job.start, job.end)
        return [CaptionUtterance(pcm, job.start / _SAMPLES_PER_MS, job.voiced_end / _SAMPLES_PER_MS, job)]

    def _caption_events(self, pieces: list[tuple[str, str]], start: int, end: int) -> list[ConversationEvent]:
        """Transcript pieces of the utterance at input samples [start, end) as events."""
        start_ms, end_ms = start / _SAMPLES_PER_MS, end / _SAMPLES_PER_MS
        out: list[ConversationEvent] = []
        for kind, text in pieces:
            if kind == "delta":
                out.append(UserTranscriptDelta(text=text, start_ms=start_ms, end_ms=end_ms))
            else:
                out.append(UserTranscript(text=text, start_ms=start_ms, end_ms=end_ms))
                self._log({"event": "user.transcript", "text": text, "start_ms": start_ms, "end_ms": end_ms})
        return out

    def _turn_changes(self, changes: list[TurnChange]) -> list[ConversationEvent]:
        """What a barge-in or a hold means for the listener and the engine."""
        out: list[ConversationEvent] = []
        for change in changes:
            if isinstance(change, BargeInDetected):
                out += self._barge_in()
            elif isinstance(change, AssistantHeld):
                out += self._sync_engine()
        return out

    def _barge_in(self) -> list[ConversationEvent]:
        self.barge_ins += 1
        played = self._played_estimate()
        cut = "".join(t for at, t in self._turn_text if at + FRAME_MS > played).strip()
        at_ms = self.samples_in / _SAMPLES_PER_MS
        self._log(
            {
                "event": "barge_in",
                "at_ms": at_ms,
                "played_ms": played,
                "cut_text": cut,
                "heard_text": "".join(t for at, t in self._turn_text if at + FRAME_MS <= played),
            }
        )
        if self.metrics:
            self.metrics.inc("barge_ins")
        return [PlaybackClear(reason="barge_in"), BargeIn(at_ms=at_ms, cut_text=cut)]

    def _sync_engine(self) -> list[ConversationEvent]:
        """SetEngineSilent when the engine should change: silent while held by a barge-in or the host."""
        silent = self.turns.held or self._host_hold
        if silent == self._engine_silent:
            return []
        self._engine_silent = silent
        return [SetEngineSilent(silent)]

    def _log(self, record: dict) -> None:
        if self.recorder:
            self.recorder.log(record)
