"""PlayoutBuffer: what the device callback gets, clear at once, underruns and the played position."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from client.playout import PlayoutBuffer

RATE = 24_000


def ramp(n: int, start: int = 0) -> np.ndarray:
    """Distinct float32 samples so order and loss are visible: sample k is k / 2**20."""
    return (np.arange(start, start + n) / 2**20).astype(np.float32)


def test_prebuffer_then_samples_in_order_across_ring_wrap():
    buf = PlayoutBuffer(RATE, prebuffer_ms=10, max_ms=20)  # 240-sample prebuffer, 480-sample ring
    buf.push(ramp(200))
    assert not buf.pull(100).any(), "playback must wait for the prebuffer"
    assert buf.underruns == 0, "waiting for the prebuffer is not an underrun"
    buf.push(ramp(200, start=200))
    got = [buf.pull(100)]
    # Keep the producer ahead so the reads cross the ring's end several times.
    for k in range(2, 12):
        buf.push(ramp(100, start=200 + 100 * k))
        got.append(buf.pull(100))
    played = np.concatenate(got)
    np.testing.assert_array_equal(played, ramp(1100))
    assert buf.underruns == 0
    assert buf.played_samples == 1100


def test_int16_and_bytes_are_scaled_to_float():
    buf = PlayoutBuffer(RATE, prebuffer_ms=0, max_ms=100)
    buf.push(np.array([16384, -32768], dtype=np.int16))
    buf.push(np.array([8192], dtype="<i2").tobytes())
    np.testing.assert_allclose(buf.pull(3), [0.5, -1.0, 0.25])


def test_clear_drops_queued_audio_at_once():
    buf = PlayoutBuffer(RATE, prebuffer_ms=0, max_ms=1000)
    buf.push(np.full(4800, 0.5, dtype=np.float32))
    assert buf.pull(480).min() == 0.5
    dropped = buf.clear()
    assert dropped == 4800 - 480
    assert buf.queued_samples == 0
    assert not buf.pull(480).any(), "nothing queued before the clear may be heard after it"
    # Audio pushed after the clear plays normally.
    buf.push(np.full(480, 0.25, dtype=np.float32))
    assert (buf.pull(480) == 0.25).all()
    assert buf.played_samples == 960
    assert buf.stream_position == 4800 + 480, "the stream position skips over the cleared audio"
    assert buf.cleared_samples == 4320


def test_underrun_is_counted_and_padded_with_silence_then_refills():
    buf = PlayoutBuffer(RATE, prebuffer_ms=10, max_ms=100)  # 240-sample prebuffer
    buf.push(np.ones(300, dtype=np.float32))
    first = buf.pull(200)
    assert (first == 1).all()
    short = buf.pull(200)
    assert (short[:100] == 1).all() and not short[100:].any()
    assert buf.underruns == 1
    # After running dry it waits for the prebuffer again rather than stuttering on every packet.
    buf.push(np.ones(100, dtype=np.float32))
    assert not buf.pull(50).any()
    assert buf.underruns == 1, "refilling is not another underrun"
    buf.push(np.ones(200, dtype=np.float32))
    assert (buf.pull(50) == 1).all()
    assert buf.played_samples == 350


def test_played_position_counts_only_heard_samples():
    buf = PlayoutBuffer(RATE, prebuffer_ms=0, max_ms=1000)
    buf.push(np.zeros(2400, dtype=np.float32))  # silence from the server is still played audio
    buf.pull(1200)
    assert buf.played_ms == pytest.approx(50.0)
    buf.pull(2400)  # runs dry: only 1200 more were real audio
    assert buf.played_ms == pytest.approx(100.0)
    assert buf.queued_ms == 0


def test_overflow_trims_oldest_so_latency_stays_bounded():
    buf = PlayoutBuffer(RATE, prebuffer_ms=0, max_ms=50)  # 1200 samples
    buf.push(ramp(1000))
    buf.push(ramp(1000, start=1000))
    assert buf.queued_samples == 1200
    assert buf.trimmed_samples == 800
    np.testing.assert_array_equal(buf.pull(1200), ramp(1200, start=800))
    buf.push(ramp(5000))  # a single push larger than the whole buffer keeps its newest part
    np.testing.assert_array_equal(buf.pull(1200), ramp(1200, start=3800))
    assert buf.stream_position == 7000


def test_bad_input_is_refused_with_a_reason():
    buf = PlayoutBuffer(RATE)
    with pytest.raises(ValueError, match="1-D"):
        buf.push(np.zeros((2, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="even"):
        buf.push(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="max_ms"):
        PlayoutBuffer(RATE, prebuffer_ms=200, max_ms=100)


def test_concurrent_push_pull_and_clear_lose_nothing_unaccounted():
    buf = PlayoutBuffer(RATE, prebuffer_ms=0, max_ms=500)
    pushed = 0
    stop = threading.Event()

    def device():
        out = np.empty(240, dtype=np.float32)
        while not stop.is_set():
            buf.pull(240, out)

    thread = threading.Thread(target=device)
    thread.start()
    try:
        for k in range(2000):
            buf.push(np.ones(97, dtype=np.float32))
            pushed += 97
            if k % 300 == 0:
                buf.clear()
    finally:
        stop.set()
        thread.join()
    accounted = buf.played_samples + buf.cleared_samples + buf.trimmed_samples + buf.queued_samples
    assert accounted == pushed
    assert buf.stream_position + buf.queued_samples == pushed


def test_every_block_handed_to_the_device_reaches_the_listener_prebuffer_clears_and_gaps_included():
    """The echo canceller's reference: exactly what the device got, silence and all, in order."""
    heard: list[np.ndarray] = []
    buf = PlayoutBuffer(RATE, prebuffer_ms=10, max_ms=100, on_pull=lambda block: heard.append(block.copy()))
    out = np.empty(120, dtype=np.float32)
    buf.push(ramp(200))
    given = [buf.pull(120, out).copy()]  # still prebuffering: silence
    buf.push(ramp(200, start=200))
    given += [buf.pull(120, out).copy() for _ in range(2)]
    buf.clear()
    given += [buf.pull(120, out).copy() for _ in range(2)]  # cleared: silence again
    np.testing.assert_array_equal(np.concatenate(heard), np.concatenate(given))
    assert np.concatenate(given).any() and not given[0].any() and not given[-1].any()


