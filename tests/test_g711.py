"""G.711 mu-law and A-law: bit-exact with the reference coder (CPython's audioop, itself CCITT/Sun
g711.c) over every 16-bit sample and every code, and a decode/encode round trip that keeps codes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from audio import g711

EVERY_SAMPLE = np.arange(-32768, 32768, dtype="<i2").tobytes()
EVERY_CODE = bytes(range(256))


@pytest.fixture(scope="module")
def audioop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("audioop", reason="audioop (the reference) is gone from Python 3.13")


@pytest.mark.parametrize("law", g711.LAWS)
def test_encode_and_decode_match_the_reference_coder_bit_for_bit(law, audioop):
    encode = {"ulaw": audioop.lin2ulaw, "alaw": audioop.lin2alaw}[law]
    decode = {"ulaw": audioop.ulaw2lin, "alaw": audioop.alaw2lin}[law]
    assert g711.encode(EVERY_SAMPLE, law) == encode(EVERY_SAMPLE, 2)
    assert g711.decode(EVERY_CODE, law) == decode(EVERY_CODE, 2)


@pytest.mark.parametrize("law", g711.LAWS)
def test_a_decoded_code_encodes_back_to_itself_and_speech_survives(law):
    roundtrip = g711.encode(g711.decode(EVERY_CODE, law), law)
    if law == "ulaw":  # mu-law has two zeros (0x7F, 0xFF); both decode to 0, which encodes as 0xFF
        assert roundtrip == EVERY_CODE.replace(b"\x7f", b"\xff")
    else:
        assert roundtrip == EVERY_CODE
    t = np.arange(8000) / 8000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    back = np.frombuffer(g711.decode(g711.encode(tone.tobytes(), law), law), "<i2").astype(float)
    snr_db = 10 * np.log10(np.sum(tone.astype(float) ** 2) / np.sum((back - tone) ** 2))
    assert snr_db > 30  # G.711's ~38 dB for a loud tone: the tables are not off by a segment
