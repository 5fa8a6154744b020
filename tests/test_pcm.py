import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio.pcm import FrameChunker, float32_to_pcm16, pcm16_to_float32


def test_pcm16_round_trip_is_exact_for_every_int16_value():
    ints = np.arange(-32768, 32768, dtype="<i2")
    data = ints.tobytes()
    x = pcm16_to_float32(data)
    assert x.dtype == np.float32 and x.shape == (65536,)
    assert x.min() == -1.0 and x.max() < 1.0
    assert float32_to_pcm16(x) == data


def test_float_round_trip_error_is_within_half_a_step():
    x = np.random.default_rng(0).uniform(-0.999, 0.999, 10_000).astype(np.float32)
    back = pcm16_to_float32(float32_to_pcm16(x))
    assert np.abs(back - x).max() <= 0.5 / 32768 + 1e-7


def test_pcm16_is_little_endian():
    assert pcm16_to_float32(b"\x00\x40")[0] == 0.5  # 0x4000 = 16384
    assert float32_to_pcm16(np.array([0.5], dtype=np.float32)) == b"\x00\x40"


def test_odd_byte_length_is_a_clear_error():
    with pytest.raises(ValueError, match="even number of bytes"):
        pcm16_to_float32(b"\x00\x01\x02")


def test_empty_input_gives_empty_output():
    assert pcm16_to_float32(b"").shape == (0,)
    assert float32_to_pcm16(np.zeros(0, dtype=np.float32)) == b""


def test_out_of_range_samples_are_clipped_not_wrapped():
    x = np.array([1.5, 1.0, -1.0, -7.0, 0.99999], dtype=np.float32)
    ints = np.frombuffer(float32_to_pcm16(x), dtype="<i2")
    assert ints.tolist() == [32767, 32767, -32768, -32768, 32767]


def test_rounding_is_to_nearest():
    x = np.array([0.6 / 32768, 0.4 / 32768, -0.6 / 32768], dtype=np.float32)
    assert np.frombuffer(float32_to_pcm16(x), dtype="<i2").tolist() == [1, 0, -1]


def test_float32_to_pcm16_rejects_multichannel_and_integer_samples():
    with pytest.raises(ValueError, match="1-D"):
        float32_to_pcm16(np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="pcm16_to_float32"):
        float32_to_pcm16(np.array([1000, -1000], dtype=np.int16))
    # float64 input is fine (numpy's default dtype)
    assert float32_to_pcm16(np.array([0.5, -0.5])) == float32_to_pcm16(
        np.array([0.5, -0.5], dtype=np.float32)
    )


@settings(max_examples=150, deadline=None)
@given(
    frame_samples=st.integers(1, 64),
    sizes=st.lists(st.integers(0, 200), max_size=30),
)
def test_chunker_never_loses_or_duplicates_a_sample(frame_samples, sizes):
    total = sum(sizes)
    signal = np.arange(1, total + 1, dtype=np.float32)  # unique, non-zero values
    chunker = FrameChunker(frame_samples)
    frames, pos = [], 0
    for n in sizes:
        out = chunker.push(signal[pos : pos + n])
        pos += n
        for f in out:
            assert f.dtype == np.float32 and f.shape == (frame_samples,)
        frames.extend(out)
        assert chunker.pending == pos - len(frames) * frame_samples
        assert 0 <= chunker.pending < frame_samples
    tail = chunker.flush()
    got = np.concatenate(frames) if frames else np.zeros(0, dtype=np.float32)
    if tail is not None:
        got = np.concatenate([got, tail])
    assert np.array_equal(got[:total], signal)
    assert not got[total:].any() and len(got) - total < frame_samples  # zero padding only
    assert chunker.pending == 0 and chunker.flush() is None


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 50), min_size=1, max_size=10),
    drop=st.integers(0, 80),
)
def test_drop_discards_the_oldest_pending_samples(sizes, drop):
    frame_samples = 64
    total = sum(sizes)
    signal = np.arange(1, total + 1, dtype=np.float32)
    chunker = FrameChunker(frame_samples)
    emitted = []
    pos = 0
    for n in sizes:
        emitted.extend(chunker.push(signal[pos : pos + n]))
        pos += n
    before = chunker.pending
    waiting = signal[total - before :]
    dropped = chunker.drop(drop)
    assert dropped == min(drop, before)
    assert chunker.pending == before - dropped
    # What is still pending is the newest samples, in order, and comes out next.
    more = np.arange(total + 1, total + 1 + frame_samples, dtype=np.float32)
    frame = chunker.push(more)[0]
    expected = np.concatenate([waiting[dropped:], more])[:frame_samples]
    assert np.array_equal(frame, expected)


def test_reset_forgets_pending_samples():
    chunker = FrameChunker(4)
    chunker.push(np.ones(3, dtype=np.float32))
    chunker.reset()
    assert chunker.pending == 0 and chunker.flush() is None
    assert np.array_equal(chunker.push(np.arange(4, dtype=np.float32))[0], np.arange(4))


def test_large_chunk_yields_many_frames():
    chunker = FrameChunker(1920)
    frames = chunker.push(np.zeros(1920 * 5 + 7, dtype=np.float32))
    assert len(frames) == 5 and chunker.pending == 7


def test_returned_frames_are_not_views_of_the_internal_buffer():
    chunker = FrameChunker(4)
    first = chunker.push(np.ones(4, dtype=np.float32))[0]
    chunker.push(np.full(4, 2.0, dtype=np.float32))
    assert np.array_equal(first, np.ones(4))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="frame_samples"):
        FrameChunker(0)
    with pytest.raises(ValueError, match="n_samples"):
        FrameChunker(4).drop(-1)
    with pytest.raises(ValueError, match="1-D"):
        FrameChunker(4).push(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="float samples"):
        FrameChunker(4).push(np.zeros(4, dtype=np.int16))
