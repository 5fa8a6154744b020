"""What the Realtime state machine (server/protocols/realtime/state_machine.py) returns, and its
records of items and responses with their JSON. Every method of the state machine returns a list of
`RealtimeOutput`s for the adapter to carry out after the call: server events to send, and actions
on the conversation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from audio.frames import FRAME_MS
from server.protocols.realtime.client_events import PCM_FORMAT, InputImagePart, TurnDetection

# -- what the adapter carries out ------------------------------------------------------------------


@dataclass(frozen=True)
class SendEvent:
    """Send this server event to the client (a JSON object, ready for `json.dumps`)."""

    event: dict[str, Any]


@dataclass(frozen=True)
class PushAudio:
    """Feed user audio to the session. paced: the adapter feeds it at real-time speed (item audio)."""

    pcm16: bytes
    paced: bool = False


@dataclass(frozen=True)
class SetSilenced:
    """Hold the assistant silent (True) or give it the floor back (False): turn control of the session
    (manual turns, the hold after a cancel), beside the conversation's own barge-in hold."""

    silent: bool


@dataclass(frozen=True)
class HoldUntilUserStops:
    """A barge-in interrupted the response: the conversation keeps the assistant silent until the
    user's speech ends (its own barge-in hold, which this protocol decides when to use)."""


@dataclass(frozen=True)
class SetPrompt:
    """Give the model a new role / voice prompt (models that take prompts); its context starts over."""

    instructions: str | None
    voice: str | None


@dataclass(frozen=True)
class CheckImage:
    """Check the image of an item (off the event loop) and show it to the model; the adapter tells
    the state machine how it went (`image_accepted` / `image_refused`) with this action."""

    event: Any  # the ItemCreate
    item_id: str

    @property
    def image_url(self) -> str:
        return self.event.item.part(InputImagePart)[1].image_url


@dataclass(frozen=True)
class RemoveImage:
    """The model sees no image from its next step."""


@dataclass(frozen=True)
class ConfigureInput:
    """VAD settings (None: no turn detection, VAD still runs for captions) and whether captions run."""

    turn_detection: TurnDetection | None
    captions: bool


RealtimeOutput = (
    SendEvent
    | PushAudio
    | SetSilenced
    | HoldUntilUserStops
    | SetPrompt
    | CheckImage
    | RemoveImage
    | ConfigureInput
)


# -- conversation records -------------------------------------------------------------------------


@dataclass
class Item:
    id: str
    role: str  # "user" | "assistant"
    status: str = "completed"  # "in_progress" | "completed" | "incomplete"
    start_ms: float = 0.0  # user items: span on the input timeline
    end_ms: float = 0.0
    transcript: str | None = None  # user items: caption or client-given transcript
    frames: int = 0  # assistant items: 80 ms frames of audio sent
    pieces: list[tuple[int, str]] = field(default_factory=list)  # assistant: (frame index, text piece)
    audio_end_ms: int | None = None  # set by a truncate
    audio: bool = True  # user items: holds audio the model heard
    image: bool = False  # user items: holds an image (never echoed back)

    @property
    def audio_ms(self) -> int:
        return self.frames * FRAME_MS if self.audio_end_ms is None else self.audio_end_ms

    @property
    def text(self) -> str:
        return "".join(p for _, p in self.pieces)

    def to_json(self) -> dict[str, Any]:
        if self.role == "user":
            content = [{"type": "input_audio", "transcript": self.transcript}] if self.audio else []
            if self.image:
                content.append({"type": "input_image"})
        else:
            content = [{"type": "output_audio", "transcript": self.text}] if self.frames else []
        return {
            "id": self.id,
            "object": "realtime.item",
            "type": "message",
            "role": self.role,
            "status": self.status,
            "content": content,
        }


@dataclass
class Response:
    id: str
    metadata: dict | None
    max_frames: int | None
    requested: bool  # by response.create (else opened by the model's own speech)
    status: str = "in_progress"
    status_details: dict | None = None
    item: Item | None = None
    waited_frames: int = 0  # frames since created without speech (requested responses)
    held: list[list] = field(default_factory=list)  # quiet frames at the tail: [pcm16, text]
    input_ms_at_start: float = 0.0
    speech_from_frame: int = 0  # output frame at which its audio began (barge-ins count after it)

    def to_json(self, conversation_id: str, input_ms: float, voice: str) -> dict[str, Any]:
        """The `response` object of response.created/done; usage counts 80 ms frames as tokens."""
        usage = None
        if self.status != "in_progress":
            frames = self.item.frames if self.item else 0
            heard = max(0, round((input_ms - self.input_ms_at_start) / FRAME_MS))
            usage = {
                "total_tokens": frames + heard,
                "input_tokens": heard,
                "output_tokens": frames,
                "input_token_details": {
                    "text_tokens": 0,
                    "audio_tokens": heard,
                    "image_tokens": 0,
                    "cached_tokens": 0,
                    "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
                },
                "output_token_details": {"text_tokens": 0, "audio_tokens": frames},
            }
        return {
            "id": self.id,
            "object": "realtime.response",
            "status": self.status,
            "status_details": self.status_details,
            "output": [self.item.to_json()] if self.item else [],
            "conversation_id": conversation_id,
            "output_modalities": ["audio"],
            "metadata": self.metadata,
            "max_output_tokens": "inf" if self.max_frames is None else self.max_frames,
            "audio": {"output": {"format": dict(PCM_FORMAT), "voice": voice}},
            "usage": usage,
        }


def session_json(
    session_id: str,
    model: str,
    instructions: str,
    max_output_tokens: int | None,
    turn_detection: TurnDetection | None,
    transcription: dict | None,
    voice: str,
) -> dict[str, Any]:
    """The `session` object of session.created/updated."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": instructions,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf" if max_output_tokens is None else max_output_tokens,
        "tracing": None,
        "truncation": "disabled",
        "prompt": None,
        "include": None,
        "audio": {
            "input": {
                "format": dict(PCM_FORMAT),
                "transcription": transcription,
                "noise_reduction": None,
                "turn_detection": turn_detection.to_json() if turn_detection else None,
            },
            "output": {"format": dict(PCM_FORMAT), "voice": voice, "speed": 1.0},
        },
    }
