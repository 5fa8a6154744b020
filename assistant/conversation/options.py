"""What a client may set per conversation, and the limits a host applies to every one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from assistant.engine import SlotOptions
from audio.resample import SUPPORTED_RATES
from audio.vad import VadConfig

SUPPORTED_SAMPLE_RATES = tuple(SUPPORTED_RATES)
BARGE_IN_POLICIES = ("model", "vad")


@dataclass(frozen=True)
class ConversationOptions:
    """What a client may set per conversation (session.start / session.update)."""

    barge_in: str = "model"
    vad: dict[str, float] = field(default_factory=dict)  # overrides of VadConfig fields
    min_interrupt_ms: int = 120  # user speech overlapping the assistant's needed to count as a barge-in
    seed: int | None = None
    temperature: float | None = None
    text_temperature: float | None = None
    top_k: int | None = None  # audio tokens sampled among the k likeliest; None = backend default
    text_top_k: int | None = None
    captions: bool = False
    instructions: str | None = None  # role prompt, for models that take one (PersonaPlex family)
    voice: str | None = None  # voice preset name or .wav / .pt file, same models

    def __post_init__(self):
        if self.barge_in not in BARGE_IN_POLICIES:
            raise ValueError(f"barge_in must be one of {BARGE_IN_POLICIES}, got {self.barge_in!r}")
        if self.min_interrupt_ms < 0:
            raise ValueError(f"min_interrupt_ms must be >= 0, got {self.min_interrupt_ms}")

    def replace(self, **changes: Any) -> ConversationOptions:
        if "vad" in changes:
            changes["vad"] = {**self.vad, **changes["vad"]}
        return dataclasses.replace(self, **changes)

    def slot_options(self) -> SlotOptions:
        return SlotOptions(
            seed=self.seed,
            temperature=self.temperature,
            text_temperature=self.text_temperature,
            top_k=self.top_k,
            text_top_k=self.text_top_k,
            instructions=self.instructions,
            voice=self.voice,
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
            "top_k": self.top_k,
            "text_top_k": self.text_top_k,
            "captions": self.captions,
            "instructions": self.instructions,
            "voice": self.voice,
        }


@dataclass(frozen=True)
class ConversationLimits:
    """Limits the host (server, local client, offline run) applies to every conversation."""

    max_backlog_frames: int = 3  # queued input beyond this many frames is dropped (oldest first)
    idle_timeout_s: float | None = 60.0  # no input audio for this long ends the conversation
    max_session_s: float | None = 3600.0
    stats_every_frames: int = 12  # ~1 s
    assistant_hangover_frames: int = 3  # silent frames before the assistant's stretch counts as over
    # New prompts (instructions or voice) a session may set per second; each restarts the model's
    # context and feeds the prompt again. None: no limit.
    prompt_changes_per_s: float | None = 1.0


class PromptChangeLimited(ValueError):
    """A prompt change sooner than ConversationLimits.prompt_changes_per_s allows; nothing changed."""

    code = "rate_limited"

    def __init__(self, retry_after_s: float, per_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(
            f"the prompt (instructions, voice) may change {per_s:g} time{'s' if per_s != 1 else ''} a "
            f"second; it stays as it was: retry in {retry_after_s:.2f} s"
        )