@pytest.mark.parametrize("device_rate", [44_100, 48_000])
def test_audio_pushed_at_the_session_rate_plays_at_the_device_rate_with_its_pitch(device_rate):
    """A 440 Hz tone sent at 24 kHz reaches a 44.1 or 48 kHz device as 440 Hz, as long as it was."""
    buf = PlayoutBuffer(device_rate, prebuffer_ms=0, max_ms=2000, input_rate_hz=RATE)
    tone = np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE).astype(np.float32)  # 1 s
    for start in range(0, RATE, 480):  # 20 ms network chunks
        buf.push(tone[start : start + 480])
    played = buf.pull(buf.queued_samples)
    # The resampler works in blocks and holds back up to ~32 ms until more audio comes.
    assert 0 <= device_rate - played.shape[0] <= device_rate * 0.04, "one second stays one second"
    steady = played[device_rate // 10 : -device_rate // 10]
    spectrum = np.abs(np.fft.rfft(steady * np.hanning(steady.shape[0])))
    peak_hz = np.argmax(spectrum) * device_rate / steady.shape[0]
    assert abs(peak_hz - 440) < 3, f"the tone plays at {peak_hz:.1f} Hz"
    assert buf.clear() == 0 and buf.push(tone[:480]) is None
    fresh = buf.queued_samples
    assert fresh <= 480 * device_rate / RATE, "a clear leaves nothing of the old audio in the resampler"
