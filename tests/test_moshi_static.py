"""Static shapes for the Moshi step: batch buckets over compacted rows, and the compiled step.

A random tiny Moshi + Mimi on CPU. What a user would notice: a conversation's audio and text do
not depend on who else is connected, when they join or leave (rows move under it), or whether
the step is compiled.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from assistant.backends.moshi import MoshiEngine
from assistant.engine import SlotOptions
from assistant.moshi.graphs import BUCKETS, StepRunner, bucket_for, buckets_for, compile_mode, topk_width
from assistant.moshi.random_models import random_loaded
from audio.frames import FRAME_SAMPLES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def loaded():
    return random_loaded("tiny", torch.device("cpu"), torch.float32)


def user_audio(frames: int, seed: int) -> np.ndarray:
    """Noisy tones: float32 (frames, 1920), different per seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames * FRAME_SAMPLES) / 24_000
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(t.size)
    return x.astype(np.float32).reshape(frames, FRAME_SAMPLES)


GREEDY = {"temperature": 0.0, "text_temperature": 0.0}
# slot -> (first frame, last frame + 1, options); slot 1 hosts two callers one after the other.
SCHEDULE = [
    (0, 0, 9, SlotOptions(seed=10, **GREEDY)),
    (3, 1, 12, SlotOptions(seed=11)),
    (1, 2, 6, SlotOptions(seed=12)),
    (4, 2, 10, SlotOptions(seed=13, **GREEDY)),
    (1, 7, 12, SlotOptions(seed=14, top_k=40)),
    (2, 4, 11, SlotOptions(seed=15)),
]
FRAMES = 12
# Two slots, three callers: slot 0's caller leaves first, so slot 1's row moves to row 0.
SHORT_SCHEDULE = [
    (0, 0, 4, SlotOptions(seed=20)),
    (1, 1, 7, SlotOptions(seed=21, **GREEDY)),
    (0, 5, 8, SlotOptions(seed=22)),
]


def run_schedule(
    engine: MoshiEngine, audio: list[np.ndarray], buckets_seen: list[int] | None = None, schedule=SCHEDULE
):
    """Drive `engine` through `schedule`; return each caller's (pcm (T, 1920), texts)."""
    got = {i: ([], []) for i in range(len(schedule))}
    for t in range(max(stop for _, _, stop, _ in schedule)):
        for slot, _, stop, _ in schedule:
            if t == stop:
                engine.close(slot)
        for slot, start, _, options in schedule:
            if t == start:
                engine.open(slot, options)
        pcm_in = np.zeros((engine.batch_size, FRAME_SAMPLES), np.float32)
        active = [
            (i, slot, t - start) for i, (slot, start, stop, _) in enumerate(schedule) if start <= t < stop
        ]
        for i, slot, frame in active:
            pcm_in[slot] = audio[i][frame]
        if buckets_seen is not None:
            buckets_seen.append(bucket_for(len(active), engine.runner.buckets))
        out = engine.step(pcm_in)
        for i, slot, _ in active:
            got[i][0].append(out.pcm_out[slot].copy())
            got[i][1].append(out.text[slot])
    for slot in np.flatnonzero(engine.live):
        engine.close(int(slot))
    return {i: (np.stack(pcm), text) for i, (pcm, text) in got.items()}


def test_buckets_are_the_smallest_that_hold_the_live_rows():
    assert buckets_for(64) == list(BUCKETS)
    assert buckets_for(20) == [1, 2, 4, 8, 16, 20]
    assert buckets_for(1) == [1]
    assert [bucket_for(n, buckets_for(20)) for n in (1, 2, 3, 5, 16, 17, 20)] == [1, 2, 4, 8, 16, 20, 20]
    with pytest.raises(ValueError, match="exceed"):
        bucket_for(21, buckets_for(20))
    with pytest.raises(ValueError, match="max_rows"):
        buckets_for(0)
    assert [topk_width(k, 2048) for k in (1, 25, 250, 256, 257, 5000)] == [1, 32, 256, 256, 512, 2048]


