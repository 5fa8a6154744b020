"""The silence backend: every slot outputs zeros and no text, whatever it hears."""

from __future__ import annotations

import numpy as np

from assistant.engine import Engine, SlotOptions, StepOutput


class SilenceEngine(Engine):
    """An assistant that never speaks; the cheapest engine for server and client tests."""

    name = "silence"
    model_name = "silence"

    def _step(self, pcm_in: np.ndarray) -> StepOutput:
        return StepOutput(
            pcm_out=np.zeros((self.batch_size, self.frame_samples), dtype=np.float32),
            text=[""] * self.batch_size,
            speaking=np.zeros(self.batch_size, dtype=bool),
        )

    def _reset_slot(self, slot: int, options: SlotOptions) -> None:
        """Nothing to reset: the silence backend keeps no state."""
