"""What a conversation returns to whoever carries it: one frozen dataclass per event.

`Event`s are for the listener (the client, the page, a recording). These are internal types, not
a wire format: each protocol adapter translates them with its own explicit encoder
(server/protocols/native/wire.py for the native `/ws`, the Realtime and Live state machines for the
OpenAI APIs), so renaming a field here cannot silently change a protocol. The host's own work
comes as requests: `SetEngineSilent` and `SetEngineOptions` for the engine slot the conversation
runs in, `CaptionUtterance` for the captioner. `ConversationEvent` is everything a
`Conversation` method returns.

Two timelines: `at_ms` on input events is a position in the user's audio (24 kHz samples
received / 24); on output events it is a position in the assistant's audio (frames sent x 80).
`input_ms` on the assistant's events is how much of the user's audio the engine had heard when
it produced that frame, so input and output events can be placed on one timeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from assistant.conversation.captioning import CaptionJob
from assistant.engine import SlotOptions


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = ""  # the event's name, also its name in the native protocol


@dataclass(frozen=True)
class AudioOut(Event):
    """80 ms of the assistant's voice (silence included), one every frame."""

    type: ClassVar[str] = "audio"
    pcm16: bytes  # PCM16 LE mono at the conversation's sample rate
    at_ms: float  # output timeline position of the first sample
    speaking: bool = False  # the engine's voice-activity flag for this frame
    pcm: np.ndarray = field(default=None, repr=False, compare=False)  # float32 (1920,) at 24 kHz, as sent


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
    """A stretch of assistant speech began (pauses shorter than the hangover stay inside it)."""

    type: ClassVar[str] = "assistant.speech_started"
    at_ms: float
    input_ms: float = 0.0


@dataclass(frozen=True)
class AssistantSpeechStopped(Event):
    type: ClassVar[str] = "assistant.speech_stopped"
    at_ms: float
    input_ms: float = 0.0


@dataclass(frozen=True)
class AssistantText(Event):
    type: ClassVar[str] = "assistant.text"
    text: str
    at_ms: float


@dataclass(frozen=True)
class PlaybackClear(Event):
    """Drop every queued sample of assistant audio now (a barge-in)."""

    type: ClassVar[str] = "playback.clear"
    reason: str


@dataclass(frozen=True)
class BargeIn(Event):
    """The user talked over the assistant; `cut_text` is what the listener never heard."""

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
    # p50/p95/max: how long each frame's newest input waited for its tick
    frame_wait_ms: dict[str, float] | None = None


@dataclass(frozen=True)
class UserTranscript(Event):
    """The whole transcript of one finished user utterance."""

    type: ClassVar[str] = "user.transcript"
    text: str
    start_ms: float
    end_ms: float


@dataclass(frozen=True)
class UserTranscriptDelta(Event):
    """New words of the utterance in progress (or just finished): the deltas of one utterance
    concatenate (later ones lead with a space); its UserTranscript follows them."""

    type: ClassVar[str] = "user.transcript.delta"
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
    """The conversation is over: the host gives its engine slot back."""

    type: ClassVar[str] = "session.ended"
    reason: str


# -- requests for the host -----------------------------------------------------------------------


@dataclass(frozen=True)
class SetEngineSilent:
    """Hold the engine silent (True) or give it the floor back (False), from the next frame on."""

    silent: bool


@dataclass(frozen=True)
class SetEngineOptions:
    """New sampling or prompt options for the engine's slot (a new prompt starts its context over)."""

    options: SlotOptions


@dataclass(frozen=True)
class CaptionUtterance:
    """Caption this utterance (`interim`: the part said so far); the host hands the text, with this
    request, to `Conversation.add_caption`."""

    pcm: np.ndarray = field(repr=False, compare=False)  # float32 (n,) at 24 kHz
    start_ms: float
    end_ms: float  # where its speech ends, as far as is known
    job: CaptionJob

    @property
    def interim(self) -> bool:
        """Read only the quick way, and only when the captioner has nothing else to do."""
        return self.job.kind == "interim"

    @property
    def quick(self) -> bool:
        """Read only the quick way (its text None where that does not work): an interim, or a
        reading at a pause in the speech, which a final reading can follow."""
        return self.job.kind != "final"


ConversationEvent = (
    AudioOut
    | SessionReady
    | SessionUpdated
    | InputSpeechStarted
    | InputSpeechStopped
    | AssistantSpeechStarted
    | AssistantSpeechStopped
    | AssistantText
    | PlaybackClear
    | BargeIn
    | Stats
    | UserTranscriptDelta
    | UserTranscript
    | Error
    | SessionEnded
    | SetEngineSilent
    | SetEngineOptions
    | CaptionUtterance
)
