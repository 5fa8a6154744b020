"""The engine interface: one batched step of the duplex loop per 80 ms frame.

An engine owns B slots, one per live conversation. `step` advances every slot by one
frame at once; closed slots are fed silence and their outputs are ignored by callers.
Backends: `moshi` (the real speech LM), `scripted` and `silence` (no weights, for tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from assistant.images import ImagesNotSupported, PreparedImage
from audio.frames import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE_HZ

__all__ = [
    "CONTEXT_POLICIES",
    "FRAME_MS",
    "FRAME_SAMPLES",
    "MAX_PROMPT_CHARS",
    "SAMPLE_RATE_HZ",
    "Engine",
    "SlotOptions",
    "StepOutput",
    "checked_context_policy",
]


@dataclass
class StepOutput:
    """What one engine step produced for every slot.

    pcm_out: float32 (B, 1920) in [-1, 1], the assistant's audio for this frame.
    text: B strings, the text piece each slot's assistant produced this frame ("" for none).
    speaking: bool (B,), whether the assistant produced speech (not silence) this frame.
    """

    pcm_out: np.ndarray
    text: list[str]
    speaking: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)  # slot -> why it cannot go on (its prompt failed)


MAX_PROMPT_CHARS = 4000  # longest role prompt (instructions) any endpoint accepts
# What a full context window forgets: "pin" keeps the prompt and slides the conversation past it,
# "slide" forgets the oldest frames whatever they are, the prompt first.
CONTEXT_POLICIES = ("pin", "slide")


def checked_context_policy(value: str | None) -> str:
    """A context policy, validated (None: the default, the first of CONTEXT_POLICIES)."""
    if value is None:
        return CONTEXT_POLICIES[0]
    if value not in CONTEXT_POLICIES:
        raise ValueError(f"context policy must be one of {', '.join(CONTEXT_POLICIES)}, got {value!r}")
    return value


@dataclass
class SlotOptions:
    """Per-conversation options a client may set when a slot is opened or updated."""

    seed: int | None = None
    temperature: float | None = None  # audio sampling temperature; None = backend default
    text_temperature: float | None = None
    top_k: int | None = None
    text_top_k: int | None = None
    instructions: str | None = None  # role prompt (models that take prompts; see Engine.takes_prompts)
    voice: str | None = None  # voice preset name or a .wav / .pt file (models that take prompts)


class Engine:
    """Base class of every backend. Subclasses implement `_step` and the slot hooks."""

    name: str = "engine"
    model_name: str = ""
    sample_rate_hz: int = SAMPLE_RATE_HZ
    frame_samples: int = FRAME_SAMPLES

    def __init__(self, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.live = np.zeros(batch_size, dtype=bool)
        self.silenced = np.zeros(batch_size, dtype=bool)
        self.held = np.zeros(batch_size, dtype=bool)  # open, its prompt fed, but not stepped yet

    # -- slots -------------------------------------------------------------------------
    def open(self, slot: int, options: SlotOptions | None = None, held: bool = False) -> None:
        """Start a new conversation in `slot` from a clean state.

        held: the slot takes its prompt (if any) but the model is not stepped for it until `start`,
        so its first step hears the conversation's first frame whenever that comes."""
        self._check_slot(slot)
        if self.live[slot]:
            raise RuntimeError(f"slot {slot} is already open")
        self._reset_slot(slot, options or SlotOptions())
        self.live[slot] = True
        self.silenced[slot] = False
        self.held[slot] = held

    def start(self, slot: int) -> None:
        """Step a held slot from the next step on (no-op for one that is not held)."""
        self._check_slot(slot)
        self.held[slot] = False

    def close(self, slot: int) -> None:
        """End the conversation in `slot`; its state is wiped so nothing leaks to the next one."""
        self._check_slot(slot)
        self.live[slot] = False
        self.silenced[slot] = False
        self.held[slot] = False
        self._reset_slot(slot, SlotOptions())

    def reset_encoder(self, slot: int) -> None:
        """Encode the slot's next input frame as the first of a stream, the model's state untouched
        (Kyutai's server does it after the first frame it hears; engines without a codec ignore it)."""
        self._check_slot(slot)

    def update(self, slot: int, options: SlotOptions) -> None:
        """Change sampling options of an open slot (backends without sampling ignore it)."""
        self._check_slot(slot)

    # -- prompts -----------------------------------------------------------------------------
    @property
    def takes_prompts(self) -> bool:
        """Whether `instructions` and `voice` change what this engine says (PersonaPlex-family models)."""
        return False

    def voices(self) -> list[str]:
        """Voice presets a slot may name (empty for engines without voices)."""
        return []

    def check_prompt(self, instructions: str | None, voice: str | None) -> None:
        """Raise ValueError with a reason a user can act on unless this prompt can be used.

        Pure: it reads files and the model's voice list but changes nothing, so any thread may ask."""
        if (instructions and instructions.strip()) or voice:
            raise ValueError(
                f"this model ({self.model_name or self.name}) takes no role or voice prompt; instructions "
                "and voice need a PersonaPlex-family checkpoint (see `assistant models`)"
            )

    def add_voice(self, path: str) -> str:
        """Offer the voice file at `path` as a preset (named by its file name); returns the name."""
        raise ValueError(f"this model ({self.model_name or self.name}) takes no voice prompt")

    def finish_prompts(self) -> None:
        """Feed every pending prompt now, however long it takes (offline runs, which keep no clock)."""

    # -- images ------------------------------------------------------------------------------
    @property
    def takes_images(self) -> bool:
        """Whether this engine sees images (MoshiVis-family models)."""
        return False

    def check_image(self, data: bytes) -> PreparedImage:
        """Validate image bytes (JPEG, PNG, WebP) and prepare them for this model.

        Any thread may call it (it changes nothing); raises an `assistant.images.ImageError` subclass."""
        raise self._no_images()

    def set_image(self, slot: int, image: PreparedImage | None, *, start_frame: int | None = None) -> None:
        """Show `image` (from `check_image`) to the conversation in `slot`; None removes its image.

        start_frame: the step of the conversation from which the image counts at the earliest
        (None: the engine's default). An image replaces the previous one once encoded."""
        self._check_slot(slot)
        if image is not None:
            raise self._no_images()

    def image_status(self, slot: int) -> str:
        """ "none", "encoding" (a new image is being encoded) or "set" (the slot has an image)."""
        return "none"

    def is_ready(self, slot: int) -> bool:
        """False while an open slot's prompt is still being fed to the model (its output is silence)."""
        return bool(self.live[slot])

    def context_fill(self, slot: int) -> float | None:
        """How full the model's context window of `slot` is, 0..1: the positions it holds (its prompt
        and the conversation since) over the window; None for an engine without one or a closed slot.

        Read from host-side counters, so the event loop may ask while a step runs."""
        return None

    def force_silence(self, slot: int, silent: bool) -> None:
        """Keep the assistant in `slot` silent (barge-in policy `vad`, manual turns)."""
        self._check_slot(slot)
        self.silenced[slot] = bool(silent)

    # -- the step ----------------------------------------------------------------------
    def step(self, pcm_in: np.ndarray) -> StepOutput:
        """Advance every slot by one frame.

        pcm_in: float32 (B, 1920) in [-1, 1], the users' audio for this frame.
        """
        pcm_in = np.asarray(pcm_in, dtype=np.float32)
        if pcm_in.shape != (self.batch_size, self.frame_samples):
            raise ValueError(
                f"pcm_in must have shape ({self.batch_size}, {self.frame_samples}), got {pcm_in.shape}"
            )
        return self._step(pcm_in)

    def _step(self, pcm_in: np.ndarray) -> StepOutput:
        raise NotImplementedError

    def _reset_slot(self, slot: int, options: SlotOptions) -> None:
        raise NotImplementedError

    def _no_images(self) -> ImagesNotSupported:
        return ImagesNotSupported(
            f"this model ({self.model_name or self.name}) does not take images; they need a vision "
            "checkpoint such as moshika-vis (see `assistant models`)"
        )

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.batch_size:
            raise IndexError(f"slot {slot} out of range 0..{self.batch_size - 1}")

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_name, "batch_size": self.batch_size}
