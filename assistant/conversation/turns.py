"""Who holds the floor: the pure turn-taking state machine (listening / assistant speaking /
user barging in), fed VAD decisions on the input and the engine's speaking flag.

Every method returns the `TurnChange`s it caused, in order; the conversation core
(assistant/conversation/core.py) carries them out after the call.
"""

from __future__ import annotations

from dataclasses import dataclass

LISTENING = "listening"
ASSISTANT_SPEAKING = "assistant_speaking"
USER_BARGING_IN = "user_barging_in"


@dataclass(frozen=True)
class StretchStarted:
    """A stretch of assistant speech began (pauses shorter than the hangover stay inside it)."""


@dataclass(frozen=True)
class StretchEnded:
    """The stretch ended: more than `hangover_frames` quiet frames in a row."""


@dataclass(frozen=True)
class BargeInDetected:
    """The user talked over the assistant: clear the listener's playback, report the cut."""


@dataclass(frozen=True)
class AssistantHeld:
    """Keep the assistant silent until the user's speech ends (held), or give it the floor back."""

    held: bool


TurnChange = StretchStarted | StretchEnded | BargeInDetected | AssistantHeld


class TurnTaking:
    """Who holds the floor, from VAD events on the input and the engine's speaking flag.

    Positions are input samples (24 kHz) since the session started. Pure: no clocks, no I/O.
    Barge-in policy `vad` holds the assistant from each barge-in until the user's speech ends;
    `model` only reports it (a host may still ask for the hold: `hold_until_user_stops`).
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
        self.held = False  # the assistant is kept silent until the user's speech ends

    def user_speech_started(self, onset_sample: int, now_sample: int) -> list[TurnChange]:
        self.user_speaking = True
        self._user_onset = onset_sample
        return self.user_input(now_sample)

    def user_input(self, now_sample: int, voiced: bool = True) -> list[TurnChange]:
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
        changes: list[TurnChange] = [BargeInDetected()]
        if self.barge_in == "vad":
            changes += self.hold_until_user_stops()
        return changes

    def hold_until_user_stops(self) -> list[TurnChange]:
        """Keep the assistant silent until the user's current speech ends (nothing if they are not speaking)."""
        if self.held or not self.user_speaking:
            return []
        self.held = True
        return [AssistantHeld(True)]

    def release(self) -> list[TurnChange]:
        """Give the floor back now (the policy changed under a hold)."""
        if not self.held:
            return []
        self.held = False
        return [AssistantHeld(False)]

    def user_speech_stopped(self) -> list[TurnChange]:
        self.user_speaking = False
        self._user_onset = None
        if self.state == USER_BARGING_IN:
            self.state = ASSISTANT_SPEAKING if self.assistant_speaking else LISTENING
            if self.state == ASSISTANT_SPEAKING:
                # A fresh overlap is needed for the next barge-in.
                self._assistant_onset = None
        return self.release()

    def assistant_frame(self, speaking: bool, now_sample: int) -> list[TurnChange]:
        """One output frame from the engine; `speaking` is its voice-activity flag."""
        changes: list[TurnChange] = []
        if speaking:
            self._quiet_frames = 0
            if not self.assistant_speaking:
                self.assistant_speaking = True
                self._assistant_onset = now_sample
                changes.append(StretchStarted())
                if self.state == LISTENING:
                    self.state = ASSISTANT_SPEAKING
                    changes += self.user_input(now_sample, self.user_voiced)
        elif self.assistant_speaking:
            self._quiet_frames += 1
            if self._quiet_frames > self.hangover_frames:
                self.assistant_speaking = False
                self._assistant_onset = None
                changes.append(StretchEnded())
                if self.state == ASSISTANT_SPEAKING:
                    self.state = LISTENING
        return changes
