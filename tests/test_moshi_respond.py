"""`assistant respond` end to end on a tiny Kyutai-layout checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from moshi_fixtures import random_moshi, tiny_kyutai_kwargs, train_tiny_spm, write_kyutai_checkpoint

from assistant.cli import main
from audio.frames import FRAME_SAMPLES
from audio.resample import resample

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def kyutai_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("respond")
    kwargs = tiny_kyutai_kwargs()
    return write_kyutai_checkpoint(
        root / "kyutai", random_moshi(kwargs, seed=6), kwargs, train_tiny_spm(root / "spm")
    )


def test_respond_writes_aligned_stereo_reply_and_text(kyutai_dir, tmp_path, capsys):
    rate = 16_000
    t = np.arange(int(0.5 * rate)) / rate
    user = (0.4 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    wav = tmp_path / "user.wav"
    sf.write(wav, user, rate)
    args = [
        "respond",
        "--model",
        str(kyutai_dir),
        "--input",
        str(wav),
        "--tail-seconds",
        "0.3",
        "--seed",
        "5",
        "--device",
        "cpu",
    ]
    assert (
        main(
            args + ["--output", str(tmp_path / "a.wav"), "--text-output", str(tmp_path / "a.txt"), "--stereo"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "real-time factor" in printed
    assert main(args + ["--output", str(tmp_path / "b.wav")]) == 0

    stereo, out_rate = sf.read(tmp_path / "a.wav", dtype="float32")
    mono, _ = sf.read(tmp_path / "b.wav", dtype="float32")
    frames = int(np.ceil(0.5 * 24_000 / FRAME_SAMPLES)) + int(np.ceil(0.3 * 24_000 / FRAME_SAMPLES))
    assert (
        out_rate == 24_000
        and stereo.shape == (frames * FRAME_SAMPLES, 2)
        and mono.shape == (frames * FRAME_SAMPLES,)
    )
    # Left is the user resampled to 24 kHz, right the assistant: same seed, same reply as the mono run.
    expected_user = resample(user, rate, 24_000)
    np.testing.assert_allclose(stereo[: expected_user.size, 0], expected_user, atol=1e-4)
    np.testing.assert_allclose(stereo[:, 1], mono, atol=1e-4)
    assert not mono[:FRAME_SAMPLES].any()  # frame 0: the acoustic delay, nothing complete yet
    assert np.abs(mono[FRAME_SAMPLES:]).max() > 1e-3
    text = (tmp_path / "a.txt").read_text().strip()
    assert f"text: {text}" in printed and "\u2581" not in text


def test_respond_temperature_zero_is_greedy(kyutai_dir, tmp_path):
    wav = tmp_path / "user.wav"
    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal(9600)).astype(np.float32), 24_000)
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"greedy{seed}.wav"
        assert (
            main(
                [
                    "respond",
                    "--model",
                    str(kyutai_dir),
                    "--input",
                    str(wav),
                    "--output",
                    str(out),
                    "--temperature",
                    "0",
                    "--seed",
                    seed,
                    "--tail-seconds",
                    "0.2",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        outs.append(sf.read(out, dtype="float32")[0])
    np.testing.assert_array_equal(outs[0], outs[1])


def test_respond_reports_bad_input(kyutai_dir, tmp_path, capsys):
    code = main(
        [
            "respond",
            "--model",
            str(kyutai_dir),
            "--input",
            str(tmp_path / "missing.wav"),
            "--output",
            str(tmp_path / "o.wav"),
        ]
    )
    assert code == 2 and "missing.wav does not exist" in capsys.readouterr().err
    wav = tmp_path / "u.wav"
    sf.write(wav, np.zeros(2400, np.float32), 24_000)
    code = main(
        [
            "respond",
            "--model",
            str(tmp_path / "nowhere"),
            "--input",
            str(wav),
            "--output",
            str(tmp_path / "o.wav"),
            "--device",
            "cpu",
        ]
    )
    assert code == 2 and "nowhere" in capsys.readouterr().err
