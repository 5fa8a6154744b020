"""The conversation session: the core every wire protocol adapter drives.

A `Session` is one conversation in one engine slot. It knows nothing of sockets or JSON; an
adapter (the native `/ws` protocol in server/app.py, the OpenAI Realtime adapter in
server/realtime.py) feeds it and turns what it emits into frames.

Core API (stable; adapters rely on it)::

    slot = ctx.reserve()                    # server/app.py ServerContext; None when the server is full
    session = ctx.open_session(slot, sample_rate_hz, emit, options)  # emits SessionReady
    session.push_audio(pcm16: bytes)        # client audio, PCM16 LE mono at sample_rate_hz, any length
    session.update(**options)               # SessionOptions fields; emits SessionUpdated
    session.set_played_ms(ms)               # how much assistant audio the listener has played
    session.force_silence(True/False)       # keep the assistant quiet (manual turn control)
    session.clear_playback(reason)          # the adapter's own "cancel response": emits PlaybackClear
    session.end(reason)                     # emits SessionEnded and frees the slot (idempotent)
    session.stats() -> dict                 # latency / underrun / drop figures
    captions (option): each finished user utterance is transcribed off the hot path and comes
        back as UserTranscript (when the server runs with --captions).

    emit(event) is called on the event loop thread with one of the frozen dataclasses below
    (each has a `type`, the native wire name). `AudioOut` carries 80 ms of the assistant's
    voice as PCM16 LE at sample_rate_hz, one every frame, silence included.

The frame clock (assistant/scheduler.py) calls `take_frame` before each batched engine step and
`deliver` after it. Inside, the input is resampled to 24 kHz, run through a streaming VAD as it
arrives, and queued in an `InputBuffer` that hands out 80 ms frames with bounded latency. VAD
events drive `TurnTaking`, the pure turn-taking state machine (listening / assistant speaking /
user barging in). Barge-in clears the client's playback at once, and with the `vad` policy keeps
the engine (and the audio sent) silent until the user's turn ends.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from assistant.engine import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE_HZ, SlotOptions
from audio.pcm import pcm16_to_float32
from audio.resample import SUPPORTED_RATES, StreamResampler
from audio.vad import StreamingVad, VadConfig

SUPPORTED_SAMPLE_RATES = tuple(SUPPORTED_RATES)
BARGE_IN_POLICIES = ("model", "vad")
_SAMPLES_PER_MS = SAMPLE_RATE_HZ // 1000
# Audio after the VAD's end of speech given to captions: the end can sit 30 ms after the last audible
# sample (silero, q2.wav), clipping a soft final phoneme; the end-of-turn silence has it buffered.
_CAPTION_TAIL_SAMPLES = 200 * _SAMPLES_PER_MS


def _to_pcm16(x: np.ndarray) -> bytes:
    """float32 (n,) in [-1, 1] -> PCM16 LE bytes; audio.pcm.float32_to_pcm16's rounding, in float32
    (this runs for every session every frame)."""
    return np.clip(np.rint(x * np.float32(32768.0)), -32768, 32767).astype("<i2").tobytes()


# -- options ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionOptions:
    """What a client may set per conversation (session.start / session.update)."""

    barge_in: str = "model"
    vad: dict[str, float] = field(default_factory=dict)  # overrides of VadConfig fields
    min_interrupt_ms: int = 120  # user speech overlapping the assistant's needed to count as a barge-in
    seed: int | None = None
    temperature: float | None = None
    text_temperature: float | None = None
    captions: bool = False

    def __post_init__(self):
        if self.barge_in not in BARGE_IN_POLICIES:
            raise ValueError(f"barge_in must be one of {BARGE_IN_POLICIES}, got {self.barge_in!r}")
        if self.min_interrupt_ms < 0:
            raise ValueError(f"min_interrupt_ms must be >= 0, got {self.min_interrupt_ms}")

    def replace(self, **changes: Any) -> SessionOptions:
        if "vad" in changes:
            changes["vad"] = {**self.vad, **changes["vad"]}
        return dataclasses.replace(self, **changes)

    def slot_options(self) -> SlotOptions:
        return SlotOptions(
            seed=self.seed, temperature=self.temperature, text_temperature=self.text_temperature
        )

    def vad_config(self, base: VadConfig) -> VadConfig:
        return dataclasses.replace(base, **self.vad) if self.vad else base

    def as_dict(self, base_vad: VadConfig) -> dict[str, Any]:
        vad = self.vad_config(base_vad)
        return {
            "barge_in": self.barge_in,
            "vad": {
                "threshold": vad.threshold,
                "min_speech_ms": vad.min_speech_ms,
                "min_silence_ms": vad.min_silence_ms,
                "prefix_padding_ms": vad.prefix_padding_ms,
            },
            "min_interrupt_ms": self.min_interrupt_ms,
            "seed": self.seed,
            "temperature": self.temperature,
            "text_temperature": self.text_temperature,
            "captions": self.captions,
        }


@dataclass(frozen=True)
class SessionLimits:
    """Server-wide limits applied to every session."""

    max_backlog_frames: int = 3  # queued input beyond this many frames is dropped (oldest first)
    idle_timeout_s: float | None = 60.0  # no input audio for this long ends the session
    max_session_s: float | None = 3600.0
    stats_every_frames: int = 12  # ~1 s
    assistant_hangover_frames: int = 3  # silent frames before the assistant's stretch counts as over


# -- events (emitted to the adapter) ------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = ""


@dataclass(frozen=True)
class AudioOut(Event):
    type: ClassVar[str] = "audio"
    pcm16: bytes  # 80 ms of the assistant's voice, PCM16 LE mono at the session's sample rate
    at_ms: float  # output timeline position of the first sample
    speaking: bool = False  # the engine's voice-activity flag for this frame (Realtime deltas)


@dataclass(frozen=True)
class SessionReady(Event):
    type: ClassVar[str] = "session.ready"
    session_id: str
    sample_rate: int
    frame_ms: int
    options: dict


@dataclass(frozen=True)
class SessionUpdated(Event):
    type: ClassVar[str] = "session.updated"
    options: dict


@dataclass(frozen=True)
class InputSpeechStarted(Event):
    type: ClassVar[str] = "input.speech_started"
    at_ms: float


@dataclass(frozen=True)
class InputSpeechStopped(Event):
    type: ClassVar[str] = "input.speech_stopped"
    at_ms: float


@dataclass(frozen=True)
class AssistantSpeechStarted(Event):
    type: ClassVar[str] = "assistant.speech_started"
    at_ms: float


@dataclass(frozen=True)
class AssistantSpeechStopped(Event):
    type: ClassVar[str] = "assistant.speech_stopped"
    at_ms: float


@dataclass(frozen=True)
class AssistantText(Event):
    type: ClassVar[str] = "assistant.text"
    text: str
    at_ms: float


@dataclass(frozen=True)
class PlaybackClear(Event):
    type: ClassVar[str] = "playback.clear"
    reason: str


@dataclass(frozen=True)
class BargeIn(Event):
    type: ClassVar[str] = "barge_in"
    at_ms: float
    cut_text: str


@dataclass(frozen=True)
class Stats(Event):
    type: ClassVar[str] = "stats"
    response_gap_ms: float | None
    server_overhead_ms: float | None
    underruns: int
    drops: int
    step_ms: float
    played_ms: float
    sent_ms: float
    end_of_turn_ms: float | None = None


@dataclass(frozen=True)
class UserTranscript(Event):
    type: ClassVar[str] = "user.transcript"
    text: str
    start_ms: float
    end_ms: float


@dataclass(frozen=True)
class Error(Event):
    type: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(frozen=True)
class SessionEnded(Event):
    type: ClassVar[str] = "session.ended"
    reason: str


# -- turn taking (pure) -------------------------------------------------------------------------

LISTENING = "listening"
ASSISTANT_SPEAKING = "assistant_speaking"
USER_BARGING_IN = "user_barging_in"

# Actions TurnTaking asks its owner to carry out.
ASSISTANT_STARTED = "assistant_started"
ASSISTANT_STOPPED = "assistant_stopped"
BARGE_IN = "barge_in"  # clear the client's playback, report the cut
SILENCE_ON = "silence_on"  # keep the engine silent (barge-in policy vad)
SILENCE_OFF = "silence_off"


class TurnTaking:
    """Who holds the floor, from VAD events on the input and the engine's speaking flag.

    Positions are input samples (24 kHz) since the session started. Each method returns the
    list of actions to carry out, in order. Pure: no clocks, no I/O.
    """

    def __init__(self, barge_in: str = "model", min_interrupt_samples: int = 0, hangover_frames: int = 3):
        self.barge_in = barge_in
        self.min_interrupt_samples = min_interrupt_samples
        self.hangover_frames = hangover_frames
        self.state = LISTENING
        self.user_speaking = False
        self.user_voiced = False  # the latest input was speech
        self.assistant_speaking = False  # within a stretch of speech (hangover included)
        self._user_onset: int | None = None
        self._assistant_onset: int | None = None  # input position when the assistant's stretch began
        self._quiet_frames = 0
        self.silenced = False

    def user_speech_started(self, onset_sample: int, now_sample: int) -> list[str]:
        self.user_speaking = True
        self._user_onset = onset_sample
        return self.user_input(now_sample)

    def user_input(self, now_sample: int, voiced: bool = True) -> list[str]:
        """More input arrived (call after every push); may detect a barge-in.

        voiced: whether the latest input is speech. The VAD keeps a turn open through the silence
        that ends it; an assistant that starts in that silence is answering, not being interrupted.
        """
        self.user_voiced = voiced
        if self.state != ASSISTANT_SPEAKING or not self.user_speaking or not voiced:
            return []
        overlap_start = max(self._user_onset or 0, self._assistant_onset or 0)
        if now_sample - overlap_start < self.min_interrupt_samples:
            return []
        self.state = USER_BARGING_IN
        actions = [BARGE_IN]
        if self.barge_in == "vad":
            self.silenced = True
            actions.append(SILENCE_ON)
        return actions

    def user_speech_stopped(self) -> list[str]:
        self.user_speaking = False
        self._user_onset = None
        actions: list[str] = []
        if self.state == USER_BARGING_IN:
            self.state = ASSISTANT_SPEAKING if self.assistant_speaking else LISTENING
            if self.state == ASSISTANT_SPEAKING:
                # A fresh overlap is needed for the next barge-in.
                self._assistant_onset = None
        if self.silenced:
            self.silenced = False
            actions.append(SILENCE_OFF)
        return actions

    def assistant_frame(self, speaking: bool, now_sample: int) -> list[str]:
        """One output frame from the engine; `speaking` is its voice-activity flag."""
        actions: list[str] = []
        if speaking:
            self._quiet_frames = 0
            if not self.assistant_speaking:
                self.assistant_speaking = True
                self._assistant_onset = now_sample
                actions.append(ASSISTANT_STARTED)
                if self.state == LISTENING:
                    self.state = ASSISTANT_SPEAKING
                    actions += self.user_input(now_sample, self.user_voiced)
        elif self.assistant_speaking:
            self._quiet_frames += 1
            if self._quiet_frames > self.hangover_frames:
                self.assistant_speaking = False
                self._assistant_onset = None
                actions.append(ASSISTANT_STOPPED)
                if self.state == ASSISTANT_SPEAKING:
                    self.state = LISTENING
        return actions


# -- input buffering (pure) ------------------------------------------------------------------------

FRAME_OK = "ok"
FRAME_PADDED = "padded"  # a partial frame completed with silence while the user was silent
FRAME_UNDERRUN = "underrun"  # input missing (in part or whole) while the user spoke, or none at all


class InputBuffer:
    """The session's input FIFO between arrival (any chunk size) and the frame clock (80 ms frames).

    Latency stays bounded:
    - input beyond `max_backlog_frames` is dropped oldest first (counted as drops);
    - a tick that finds less than a frame takes what there is behind leading zeros, so late input
      never queues up behind inserted silence and frames stay aligned to the clock: the end of a
      turn reaches the engine at the next tick;
    - while the user is silent, queued audio beyond a frame (and the cushion) is dropped when it is
      quiet (below -50 dBFS), or in any case once the engine has heard the end of the last turn.
    """

    def __init__(
        self,
        frame_samples: int = FRAME_SAMPLES,
        max_backlog_frames: int = 3,
        quiet_level: float = 10 ** (-50 / 20),
        max_chunk_samples: int = SAMPLE_RATE_HZ,
        lead_samples: int = 0,
    ):
        # A cushion kept queued while the user is silent, so input that arrives in bursts (a
        # resampler's blocks) does not run dry mid-utterance; 0 for smooth 24 kHz input.
        self.lead_samples = lead_samples
        self.quiet_level = quiet_level  # peak below this (-50 dBFS) counts as quiet
        self.max_chunk_samples = max_chunk_samples  # chunks up to this (1 s) are kept whole
        if max_backlog_frames < 1:
            raise ValueError(f"max_backlog_frames must be >= 1, got {max_backlog_frames}")
        self.frame_samples = frame_samples
        self.max_samples = max_backlog_frames * frame_samples
        self._buf = np.zeros(self.max_samples + 2 * frame_samples, dtype=np.float32)
        self._len = 0

    @property
    def level(self) -> int:
        """Samples waiting."""
        return self._len

    def push(self, x: np.ndarray) -> int:
        """Append float32 samples; return how many of the oldest were dropped to respect the bound.

        The bound is `max_backlog_frames`, or one frame more than this chunk for clients that send
        big chunks (up to `max_chunk_samples`), so a chunk is never cut only for being big.
        """
        n = x.shape[0]
        bound = max(self.max_samples, min(n, self.max_chunk_samples) + self.frame_samples)
        if bound > self._buf.shape[0]:
            grown = np.zeros(bound, dtype=np.float32)
            grown[: self._len] = self._buf[: self._len]
            self._buf = grown
        if n >= bound:
            dropped = self._len + n - bound
            self._buf[:bound] = x[n - bound :]
            self._len = bound
            return dropped
        dropped = max(0, self._len + n - bound)
        if dropped:
            self._discard(dropped)
        self._buf[self._len : self._len + n] = x
        self._len += n
        return dropped

    def _discard(self, n: int) -> None:
        self._buf[: self._len - n] = self._buf[n : self._len]
        self._len -= n

    def take(self, user_silent: bool, may_trim: bool = False) -> tuple[np.ndarray | None, str]:
        """The frame for this tick, float32 (frame_samples,) or None, and FRAME_OK/PADDED/UNDERRUN.

        A short buffer is taken whole behind leading zeros, so late input never adds latency: the
        frame always ends at the newest sample. That is an underrun when the user was speaking (or
        nothing came at all), and harmless padding of silence otherwise.
        may_trim: the engine has already heard the end of the last turn, so queued silence beyond
            one frame may go (dropping it earlier would delay the engine's own end-of-turn).
        """
        f = self.frame_samples
        if self._len == 0:
            return None, FRAME_UNDERRUN
        if self._len < f or (user_silent and self._len < f + self.lead_samples):
            # Take what there is behind leading zeros, keeping the cushion.
            take = max(0, self._len - self.lead_samples)
            frame = np.zeros(f, dtype=np.float32)
            frame[f - take :] = self._buf[:take]
            self._discard(take)
            return frame, (FRAME_PADDED if user_silent else FRAME_UNDERRUN)
        if user_silent and may_trim and self._len > f + self.lead_samples:
            self._discard(self._len - f - self.lead_samples)
        elif user_silent and self._len - f - self.lead_samples >= f // 4:
            # Backlog while the user is silent (a stall, or late input piled up behind the clock):
            # drop its oldest part if it is quiet, down to the cushion. Never inside a turn, not even
            # in its closing silence: the engine must not hear the end of a turn before the server
            # has (and dropping there would not bring the engine's end of turn any sooner).
            excess = self._len - f - self.lead_samples
            if np.abs(self._buf[:excess]).max() < self.quiet_level:
                self._discard(excess)
        frame = self._buf[:f].copy()
        self._discard(f)
        return frame, FRAME_OK

    def reset(self) -> None:
        self._len = 0


@functools.cache
def resampler_burst_samples(rate_hz: int, chunk_ms: int = 20) -> int:
    """How unevenly the streaming resampler rate_hz -> 24 kHz hands out samples (they come in
    blocks): the spread of its running deficit against a steady stream, in 24 kHz samples."""
    resampler = StreamResampler(rate_hz, SAMPLE_RATE_HZ)
    chunk = np.zeros(rate_hz * chunk_ms // 1000, dtype=np.float32)
    got = np.cumsum([resampler.process(chunk).shape[0] for _ in range(100)])
    deficit = SAMPLE_RATE_HZ * chunk_ms // 1000 * np.arange(1, 101) - got
    steady = deficit[25:]
    return int(steady.max() - steady.min())


class UtteranceAudio:
    """The user's recent input (24 kHz) so a finished utterance can be cut out for its caption.

    Outside an utterance only the last `keep_samples` are kept (the VAD reports onsets late and
    with prefix padding); inside one, up to `max_samples`.
    """

    def __init__(self, keep_samples: int = SAMPLE_RATE_HZ, max_samples: int = 30 * SAMPLE_RATE_HZ):
        self.keep_samples = keep_samples
        self.max_samples = max_samples
        self._chunks: list[np.ndarray] = []
        self._len = 0
        self.base = 0  # input position of the first kept sample
        self.active = False

    def push(self, x: np.ndarray) -> None:
        self._chunks.append(x)
        self._len += x.shape[0]
        limit = self.max_samples if self.active else 2 * self.keep_samples
        if self._len > limit:
            pcm = np.concatenate(self._chunks)[-(self.max_samples if self.active else self.keep_samples) :]
            self.base += self._len - pcm.shape[0]
            self._chunks, self._len = [pcm], pcm.shape[0]

    def cut(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) of the input timeline that are still kept."""
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        return pcm[max(0, start - self.base) : max(0, end - self.base)]


# -- the session ----------------------------------------------------------------------------------


class SlotControl:
    """What a session may ask of its engine slot; the scheduler applies it between steps."""

    def force_silence(self, silent: bool) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def update(self, options: SlotOptions) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def release(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class TurnLatency:
    """One user turn: when it ended and how fast the assistant answered (ms).

    response_gap_ms = end_of_turn_ms (last voiced sample arrived -> the VAD's end of turn, the
    silence wait) + server_overhead_ms (end of turn -> first reply frame sent).
    """

    response_gap_ms: float
    server_overhead_ms: float
    end_of_turn_ms: float = 0.0


class Session:
    """One conversation. Call everything from the event loop thread."""

    def __init__(
        self,
        session_id: str,
        sample_rate_hz: int,
        emit: Callable[[Event], None],
        *,
        options: SessionOptions | None = None,
        limits: SessionLimits | None = None,
        vad_config: VadConfig | None = None,
        slot: SlotControl | None = None,
        recorder=None,
        metrics=None,
        captions=None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if sample_rate_hz not in SUPPORTED_SAMPLE_RATES:
            raise ValueError(
                f"sample_rate {sample_rate_hz} is not supported; use one of {SUPPORTED_SAMPLE_RATES}"
            )
        self.session_id = session_id
        self.sample_rate_hz = sample_rate_hz
        self.emit = emit
        self.options = options or SessionOptions()
        self.limits = limits or SessionLimits()
        self.base_vad = vad_config or VadConfig()
        self.slot = slot
        self.recorder = recorder
        # captions(pcm_24k, start_ms, end_ms, done) queues a caption job; done(text) is called on the
        # event loop thread. None: this server has no captioner.
        self.captions = captions
        self._utterance: UtteranceAudio | None = None
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
            lead_samples=0 if same else resampler_burst_samples(sample_rate_hz),
        )
        self._vad = StreamingVad(self.options.vad_config(self.base_vad), sample_rate_hz=SAMPLE_RATE_HZ)
        self.turns = TurnTaking(
            self.options.barge_in,
            self.options.min_interrupt_ms * _SAMPLES_PER_MS,
            self.limits.assistant_hangover_frames,
        )

        now = clock()
        self.started_at = now
        self.last_input_at = now
        self.samples_in = 0  # input timeline, 24 kHz samples received
        self.frames_out = 0  # output timeline, 80 ms frames sent
        self.underruns = 0
        self.dropped_samples = 0  # input dropped to bound latency while the user spoke
        self.barge_ins = 0
        self.last_step_ms = 0.0
        self.played_ms: float | None = None  # from playback.position; None until the client reports
        # (input sample position at the end of a push, arrival time), to time the last voiced sample.
        self._arrivals: collections.deque[tuple[int, float]] = collections.deque(maxlen=256)
        self._last_stop_sample: int | None = None  # where the VAD's last end of turn fired (input position)
        self._turn_end: tuple[float, float] | None = None  # (last voiced sample arrival, end detected)
        self.latencies: list[TurnLatency] = []
        self._turn_text: list[tuple[float, str]] = []  # (output ms, piece) of the assistant's stretch
        self._pending_user_frame: np.ndarray | None = None

    # -- adapter-facing API --------------------------------------------------------------------
    def start(self) -> None:
        """Announce the session (emits SessionReady)."""
        refused = self._apply_captions()
        self.emit(
            SessionReady(
                session_id=self.session_id,
                sample_rate=self.sample_rate_hz,
                frame_ms=FRAME_MS,
                options=self.options.as_dict(self.base_vad),
            )
        )
        self._log(
            {
                "event": "session.ready",
                "sample_rate": self.sample_rate_hz,
                "options": self.options.as_dict(self.base_vad),
            }
        )
        if refused:
            self.emit(refused)

    def _apply_captions(self) -> Error | None:
        """Set up caption capture for the options; the error to send when captions are unavailable."""
        if not self.options.captions:
            self._utterance = None
            return None
        if self.captions is None:
            self.options = self.options.replace(captions=False)
            return Error(
                code="invalid_value",
                message="captions are off on this server (start it with --captions auto); "
                "the session goes on without them",
            )
        if self._utterance is None:
            self._utterance = UtteranceAudio()
        return None

    def push_audio(self, pcm16: bytes) -> None:
        """Client audio: PCM16 LE mono at sample_rate_hz, any (even) length."""
        if self.ended:
            return
        now = self.clock()
        self.last_input_at = now
        x = pcm16_to_float32(pcm16)
        if self._resample_in is not None:
            x = self._resample_in.process(x)
        if x.shape[0] == 0:
            return
        if self._utterance is not None:
            self._utterance.push(x)
        self.samples_in += x.shape[0]
        self._arrivals.append((self.samples_in, now))
        for ev in self._vad.push(x):
            self._on_vad(ev, now)
        self._act(self.turns.user_input(self.samples_in, self._vad.probability >= 0.5))
        dropped = self._input.push(x)
        if dropped:
            self.dropped_samples += dropped
            if self.metrics:
                self.metrics.inc("drops", dropped / FRAME_SAMPLES)

    def update(self, **changes: Any) -> None:
        """Change options (SessionOptions fields); emits SessionUpdated."""
        options = self.options.replace(**changes)
        vad_config = options.vad_config(self.base_vad)  # raises ValueError before anything changes
        self.options = options
        self.turns.barge_in = self.options.barge_in
        self.turns.min_interrupt_samples = self.options.min_interrupt_ms * _SAMPLES_PER_MS
        if "vad" in changes:
            # A new VAD starts from silence; the turn state follows its events from here on.
            self._vad = StreamingVad(vad_config, sample_rate_hz=SAMPLE_RATE_HZ)
            if self.turns.user_speaking:
                self._act(self.turns.user_speech_stopped())
        if self.slot and changes.keys() & {"seed", "temperature", "text_temperature"}:
            self.slot.update(self.options.slot_options())
        if self.turns.silenced and self.options.barge_in != "vad":
            self.turns.silenced = False
            self._act([SILENCE_OFF])
        refused = self._apply_captions() if "captions" in changes else None
        self.emit(SessionUpdated(options=self.options.as_dict(self.base_vad)))
        self._log({"event": "session.updated", "options": self.options.as_dict(self.base_vad)})
        if refused:
            self.emit(refused)

    def set_played_ms(self, played_ms: float) -> None:
        self.played_ms = min(float(played_ms), self.sent_ms)

    def force_silence(self, silent: bool) -> None:
        if self.slot:
            self.slot.force_silence(silent)

    def clear_playback(self, reason: str) -> None:
        self.emit(PlaybackClear(reason=reason))

    def end(self, reason: str) -> None:
        """End the session: emit SessionEnded, free the slot, finalise the recording. Idempotent."""
        if self.ended:
            return
        self.ended = reason
        self.emit(SessionEnded(reason=reason))
        self._log({"event": "session.ended", "reason": reason, **self.stats()})
        if self.slot:
            self.slot.release()
        if self.recorder:
            self.recorder.close()

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
        }

    # -- scheduler-facing API ------------------------------------------------------------------
    def frame_ready(self) -> bool:
        """Whether a whole frame of input is queued (or the user is silent, so none is needed)."""
        return self._input.level >= FRAME_SAMPLES or self._user_silent()

    def _user_silent(self) -> bool:
        return not self._vad.speaking and self._vad.probability < 0.5

    def take_frame(self) -> np.ndarray | None:
        """The next 80 ms input frame, float32 (1920,) at 24 kHz, or None on underrun."""
        # The user counts as silent only when the VAD is outside a turn and its last frame was unvoiced,
        # so the silence-only shortcuts of InputBuffer never touch the start of an utterance.
        silent = self._user_silent()
        front = self.samples_in - self._input.level  # input position of the oldest queued sample
        may_trim = self._last_stop_sample is None or front >= self._last_stop_sample
        frame, status = self._input.take(silent, may_trim)
        if status == FRAME_UNDERRUN and self.samples_in > 0:  # before any audio the client cannot be late
            self.underruns += 1
            if self.metrics:
                self.metrics.inc("underruns")
        self._pending_user_frame = frame
        return frame

    def deliver(self, pcm: np.ndarray, text: str, speaking: bool, step_ms: float) -> None:
        """The engine's output for this session's slot: float32 (1920,) at 24 kHz."""
        if self.ended:
            return
        now = self.clock()
        self.last_step_ms = step_ms
        at_ms = float(self.sent_ms)
        if self.turns.silenced:
            # Barge-in policy vad: mute at once, even the frame the engine computed before it was told.
            if text:
                self._log({"event": "assistant.text", "text": text, "at_ms": at_ms, "muted": True})
            pcm, text, speaking = np.zeros_like(pcm), "", False
        for action in self.turns.assistant_frame(bool(speaking), self.samples_in):
            if action == ASSISTANT_STARTED:
                self._turn_text = []
                self.emit(AssistantSpeechStarted(at_ms=at_ms))
                self._log({"event": "assistant.speech_started", "at_ms": at_ms})
            elif action == ASSISTANT_STOPPED:
                self.emit(AssistantSpeechStopped(at_ms=at_ms))
                self._log({"event": "assistant.speech_stopped", "at_ms": at_ms})
            else:
                self._act([action])
        out = pcm if self._resample_out is None else self._resample_out.process(pcm)
        self.emit(AudioOut(pcm16=_to_pcm16(out), at_ms=at_ms, speaking=bool(speaking)))
        if speaking and self._turn_end is not None:
            voiced_at, detected_at = self._turn_end
            self._turn_end = None
            lat = TurnLatency(
                (now - voiced_at) * 1000.0, (now - detected_at) * 1000.0, (detected_at - voiced_at) * 1000.0
            )
            self.latencies.append(lat)
            self._log(
                {
                    "event": "latency",
                    "response_gap_ms": lat.response_gap_ms,
                    "server_overhead_ms": lat.server_overhead_ms,
                    "end_of_turn_ms": lat.end_of_turn_ms,
                }
            )
            if self.metrics:
                self.metrics.observe("response_gap_ms", lat.response_gap_ms)
                self.metrics.observe("server_overhead_ms", lat.server_overhead_ms)
        if text:
            self._turn_text.append((at_ms, text))
            self.emit(AssistantText(text=text, at_ms=at_ms))
            self._log({"event": "assistant.text", "text": text, "at_ms": at_ms})
        if self.recorder:
            user = self._pending_user_frame
            self.recorder.write(np.zeros(FRAME_SAMPLES, np.float32) if user is None else user, pcm)
        self._pending_user_frame = None
        self.frames_out += 1
        if self.frames_out % self.limits.stats_every_frames == 0:
            self.emit(Stats(**self.stats()))

    def check_limits(self, now: float) -> None:
        """End the session when it has been idle or live too long (called once per tick)."""
        if self.ended:
            return
        if self.limits.idle_timeout_s is not None and now - self.last_input_at > self.limits.idle_timeout_s:
            self.end(f"idle_timeout: no audio for {self.limits.idle_timeout_s:g} s")
        elif self.limits.max_session_s is not None and now - self.started_at > self.limits.max_session_s:
            self.end(f"max_duration: sessions are limited to {self.limits.max_session_s:g} s")

    # -- internals -----------------------------------------------------------------------------
    def _played_estimate(self) -> float:
        # Without reports from the client, assume it plays what it gets as it gets it.
        return self.sent_ms if self.played_ms is None else self.played_ms

    def _arrival_of(self, sample: int) -> float:
        """Wall time when input sample `sample` reached the server."""
        ends = [end for end, _ in self._arrivals]
        i = bisect.bisect_left(ends, sample)
        if i >= len(self._arrivals):
            return self._arrivals[-1][1] if self._arrivals else self.clock()
        return self._arrivals[i][1]

    def _on_vad(self, ev, now: float) -> None:
        at_ms = ev.sample / _SAMPLES_PER_MS
        if ev.type == "speech_started":
            onset = ev.sample
            self._turn_end = None
            self.emit(InputSpeechStarted(at_ms=at_ms))
            self._log({"event": "input.speech_started", "at_ms": at_ms})
            if self._utterance is not None:
                self._utterance.active = True
            self._act(self.turns.user_speech_started(onset, self.samples_in))
        elif ev.type == "speech_stopped":
            # ev.sample is the end of speech (last voiced sample + 1).
            self._turn_end = (self._arrival_of(ev.sample - 1), now)
            self._last_stop_sample = self.samples_in
            self.emit(InputSpeechStopped(at_ms=at_ms))
            self._log({"event": "input.speech_stopped", "at_ms": at_ms})
            if self._utterance is not None and self.captions is not None:
                self._utterance.active = False
                start, end = ev.audio_start_sample, ev.sample
                self.captions(
                    self._utterance.cut(start, min(end + _CAPTION_TAIL_SAMPLES, self.samples_in)),
                    start / _SAMPLES_PER_MS,
                    at_ms,
                    lambda text, s=start / _SAMPLES_PER_MS, e=at_ms: self._on_caption(text, s, e),
                )
            self._act(self.turns.user_speech_stopped())

    def _on_caption(self, text: str, start_ms: float, end_ms: float) -> None:
        if self.ended or not text.strip():
            return
        self.emit(UserTranscript(text=text.strip(), start_ms=start_ms, end_ms=end_ms))
        self._log({"event": "user.transcript", "text": text.strip(), "start_ms": start_ms, "end_ms": end_ms})

    def _act(self, actions: list[str]) -> None:
        for action in actions:
            if action == BARGE_IN:
                self.barge_ins += 1
                played = self._played_estimate()
                cut = "".join(t for at, t in self._turn_text if at + FRAME_MS > played).strip()
                at_ms = self.samples_in / _SAMPLES_PER_MS
                self.emit(PlaybackClear(reason="barge_in"))
                self.emit(BargeIn(at_ms=at_ms, cut_text=cut))
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
            elif action == SILENCE_ON:
                self.force_silence(True)
            elif action == SILENCE_OFF:
                self.force_silence(False)

    def _log(self, record: dict) -> None:
        if self.recorder:
            self.recorder.log(record)


# -- outgoing queue -------------------------------------------------------------------------------


class SlowClient(Exception):
    """The client does not read fast enough; the adapter closes it (1008)."""


class Outbox:
    """A bounded outgoing queue with one writer task, so a stalled reader never blocks the clock.

    `put` never waits. It raises SlowClient once `max_items` are queued or the oldest item has
    waited `max_lag_s`; the adapter then disconnects that client. Transport-agnostic: `send`
    is any coroutine function taking one item.
    """

    def __init__(
        self,
        send: Callable[[Any], Awaitable[None]],
        *,
        max_items: int = 64,
        max_lag_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._send = send
        self.max_items = max_items
        self.max_lag_s = max_lag_s
        self.clock = clock
        self._items: collections.deque[tuple[float, Any]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def lag_s(self) -> float:
        return self.clock() - self._items[0][0] if self._items else 0.0

    def put(self, item: Any) -> None:
        if self._closed:
            return
        if len(self._items) >= self.max_items or self.lag_s() > self.max_lag_s:
            raise SlowClient(
                f"client too slow reading: {len(self._items)} messages ({self.lag_s():.1f} s) queued unsent"
            )
        self._items.append((self.clock(), item))
        self._wakeup.set()

    def close(self) -> None:
        """Stop accepting items; the writer finishes what is queued, then returns."""
        self._closed = True
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            while self._items:
                _, item = self._items[0]
                await self._send(item)
                self._items.popleft()
            if self._closed:
                return
            self._wakeup.clear()
            await self._wakeup.wait()
