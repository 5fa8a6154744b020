"""A simulated-room device for `assistant talk` tests: FileAudio whose mic also hears the speaker.

    audio = RoomAudio(speech_wav, out_wav, block_ms=20, tail_seconds=1, config=RoomConfig(delay_ms=80))
    await talk.talk(args, display_factory=..., audio=audio)

Everything else is FileAudio's: the same wall clock, the same pull from the playout buffer and the
same output file of what the listener heard. Each mic block is the input file's speech plus the
echo of what the speaker played over that block (bench/room.py), so the assistant hears itself as
it would through laptop speakers. `mic`, `echo` and `speech` keep the whole mic timeline for scoring.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.room import RoomConfig, SimulatedRoom
from client.devices import FileAudio


class RoomAudio(FileAudio):
    def __init__(
        self, input_path: Path, output_path: Path, block_ms: float, tail_seconds: float, config: RoomConfig
    ):
        super().__init__(input_path, output_path, block_ms, tail_seconds)
        self.room = SimulatedRoom(self.sample_rate, config)
        self.mic = np.zeros(self.total_samples, dtype=np.float32)
        self.echo = np.zeros(self.total_samples, dtype=np.float32)
        self.speech = np.zeros(self.total_samples, dtype=np.float32)

    def capture(self, start: int, n: int) -> np.ndarray:
        speech = super().capture(start, n)
        # Output sample i plays while input sample i is spoken (FileAudio's alignment), so the speaker
        # plays output[start:start + n] over this block; it was pulled one block ago.
        played = np.zeros(n, dtype=np.float32)
        heard = self.output[start : start + n]
        played[: heard.shape[0]] = heard
        mic, echo = self.room.capture(speech, played)
        end = min(start + n, self.total_samples)
        self.mic[start:end], self.echo[start:end] = mic[: end - start], echo[: end - start]
        self.speech[start:end] = speech[: end - start]
        return mic

    def describe(self) -> str:
        return f"{super().describe()} in a simulated room ({self.room.config.delay_ms:.0f} ms echo delay)"
