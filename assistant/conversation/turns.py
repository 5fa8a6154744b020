"""Who holds the floor: the pure turn-taking state machine (listening / assistant speaking /
user barging in), fed VAD decisions on the input and the engine's speaking flag."""

from __future__ import annotations

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
