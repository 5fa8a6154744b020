"""The Moshi `/api/chat` protocol's pure parts: the query string a conversation is set up with,
which client messages are audio, close reasons; the Ogg Opus stream wrappers; and the slot's
readiness the handshake waits for."""

from __future__ import annotations

from urllib.parse import urlencode

import numpy as np
import pytest
import sphn
from audio_utils import load_wav

from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ
from audio.opus_ogg import OpusDecoder, OpusEncoder, OpusStreamError
from server.protocols.moshi import query
from server.protocols.moshi import wire as moshi

# What the PersonaPlex web client sends on every connection (its buildURL), and Kyutai's (the same
# minus the two prompts).
PERSONAPLEX_QUERY = {
    "text_temperature": "0.7",
    "text_topk": "25",
    "audio_temperature": "0.8",
    "audio_topk": "250",
    "pad_mult": "0",
    "text_seed": "123456",
    "audio_seed": "654321",
    "repetition_penalty_context": "64",
    "repetition_penalty": "1",
    "text_prompt": "You enjoy having a good conversation.",
    "voice_prompt": "NATF2.pt",
}


def options(**params) -> dict:
    return query.session_options(urlencode(params))


def test_the_personaplex_web_clients_query_sets_role_voice_and_sampling():
    assert options(**PERSONAPLEX_QUERY) == {
        "instructions": "You enjoy having a good conversation.",
        "voice": "NATF2.pt",
        "text_temperature": 0.7,
        "text_top_k": 25,
        "temperature": 0.8,
        "top_k": 250,
    }
    assert query.unknown_parameters(urlencode(PERSONAPLEX_QUERY)) == []


def test_kyutais_web_client_sets_sampling_only_and_unknown_names_are_skipped():
    kyutai = {k: v for k, v in PERSONAPLEX_QUERY.items() if k not in ("text_prompt", "voice_prompt")}
    assert set(options(**kyutai, colour="blue")) == {"text_temperature", "text_top_k", "temperature", "top_k"}
    assert query.unknown_parameters(urlencode({**kyutai, "colour": "blue"})) == ["colour"]
    assert options() == {}


def test_empty_values_and_seed_minus_one_mean_unset_as_in_nvidias_server():
    assert options(text_prompt="", voice_prompt=" ", seed="-1") == {}
    assert options(seed="42") == {"seed": 42}
    # a repeated name counts once, the first, as aiohttp's request.query reads it
    assert query.session_options("seed=1&seed=2") == {"seed": 1}
    # the role may come already wrapped; the engine wraps it once either way
    assert options(text_prompt="<system> Be brief. <system>") == {
        "instructions": "<system> Be brief. <system>"
    }


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"seed": "abc"}, "seed must be an integer, got 'abc'"),
        ({"seed": str(2**64)}, "seed must be between"),
        ({"text_topk": "2.5"}, "text_topk must be an integer"),
        ({"audio_temperature": "hot"}, "audio_temperature must be a number"),
        ({"text_temperature": "nan"}, "text_temperature must be a finite number"),
        ({"audio_temperature": "9"}, "audio_temperature must be between 0 and 5"),
        ({"audio_topk": "-3"}, "audio_topk must be between 0 and"),
        ({"text_prompt": "x" * 4001}, "text_prompt is 4001 characters; at most 4000"),
    ],
)
def test_values_that_cannot_be_honoured_are_refused_in_the_clients_words(params, says):
    with pytest.raises(query.QueryError, match=says):
        options(**params)


def test_only_binary_audio_messages_are_read():
    assert moshi.audio_payload(b"\x01OggS...") == b"OggS..."
    assert moshi.audio_payload(b"\x01") == b""
    for message, says in [
        ("hello", "a text message"),
        (b"", "an empty message"),
        (b"\x07ab", "kind 0x07"),
        (b"\x00", "kind 0x00"),
    ]:
        with pytest.raises(moshi.Ignored, match=says):
            moshi.audio_payload(message)


def test_messages_are_framed_by_kind_byte():
    assert moshi.HANDSHAKE == b"\x00"
    assert moshi.audio_message(b"OggS") == b"\x01OggS"
    assert moshi.text_message(" héllo") == b"\x02" + " héllo".encode()
    assert moshi.error_message("no") == b"\x05no"


def test_close_reasons_fit_a_close_frame():
    assert moshi.close_reason("short") == "short"
    long = "voice 'é" + "é" * 200 + "' is unknown"
    reason = moshi.close_reason(long)
    assert len(reason.encode("utf-8")) <= 123 and reason.endswith("...") and reason.startswith("voice 'é")


# -- audio/opus_ogg.py -----------------------------------------------------------------------------


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def best_lag(x: np.ndarray, y: np.ndarray, max_lag: int) -> tuple[int, float]:
    """The delay of y against x (samples, 0..max_lag) and their correlation at it."""
    n = x.size - max_lag
    lag = int(np.argmax([np.dot(x[:n], y[k : k + n]) for k in range(max_lag)]))
    return lag, float(np.corrcoef(x[:n], y[lag : lag + n])[0, 1])


def test_opus_round_trip_keeps_length_and_sound_and_reads_like_sphn():
    x = load_wav("q1.wav")[0][: 2 * SAMPLE_RATE_HZ]
    encoder, decoder = OpusEncoder(), OpusDecoder()
    pages = [
        encoder.encode(x[i : i + FRAME_SAMPLES].astype(np.float64)) for i in range(0, x.size, FRAME_SAMPLES)
    ]
    assert all(pages) and pages[0].startswith(b"OggS") and b"OpusHead" in pages[0]
    y = np.concatenate([decoder.decode(p) for p in pages])
    assert y.dtype == np.float32 and y.shape == x.shape
    # Lossy, but the same speech, 6.5 ms late: Opus's look-ahead (sphn leaves the pre-skip in).
    lag, corr = best_lag(x, y, 400)
    assert lag == pytest.approx(156, abs=4) and corr > 0.9
    # the stream is Kyutai's: their reader decodes ours sample for sample as ours does
    theirs = sphn.OpusStreamReader(SAMPLE_RATE_HZ)
    np.testing.assert_array_equal(np.concatenate([theirs.append_bytes(p) for p in pages]), y)


def test_pages_may_be_cut_anywhere_between_messages():
    x = tone(0.48)
    encoder = OpusEncoder()
    stream = b"".join(encoder.encode(x[i : i + FRAME_SAMPLES]) for i in range(0, x.size, FRAME_SAMPLES))
    decoder = OpusDecoder()
    y = np.concatenate([decoder.decode(stream[i : i + 37]) for i in range(0, len(stream), 37)])
    assert y.shape == x.shape


def test_a_broken_stream_is_a_typed_error_and_stays_broken():
    x = tone(0.4)
    encoder, decoder = OpusEncoder(), OpusDecoder()
    pages = [encoder.encode(x[i : i + FRAME_SAMPLES]) for i in range(0, x.size, FRAME_SAMPLES)]
    decoder.decode(pages[0])
    with pytest.raises(OpusStreamError, match="broken Ogg Opus stream"):
        decoder.decode(b"not an ogg page at all; " * 3)
    with pytest.raises(OpusStreamError):  # sphn's reader cannot resync: a good page fails too
        decoder.decode(pages[1])
    with pytest.raises(OpusStreamError):
        OpusDecoder().decode(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(48))  # a WAV, not Ogg
