"""Test backends (silence, scripted) and the backend factory."""

from __future__ import annotations

import numpy as np
import pytest

from assistant.backends import BACKENDS, build_engine
from assistant.backends.silence import SilenceEngine
from assistant.engine import FRAME_SAMPLES


# -- factory -------------------------------------------------------------------------------
def test_build_engine_unknown_backend_lists_choices():
    with pytest.raises(ValueError, match="unknown backend 'nope'.*moshi, scripted, silence"):
        build_engine("nope")


def test_build_engine_silence_rejects_options_and_bad_batch():
    with pytest.raises(ValueError, match="no options"):
        build_engine("silence", script_reply="x.wav")
    with pytest.raises(ValueError, match="batch_size"):
        build_engine("silence", batch_size=0)


def test_backends_names():
    assert set(BACKENDS) == {"moshi", "scripted", "silence"}


# -- silence -------------------------------------------------------------------------------
def test_silence_outputs_zeros_and_no_text():
    engine = build_engine("silence", batch_size=3)
    assert isinstance(engine, SilenceEngine)
    engine.open(0)
    engine.open(2)
    loud = np.random.default_rng(0).uniform(-0.5, 0.5, (3, FRAME_SAMPLES)).astype(np.float32)
    for _ in range(3):
        out = engine.step(loud)
        assert out.pcm_out.shape == (3, FRAME_SAMPLES)
        assert out.pcm_out.dtype == np.float32
        assert not out.pcm_out.any()
        assert out.text == ["", "", ""]
        assert out.speaking.shape == (3,) and not out.speaking.any()


def test_silence_rejects_wrong_frame_shape():
    engine = build_engine("silence", batch_size=2)
    with pytest.raises(ValueError, match="shape"):
        engine.step(np.zeros((1, FRAME_SAMPLES), dtype=np.float32))
