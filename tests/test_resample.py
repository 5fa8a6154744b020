import numpy as np
import pytest
from audio_utils import load_wav

from audio.resample import SUPPORTED_RATES, StreamResampler, resample

PAIRS = [(r, 24000) for r in (8000, 16000, 44100, 48000)] + [(24000, r) for r in (8000, 16000, 44100, 48000)]


def _chunked(x: np.ndarray, in_rate: int, out_rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rs = StreamResampler(in_rate, out_rate)
    out, pos = [], 0
    while pos < len(x):
        n = int(rng.choice([0, 1, 3, 160, 441, 1920, int(rng.integers(1, 5000))]))
        out.append(rs.process(x[pos : pos + n]))
        pos += n
    out.append(rs.flush())
    return np.concatenate(out)


def _speech_at(rate: int) -> np.ndarray:
    x, sr = load_wav("q1.wav")
    assert sr == 24000
    return resample(x, sr, rate)


@pytest.mark.parametrize("in_rate,out_rate", PAIRS)
def test_streaming_matches_one_shot(in_rate, out_rate):
    x = _speech_at(in_rate)
    one = resample(x, in_rate, out_rate)
    streamed = _chunked(x, in_rate, out_rate, seed=in_rate + out_rate)
    assert len(streamed) == len(one)
    # Skip 10 ms at each edge where the filter sees the stream start/end.
    edge = out_rate // 100
    max_diff = float(np.abs(streamed[edge:-edge] - one[edge:-edge]).max())
    print(f"{in_rate}->{out_rate}: max |stream - one-shot| = {max_diff:.2e}")
    assert max_diff < 1e-4


@pytest.mark.parametrize("in_rate,out_rate", PAIRS)
@pytest.mark.parametrize("n", [0, 1, 7, 1001, 44101])
def test_output_length_is_input_length_times_ratio(in_rate, out_rate, n):
    x = np.random.default_rng(n).uniform(-0.5, 0.5, n).astype(np.float32)
    expected = n * out_rate / in_rate
    one = resample(x, in_rate, out_rate)
    assert one.dtype == np.float32 and abs(len(one) - expected) <= 0.5 + 1e-9
    rs = StreamResampler(in_rate, out_rate)
    assert len(rs.process(x)) + len(rs.flush()) == len(one)


def test_resampled_tone_keeps_its_frequency_and_level():
    t = np.arange(48000) / 48000
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    y = resample(x, 48000, 24000)
    spectrum = np.abs(np.fft.rfft(y[2400:-2400] * np.hanning(len(y) - 4800)))
    peak_hz = np.argmax(spectrum) * 24000 / (len(y) - 4800)
    assert abs(peak_hz - 1000) < 5
    assert abs(np.abs(y[2400:-2400]).max() - 0.5) < 0.01


def test_content_above_the_new_nyquist_is_removed():
    t = np.arange(48000) / 48000
    x = (0.5 * np.sin(2 * np.pi * 15000 * t)).astype(np.float32)  # would alias to 9 kHz at 24 kHz
    y = resample(x, 48000, 24000)
    assert np.abs(y[2400:-2400]).max() < 1e-3


def test_equal_rates_pass_through():
    x = np.random.default_rng(1).uniform(-1, 1, 333).astype(np.float32)
    rs = StreamResampler(24000, 24000)
    assert np.array_equal(rs.process(x), x)
    assert len(rs.flush()) == 0
    assert np.array_equal(resample(x, 24000, 24000), x)


def test_stream_can_be_reused_after_flush_and_reset():
    x = np.random.default_rng(2).uniform(-0.5, 0.5, 4000).astype(np.float32)
    one = resample(x, 16000, 24000)
    rs = StreamResampler(16000, 24000)
    for _ in range(2):
        assert np.array_equal(np.concatenate([rs.process(x), rs.flush()]), one)
    rs.process(np.ones(1000, dtype=np.float32))
    rs.reset()  # a reused session slot must not hear the previous session's tail
    assert np.array_equal(np.concatenate([rs.process(x), rs.flush()]), one)


def test_unsupported_rate_and_bad_shape_are_clear_errors():
    with pytest.raises(ValueError, match="22050"):
        StreamResampler(22050, 24000)
    with pytest.raises(ValueError, match="supported"):
        resample(np.zeros(10, dtype=np.float32), 24000, 11025)
    with pytest.raises(ValueError, match="1-D"):
        StreamResampler(16000, 24000).process(np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="float samples"):
        resample(np.zeros(10, dtype=np.int16), 16000, 24000)
    assert 24000 in SUPPORTED_RATES
