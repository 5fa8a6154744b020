"""The echo canceller (audio/echo.py) and the simulated room (bench/room.py) on synthetic voices.

Two made-up talkers (harmonic voices with syllable envelopes, 120 and 210 Hz): the far end plays
through a simulated room into the mic, the near end talks into it directly. The canceller gets
exactly what was played, block by block as `assistant talk` hands it over (bench/room.py
`run_through_room`).
"""

from __future__ import annotations

import numpy as np
import pytest

from audio.echo import EchoCanceller
from audio.resample import resample
from bench.room import RoomConfig, SimulatedRoom, erle_db, run_through_room, speech_level_db

ERLE_FLOOR_DB = 25.0


def voice(rate: int, seconds: float, f0_hz: float, seed: int) -> np.ndarray:
    """A speech-like float32 (n,): harmonics of a wavering f0, in 150-400 ms syllables with gaps."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = f0_hz * (1 + 0.08 * np.sin(2 * np.pi * 3.1 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 20) if k * f0_hz < rate / 2.2)
    envelope = np.zeros(n)
    at = 0
    while at < n:
        length = int(rng.uniform(0.15, 0.4) * rate)
        envelope[at : at + length] = np.hanning(length)[: n - at] * rng.uniform(0.5, 1.0)
        at += length + int(rng.uniform(0.03, 0.25) * rate)
    return (0.25 * harmonics * envelope).astype(np.float32)


def envelope_correlation(x: np.ndarray, y: np.ndarray, rate: int) -> float:
    """Correlation of the 20 ms loudness envelopes of x and y: 1 when x follows y's syllables.

    Envelopes, not waveforms: the canceller's high-pass filter shifts the phase of low harmonics,
    and its few ms of delay vanish in a 20 ms window."""
    window = rate // 50
    n = min(x.shape[0], y.shape[0]) // window
    ex, ey = (
        np.sqrt(np.mean(v[: n * window].astype(np.float64).reshape(n, window) ** 2, axis=1)) for v in (x, y)
    )
    return float(np.corrcoef(ex, ey)[0, 1])


def through_room(
    rate: int, far: np.ndarray, near: np.ndarray, config: RoomConfig, told_delay_ms: float = 0.0
):
    canceller = EchoCanceller(rate, delay_ms=told_delay_ms)
    return run_through_room(canceller, SimulatedRoom(rate, config), far, near, rate // 50)


def test_the_room_is_streaming_and_the_echo_arrives_after_its_delay():
    rate = 16000
    far = voice(rate, 2.0, 120, seed=1)
    near = np.zeros_like(far)
    config = RoomConfig(delay_ms=80.0, noise_dbfs=-200.0)
    whole_mic, whole_echo = SimulatedRoom(rate, config).capture(near, far)
    room = SimulatedRoom(rate, config)
    blocks = [room.capture(near[i : i + 333], far[i : i + 333]) for i in range(0, far.shape[0], 333)]
    np.testing.assert_allclose(np.concatenate([m for m, _ in blocks]), whole_mic, atol=1e-6)
    delay = int(0.080 * rate)
    assert not whole_echo[: delay - rate // 1000].any(), "nothing reaches the mic before the delay"
    lags = [np.dot(whole_echo[lag:], far[: far.shape[0] - lag]) for lag in range(0, 2 * delay)]
    assert int(np.argmax(lags)) == delay, "the direct sound is the strongest part of the echo"
    level_db = 10 * np.log10(np.mean(whole_echo**2) / np.mean(far**2))
    assert -12.0 < level_db < -3.0, "a loud echo: -6 dB direct sound, reflections, the highs lost"


@pytest.mark.parametrize(("rate", "delay_ms"), [(16000, 40.0), (24000, 80.0), (48000, 120.0)])
def test_echo_is_removed_after_convergence(rate, delay_ms):
    far = voice(rate, 8.0, 120, seed=2)
    near = np.zeros_like(far)
    run = through_room(rate, far, near, RoomConfig(delay_ms=delay_ms))
    erle = erle_db(run.mic, run.cleaned, run.echo, near, rate, settle_s=3.0)
    print(
        f"\n{rate} Hz, echo {delay_ms:.0f} ms late: ERLE {erle:.1f} dB, {run.cpu_ms_per_10ms:.3f} ms CPU per 10 ms"
    )
    assert erle >= ERLE_FLOOR_DB
    raw = erle_db(run.mic, run.mic, run.echo, near, rate)
    assert raw == 0.0, "the score is 0 dB for a mic sent as it is"


def test_double_talk_keeps_the_near_end_and_still_removes_the_echo():
    rate = 24000
    far = voice(rate, 10.0, 120, seed=3)
    near = np.zeros_like(far)
    near[5 * rate :] = voice(rate, 5.0, 210, seed=4)  # the user talks over the assistant
    run = through_room(rate, far, near, RoomConfig(delay_ms=80.0))
    talk = slice(5 * rate, 10 * rate)
    level = speech_level_db(run.cleaned[talk], near[talk], rate)
    kept = through_share(run.cleaned[talk], near[talk], rate)
    echo_before, echo_after = (
        envelope_correlation(x[talk], run.echo[talk], rate) for x in (run.mic, run.cleaned)
    )
    print(
        f"\ndouble talk: near end at {level:.1f} dB, {kept:.0%} of its syllable windows within 10 dB; "
        f"the sent audio follows the echo {echo_before:.2f} -> {echo_after:.2f}"
    )
    assert level > -6.0, "the near-end talker is not suppressed while the far end plays"
    assert kept > 0.6, "most of what the near end says comes through"
    assert echo_after < 0.2 < echo_before, "while the echo, which the mic held, does not"


def through_share(cleaned: np.ndarray, speech: np.ndarray, rate: int) -> float:
    """Share of the speech's loud 20 ms windows (within 20 dB of its peak) sent within 10 dB of their level."""
    window = rate // 50
    n = min(cleaned.shape[0], speech.shape[0]) // window
    e_out, e_in = (
        10 * np.log10(np.mean(x[: n * window].astype(np.float64).reshape(n, window) ** 2, axis=1) + 1e-12)
        for x in (cleaned, speech)
    )
    loud = e_in > e_in.max() - 20
    return float(np.mean(e_out[loud] > e_in[loud] - 10))


