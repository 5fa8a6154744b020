"""Offline conversations (`respond`, evaluation): the core and the frame loop without a wall clock."""

from __future__ import annotations

import numpy as np
import pytest

from assistant.backends.silence import SilenceEngine
from assistant.offline import run_offline
from audio.frames import FRAME_SAMPLES


def test_output_frame_i_is_what_the_engine_said_while_hearing_input_frame_i():
    class Echo(SilenceEngine):
        def _step(self, pcm_in):
            out = super()._step(pcm_in)
            out.pcm_out[:] = pcm_in * 0.5
            return out

    user = np.random.default_rng(0).uniform(-0.5, 0.5, 10 * FRAME_SAMPLES).astype(np.float32)
    result = run_offline(Echo(1), user, tail_seconds=0.16)
    assert result.assistant.shape == result.user.shape == (12 * FRAME_SAMPLES,)
    np.testing.assert_array_equal(result.user[: user.shape[0]], user)
    np.testing.assert_allclose(result.assistant, result.user * 0.5, atol=1e-7)
    assert result.events[0].type == "session.ready" and result.events[-1].reason == "input_ended"


def test_a_refused_slot_option_raises_instead_of_answering_with_silence():
    class Picky(SilenceEngine):
        def _reset_slot(self, slot, options):
            if options.temperature is not None and options.temperature < 0:
                raise ValueError("temperature must be >= 0")

    from assistant.conversation import ConversationOptions

    engine = Picky(1)
    with pytest.raises(ValueError, match="temperature"):
        run_offline(
            engine, np.zeros(FRAME_SAMPLES, np.float32), options=ConversationOptions(temperature=-1.0)
        )
    assert not engine.live.any()


def test_a_conversation_that_fails_mid_way_raises_with_its_reason():
    class Broken(SilenceEngine):
        steps = 0

        def _step(self, pcm_in):
            out = super()._step(pcm_in)
            Broken.steps += 1
            if Broken.steps == 3:
                out.text = []  # the conversation cannot take this frame
            return out

    with pytest.raises(RuntimeError, match="stopped at frame 2: internal_error"):
        run_offline(Broken(1), np.zeros(10 * FRAME_SAMPLES, np.float32))