def test_compile_switch_flag_and_env(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("ASSISTANT_COMPILE", raising=False)
    monkeypatch.delenv("ASSISTANT_COMPILE_BACKEND", raising=False)
    assert compile_mode(None, cpu) == "eager" and compile_mode(None, cuda) == "cuda-graphs"
    assert compile_mode(False, cuda) == "eager" and compile_mode(True, cpu) == "torch-compile"
    monkeypatch.setenv("ASSISTANT_COMPILE", "0")
    assert compile_mode(None, cuda) == "eager"
    assert compile_mode(True, cuda) == "cuda-graphs"  # the flag wins over the environment
    monkeypatch.setenv("ASSISTANT_COMPILE", "1")
    assert compile_mode(None, cpu) == "torch-compile"
    monkeypatch.setenv("ASSISTANT_COMPILE_BACKEND", "inductor")
    assert compile_mode(None, cuda) == "torch-compile"
    monkeypatch.setenv("ASSISTANT_COMPILE", "maybe")
    with pytest.raises(ValueError, match="ASSISTANT_COMPILE"):
        compile_mode(None, cpu)


def test_cuda_graphs_are_refused_off_cuda(loaded):
    engine = MoshiEngine.from_loaded(loaded, batch_size=2, compile=False)
    with pytest.raises(ValueError, match="CUDA"):
        StepRunner(engine.lm, engine.codec, "cuda-graphs")


def test_callers_joining_and_leaving_hear_what_they_would_alone(loaded):
    """Six callers over five slots: rows are compacted as callers leave, the bucket goes
    through 1, 2, 4 and 5 (the engine's size).

    Every caller's audio and text equal a run of that caller alone (greedy and seeded sampling).
    """
    audio = [user_audio(FRAMES, seed) for seed in range(len(SCHEDULE))]
    engine = MoshiEngine.from_loaded(loaded, batch_size=5, compile=False)
    assert engine.runner.buckets == [1, 2, 4, 5]
    seen: list[int] = []
    got = run_schedule(engine, audio, seen)
    assert {1, 2, 4, 5} <= set(seen)
    assert not engine.live.any() and not engine._slot_at

    solo = MoshiEngine.from_loaded(loaded, batch_size=1, compile=False)
    for i, (_, start, stop, options) in enumerate(SCHEDULE):
        solo.open(0, options)
        outs = [solo.step(frame[None]) for frame in audio[i][: stop - start]]
        solo.close(0)
        assert got[i][1] == [o.text[0] for o in outs], i
        np.testing.assert_allclose(
            got[i][0], np.stack([o.pcm_out[0] for o in outs]), atol=1e-4, err_msg=str(i)
        )
    # Not trivially equal: the callers say different things, and they do speak.
    assert not np.allclose(got[0][0][:8], got[3][0][:8], atol=1e-3)
    assert all(np.abs(pcm[2:]).max() > 1e-3 for pcm, _ in got.values())


def test_a_closed_slot_moves_the_last_row_into_its_hole(loaded):
    engine = MoshiEngine.from_loaded(loaded, batch_size=4, compile=False)
    for slot in (2, 0, 3):
        engine.open(slot, SlotOptions(seed=slot))
    assert [engine.row_of(s) for s in (2, 0, 3)] == [0, 1, 2]
    engine.step(np.stack([user_audio(1, s)[0] for s in range(4)]))
    before = engine.lm.tokens[2].clone(), engine.codec.frames_encoded[2]
    engine.close(2)
    assert engine.row_of(2) is None and engine.row_of(3) == 0 and engine.row_of(0) == 1
    assert torch.equal(engine.lm.tokens[0], before[0]) and engine.codec.frames_encoded[0] == before[1]
    assert engine.codec.frames_encoded[2] == 0 and engine.lm.offsets[2] == 0  # the freed row is clean
    with pytest.raises(RuntimeError, match="already open"):
        engine.open(0)
    with pytest.raises(ValueError, match="temperature"):
        engine.open(1, SlotOptions(temperature=-1.0))
    assert engine.row_of(1) is None and not engine.live[1]  # a refused open leaves no row behind
    engine.open(1)
    assert engine.row_of(1) == 2


def test_no_session_no_model_work(loaded):
    engine = MoshiEngine.from_loaded(loaded, batch_size=2, compile=False)
    out = engine.step(np.ones((2, FRAME_SAMPLES), np.float32) * 0.1)
    assert not out.pcm_out.any() and out.text == ["", ""] and set(out.timings_ms) == {"total_ms"}
    assert engine.codec.frames_encoded.sum() == 0


def test_compiled_step_has_no_graph_breaks_and_gives_identical_outputs(loaded, monkeypatch):
    """torch.compile(fullgraph=True) of the whole bucketed frame step, Mimi included (backend "eager":
    the tracing, not codegen). fullgraph=True raises on any graph break; one graph per (bucket, part)
    and none added while stepping proves shapes are static.
    """
    from torch._dynamo.utils import counters

    audio = [user_audio(FRAMES, seed) for seed in range(len(SHORT_SCHEDULE))]
    eager = run_schedule(
        MoshiEngine.from_loaded(loaded, batch_size=2, compile=False), audio, schedule=SHORT_SCHEDULE
    )
    monkeypatch.setenv("ASSISTANT_COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    engine = MoshiEngine.from_loaded(loaded, batch_size=2, compile=True)
    assert engine.describe()["step_mode"] == "torch-compile"
    # encode, temporal, depth, decode: one graph each per bucket
    assert counters["stats"]["unique_graphs"] == 4 * len(engine.runner.buckets)
    compiled = run_schedule(engine, audio, schedule=SHORT_SCHEDULE)
    assert counters["stats"]["unique_graphs"] == 4 * len(
        engine.runner.buckets
    )  # nothing compiled on the clock
    assert not counters["graph_break"]
    for i in eager:
        assert compiled[i][1] == eager[i][1], i
        # same tokens; the audio differs only by float rounding: the compiled step decodes the bucket's
        # rows as one batch where the eager codec call gathers the rows it feeds
        np.testing.assert_allclose(compiled[i][0], eager[i][0], rtol=0, atol=2e-5)
    assert np.abs(compiled[1][0][2:]).max() > 1e-3


def test_bench_server_runs_the_moshi_backend():
    """`assistant bench server --backend moshi --model tiny` measures through a real server process."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "assistant",
            "bench",
            "server",
            "--backend",
            "moshi",
            "--model",
            "tiny",
            "--device",
            "cpu",
            "--sessions",
            "1",
            "--seconds",
            "1.5",
            "--warmup",
            "0.5",
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "backend moshi (tiny, cpu)" in out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if re.match(r"\s+1\s+\d", line)]
    assert len(rows) == 1 and re.fullmatch(r"[\d.]+/[\d.]+", rows[0][5])  # engine step p50/p99 ms
    # The client got about one frame of reply audio per tick the server ran (a busy CPU makes a CPU
    # Moshi skip some: 80 ms ticks over the 1.5 s measured, less those skipped).
    skipped, received = float(rows[0][-2]), float(rows[0][-1])
    served = 1 - skipped / (1.5 * 12.5)
    assert served > 0.2 and 0.8 <= received / served <= 1.2, out.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "assistant", "bench", "server", "--quantize", "int8"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "only --backend moshi takes --quantize" in refused.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replay_equals_the_eager_step_on_cuda():
    """On a GPU: every bucket captured at start-up; replays give what eager kernels give, no eager fallback."""
    loaded = random_loaded("tiny", torch.device("cuda"), torch.float32)
    audio = [user_audio(FRAMES, seed) for seed in range(len(SCHEDULE))]
    eager = run_schedule(MoshiEngine.from_loaded(loaded, batch_size=5, compile=False), audio)
    engine = MoshiEngine.from_loaded(loaded, batch_size=5, compile=True)
    assert engine.describe()["step_mode"] == "cuda-graphs"
    assert len(engine.runner._graphs) == len(engine.runner.buckets)
    graphed = run_schedule(engine, audio)
    assert engine.runner.eager_fallbacks == 0
    for i in eager:
        assert graphed[i][1] == eager[i][1], i
        np.testing.assert_allclose(graphed[i][0], eager[i][0], rtol=0, atol=2e-5)


def test_a_failed_warm_up_falls_back_to_the_eager_step(loaded, monkeypatch, caplog):
    """A capture the device cannot do must not keep the server from starting: it serves eagerly, logged."""
    from assistant.moshi import graphs

    def broken(self, keys, progress=None):
        raise RuntimeError("capture not supported here")

    monkeypatch.setenv("ASSISTANT_COMPILE_BACKEND", "eager")
    monkeypatch.setattr(graphs.StepRunner, "warm_up", broken)
    engine = MoshiEngine.from_loaded(loaded, batch_size=2, compile=True)
    assert engine.runner.mode == "eager" and "warm-up failed" in caplog.text
    engine.open(0, SlotOptions(seed=1))
    outs = [engine.step(np.stack([frame, np.zeros_like(frame)])) for frame in user_audio(4, seed=3)]
    assert np.abs(np.stack([o.pcm_out[0] for o in outs[1:]])).max() > 1e-3


def test_static_mimi_equals_the_codecs_masked_calls(loaded):
    """StaticMimi on rows [0, 2) of 3: same codes and audio as the codec's own calls; a row not `ready`
    is left fresh, exactly as when the codec's mask skips it."""
    from assistant.moshi.graphs import StaticMimi
    from audio.mimi.codec import StreamingMimi

    reference = StreamingMimi.from_model(loaded.mimi, batch_size=3)
    static = StaticMimi(StreamingMimi.from_model(loaded.mimi, batch_size=3))
    audio = np.stack([user_audio(5, seed) for seed in (1, 2)], axis=1)  # (frames, 2, 1920)
    rows = torch.tensor([True, True, False])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t, frame in enumerate(audio):
            expected_codes = reference.encode(
                np.concatenate([frame, np.zeros((1, FRAME_SAMPLES), np.float32)]), mask=rows
            )[:2]
            codes = static.encode(2, torch.from_numpy(frame))
            assert torch.equal(codes, expected_codes), t
            ready = torch.tensor([True, t >= 2])  # row 1 starts decoding two frames late
            feed = torch.randint(0, 2048, (2, 8), generator=gen)
            expected = reference.decode(
                torch.cat([feed, torch.zeros(1, 8, dtype=torch.long)]),
                mask=torch.cat([ready, torch.tensor([False])]),
            )[:2]
            got = static.decode(2, feed, ready)
            torch.testing.assert_close(got[ready], expected[ready], rtol=0, atol=2e-5)
    assert np.abs(expected[1].numpy()).max() > 1e-3


def test_random_models_are_the_same_whatever_ran_before():
    # Tests and benchmarks share a process: a random model must not depend on the global RNG.
    def weights() -> list[torch.Tensor]:
        m = random_loaded("tiny", torch.device("cpu"), torch.float32)
        return [p.detach().clone() for p in (*m.mimi.parameters(), *m.model.parameters())]

    torch.manual_seed(1)
    first = weights()
    torch.manual_seed(2)
    torch.randn(1000)
    second = weights()
    assert len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