def test_a_told_delay_reaches_past_what_the_canceller_finds_alone():
    """Bluetooth-like 700 ms: AEC3 alone searches about half a second; `--echo-delay-ms` holds the
    reference back so the echo falls inside that range again."""
    rate = 16000
    far = voice(rate, 8.0, 120, seed=7)
    near = np.zeros_like(far)
    config = RoomConfig(delay_ms=700.0)
    alone = erle_db(*_scored(through_room(rate, far, near, config)), near, rate)
    told = erle_db(*_scored(through_room(rate, far, near, config, told_delay_ms=720.0)), near, rate)
    print(f"\n700 ms echo: ERLE {alone:.1f} dB found alone, {told:.1f} dB with the delay told")
    assert alone < 10.0 and told >= ERLE_FLOOR_DB


def _scored(run):
    return run.mic, run.cleaned, run.echo


@pytest.mark.parametrize(("rate", "block"), [(44100, 1102), (48000, 1200)])
def test_odd_blocks_lose_and_invent_no_samples(rate, block):
    canceller = EchoCanceller(rate)
    total = 0
    for _ in range(20):
        canceller.played(np.zeros(block, np.float32))
        total += canceller.process(np.full(block, 0.01, np.float32)).shape[0]
    frame = rate // 100
    assert total == 20 * block // frame * frame, "whole 10 ms frames come out, the rest waits"


def test_reference_waiting_for_a_stalled_mic_is_bounded():
    canceller = EchoCanceller(16000)
    for _ in range(200):  # 2 s of playback and no mic block
        canceller.played(np.zeros(160, np.float32))
    assert canceller.dropped_reference_samples == 16000, "only the last second is kept"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="not supported"):
        EchoCanceller(22050)
    with pytest.raises(ValueError, match="delay_ms"):
        EchoCanceller(16000, delay_ms=-5)


def test_a_speaker_at_another_rate_than_the_mic_is_cancelled_too():
    """A 48 kHz headset output beside a 44.1 kHz mic: the reference comes at 48 kHz, the echo at 44.1."""
    mic_rate, speaker_rate = 44100, 48000
    played = voice(speaker_rate, 8.0, 120, seed=5)
    in_the_air = resample(played, speaker_rate, mic_rate)  # what the mic hears of it
    room = SimulatedRoom(mic_rate, RoomConfig(delay_ms=80.0))
    canceller = EchoCanceller(mic_rate, reference_rate_hz=speaker_rate)
    mic_block, speaker_block = mic_rate // 50, speaker_rate // 50
    near = np.zeros_like(in_the_air)
    n = in_the_air.shape[0] // mic_block
    mic, echo, cleaned = [], [], []
    for k in range(n):
        canceller.played(played[k * speaker_block : (k + 1) * speaker_block])
        block_mic, block_echo = room.capture(
            near[:mic_block], in_the_air[k * mic_block : (k + 1) * mic_block]
        )
        mic.append(block_mic)
        echo.append(block_echo)
        cleaned.append(canceller.process(block_mic))
    mic, echo = np.concatenate(mic), np.concatenate(echo)
    out = np.zeros_like(mic)
    got = np.concatenate(cleaned)
    out[: got.shape[0]] = got
    erle = erle_db(mic, out, echo, near[: mic.shape[0]], mic_rate, settle_s=3.0)
    print(f"\nmic {mic_rate} Hz, speaker {speaker_rate} Hz: ERLE {erle:.1f} dB")
    assert erle >= ERLE_FLOOR_DB
