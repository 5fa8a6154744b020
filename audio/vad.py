"""Voice activity detection: per-frame classifiers (webrtcvad, Silero) + pure turn hysteresis.

The layering follows the sans-I/O style of the rest of the project:

- `TurnHysteresis` is pure logic fed one classifier frame at a time (probability, start sample, length);
  it owns every timing rule (min speech to start, min silence to stop, onset/end bookkeeping).
- `WebRtcClassifier` and `SileroClassifier` turn one fixed-size 16 kHz frame into a speech probability.
- `VadFrontEnd` is the signal half: any-size float32 chunks at the session's rate in, classifier
  frames and the sound trail out (`VadAnalysis`); it may run on another thread than the turns.
- `StreamingVad` is the thin shell: chunks in (or their analyses), events out.

Timestamps are sample positions on the caller's input timeline, so they line up with the audio the
session buffered. Events are emitted late by design (a turn is only confirmed after min_speech_ms, a
stop after min_silence_ms), but the positions they carry point back to the true onset / end.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from audio.frames import FRAME_MS, SAMPLE_RATE_HZ
from audio.pcm import FrameChunker, as_mono_float32, float32_to_pcm16
from audio.resample import SUPPORTED_RATES, StreamResampler

BACKENDS = ("webrtc", "silero")
CLASSIFIER_RATE_HZ = 16000  # both classifiers run at 16 kHz: webrtcvad supports it, Silero is trained on it
WEBRTC_FRAME_SAMPLES = 480  # 30 ms: the cheapest webrtcvad frame, and its most stable decisions
SILERO_FRAME_SAMPLES = 512  # 32 ms: the only chunk size the 16 kHz Silero model accepts
# How far a pause as heard may begin before the classifier's voiced end: webrtc lets go of voice
# 100-120 ms after the sound (tests/data/speech), silero 40-80 ms.
QUIET_LEAD_MS = 100
_SILERO_CONTEXT_SAMPLES = 64  # Silero sees the previous chunk's last 64 samples in front of each chunk


@dataclass
class VadConfig:
    """How speech is detected and how turns are cut.

    backend: "webrtc" (default: ~0.1 ms CPU per 80 ms frame, resampling included) or "silero" (Silero
        VAD ONNX, ~0.6 ms per 80 ms frame, p99 ~1.1 ms: 2-3 model calls per frame). Both meet the
        onset (<100 ms) / end (<250 ms) accuracy on the test speech (tests/data/speech); `assistant bench vad`.
    threshold: Silero speech probability above which a frame counts as voiced (webrtc gives 0 or 1).
    aggressiveness: webrtcvad mode 0 (keeps most audio as speech) .. 3 (most aggressive at rejecting noise).
    min_speech_ms: voiced audio needed (gaps under 100 ms bridged, not counted) to start a turn. The
        default 150 ms ignores clicks and breaths but lets a backchannel like "mm hmm" start a turn.
        Raise it to 1000 to ignore "mm hmm": the test backchannel.wav (730 ms of sound) reads as
        830-900 ms of voice (silero: 830; webrtc: 840 in modes 2-3, 900 in modes 0-1). The cost: any
        utterance with less voice (a "yes", a "Hi there.") no longer starts a turn on its own, and
        speech_started fires that much later after the onset (its `sample` still points at the onset).
    min_silence_ms: unvoiced audio this long after the last voiced frame ends the turn.
    prefix_padding_ms: audio before the onset that belongs to the utterance (the soft start of the first
        consonant sits below the classifiers' threshold); sets VadEvent.audio_start_sample.
    """

    backend: str = "webrtc"
    threshold: float = 0.5
    aggressiveness: int = 2
    min_speech_ms: int = 150
    min_silence_ms: int = 500
    prefix_padding_ms: int = 300

    def __post_init__(self) -> None:
        # Configs arrive as JSON from clients: reject non-numbers here rather than deep in a classifier.
        for name in ("threshold", "aggressiveness", "min_speech_ms", "min_silence_ms", "prefix_padding_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"VAD {name} must be a number, got {value!r}")
        if self.aggressiveness != int(self.aggressiveness):
            raise ValueError(f"webrtc VAD aggressiveness must be 0, 1, 2 or 3, got {self.aggressiveness}")
        self.aggressiveness = int(self.aggressiveness)
        if self.backend not in BACKENDS:
            raise ValueError(f"VAD backend {self.backend!r} is unknown; use one of {BACKENDS}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"VAD threshold must be a probability in (0, 1), got {self.threshold}")
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"webrtc VAD aggressiveness must be 0, 1, 2 or 3, got {self.aggressiveness}")
        for name in ("min_speech_ms", "min_silence_ms", "prefix_padding_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"VAD {name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class VadEvent:
    """A turn boundary.

    type: "speech_started" | "speech_stopped".
    sample: position on the input timeline (at the VAD's input rate): the onset for started; the end of
        speech (last voiced sample + 1) for stopped.
    at_ms: `sample` in milliseconds.
    audio_start_sample: where the utterance's audio starts (onset - prefix padding, clamped at 0), for
        both event types, so a consumer can cut the utterance from its own buffer.
    """

    type: str
    sample: int
    at_ms: float
    audio_start_sample: int


class TurnHysteresis:
    """Pure turn-taking logic over per-frame speech probabilities; no audio, no model.

    Feed frames in order with `update(prob, frame_start_sample, frame_len)`. A frame is voiced when
    prob >= threshold. Outside a turn, voiced frames build a candidate run: gaps shorter than
    max_onset_gap_ms (stop-consonant closures, e.g. the "t" in "What is") do not break it, a longer gap
    discards it. The turn starts once the run holds min_speech of voiced audio (gaps not counted); the
    onset is the start of the run's first voiced frame. Inside a turn, voice of any length cancels a
    pending stop; the turn stops once the audio after the last voiced frame spans min_silence, and the
    end is the end of that last voiced frame.
    """

    def __init__(
        self,
        sample_rate_hz: int,
        min_speech_ms: float = 150,
        min_silence_ms: float = 500,
        prefix_padding_ms: float = 300,
        threshold: float = 0.5,
        max_onset_gap_ms: float = 100,
    ):
        if sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        self.sample_rate_hz = int(sample_rate_hz)
        self.min_speech_samples = round(min_speech_ms * sample_rate_hz / 1000)
        self.min_silence_samples = round(min_silence_ms * sample_rate_hz / 1000)
        self.prefix_padding_samples = round(prefix_padding_ms * sample_rate_hz / 1000)
        self.max_onset_gap_samples = round(max_onset_gap_ms * sample_rate_hz / 1000)
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        self.speaking = False
        self._run_start: int | None = None  # start of the candidate run of voiced frames (idle only)
        self._run_voiced = 0  # voiced samples in the candidate run
        self._onset = 0  # onset of the current / last turn
        self._last_voiced_end = 0  # end of the last voiced frame (of the turn, or of the candidate run)
        self._next_start = 0  # frames must not overlap or go back in time

    @property
    def voiced_end(self) -> int:
        """End of the last voiced frame (inside a turn: where the user's speech so far ends)."""
        return self._last_voiced_end

    def _event(self, kind: str, sample: int) -> VadEvent:
        return VadEvent(
            type=kind,
            sample=sample,
            at_ms=sample * 1000.0 / self.sample_rate_hz,
            audio_start_sample=max(0, self._onset - self.prefix_padding_samples),
        )

    def update(self, prob: float, frame_start_sample: int, frame_len: int) -> list[VadEvent]:
        """Account for one classifier frame; return the event it completes, if any (a list of 0 or 1)."""
        if frame_len <= 0:
            raise ValueError(f"frame_len must be positive, got {frame_len}")
        if frame_start_sample < self._next_start:
            raise ValueError(
                f"frame starting at sample {frame_start_sample} overlaps the previous frame, "
                f"which ended at {self._next_start}; feed frames in order"
            )
        frame_end = frame_start_sample + frame_len
        self._next_start = frame_end
        voiced = prob >= self.threshold
        events: list[VadEvent] = []
        if self.speaking:
            if voiced:
                self._last_voiced_end = frame_end
            elif frame_end - self._last_voiced_end >= self.min_silence_samples:
                self.speaking = False
                events.append(self._event("speech_stopped", self._last_voiced_end))
            return events
        if not voiced:
            if self._run_start is not None and frame_end - self._last_voiced_end > self.max_onset_gap_samples:
                self._run_start = None
            return events
        if self._run_start is None:
            self._run_start = frame_start_sample
            self._run_voiced = 0
        self._run_voiced += frame_len
        self._last_voiced_end = frame_end
        if self._run_voiced >= self.min_speech_samples:
            self.speaking = True
            self._onset = self._run_start
            self._run_start = None
            events.append(self._event("speech_started", self._onset))
        return events


class WebRtcClassifier:
    """webrtcvad (the WebRTC GMM detector): one 30 ms 16 kHz frame -> 0.0 or 1.0."""

    sample_rate_hz = CLASSIFIER_RATE_HZ
    frame_samples = WEBRTC_FRAME_SAMPLES

    def __init__(self, aggressiveness: int = 2):
        self.aggressiveness = aggressiveness
        self.reset()

    def __call__(self, frame: np.ndarray) -> float:
        return 1.0 if self._vad.is_speech(float32_to_pcm16(frame), self.sample_rate_hz) else 0.0

    def reset(self) -> None:
        import webrtcvad

        # A fresh detector: webrtcvad adapts its noise model to what it heard, which belongs to one stream.
        self._vad = webrtcvad.Vad(self.aggressiveness)


def silero_model_path() -> Path:
    # find_spec locates the package without importing it: `import silero_vad` calls
    # torch.set_num_threads(1) for the whole process as a side effect.
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Silero VAD backend needs the 'silero-vad' package: pip install silero-vad")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad_16k_op15.onnx"
    if not path.is_file():
        raise RuntimeError(f"silero-vad is installed but its bundled model {path} is missing; reinstall it")
    return path


@functools.lru_cache(maxsize=1)
def _silero_session():
    """One ONNX session for the process: the recurrent state is an input, so every stream can share it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One thread, on the caller's thread: the server runs many VADs and must not oversubscribe its cores.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(silero_model_path()), options, providers=["CPUExecutionProvider"])


class SileroClassifier:
    """Silero VAD v5 (the package's bundled 16 kHz ONNX model): one 32 ms frame -> speech probability.

    ONNX Runtime rather than the TorchScript model: same probabilities (max diff 4e-5 on the shared
    speech) at about a quarter of the CPU time, and no process-wide torch thread setting.
    """

    sample_rate_hz = CLASSIFIER_RATE_HZ
    frame_samples = SILERO_FRAME_SAMPLES

    def __init__(self):
        self._session = _silero_session()
        self._sr = np.array(self.sample_rate_hz, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._input = np.zeros((1, _SILERO_CONTEXT_SAMPLES + self.frame_samples), dtype=np.float32)

    def __call__(self, frame: np.ndarray) -> float:
        # The input row is [previous 64 samples | this frame]; shift the context in place.
        self._input[0, :_SILERO_CONTEXT_SAMPLES] = self._input[0, -_SILERO_CONTEXT_SAMPLES:]
        self._input[0, _SILERO_CONTEXT_SAMPLES:] = frame
        prob, self._state = self._session.run(
            None, {"input": self._input, "state": self._state, "sr": self._sr}
        )
        return float(prob[0, 0])


class SoundTrail:
    """Where a stream's sound last stood near its speaker's level: the end of the last 10 ms block
    whose energy came within `range_db` of the loudest block heard lately (a peak that falls
    `decay_db_per_s`, so one cough does not set the bar for good) and above `floor_dbfs`.

    The classifiers keep calling frames voiced for a while after the sound has died away (webrtc on
    tests/data/speech: the turn's voiced end 100-120 ms after the last sample above -40 dBFS), so a pause
    measured from here is known that much sooner. Over a noise floor within `range_db` of the speech
    every block counts as sound, and the trail follows the noise: then it is no earlier than the
    classifier's end, and nothing is gained or lost.
    """

    BLOCK_MS = 10

    def __init__(
        self,
        sample_rate_hz: int,
        range_db: float = 30.0,
        floor_dbfs: float = -60.0,
        decay_db_per_s: float = 10.0,
    ):
        self.block = sample_rate_hz * self.BLOCK_MS // 1000
        self.range_db = range_db
        self.floor_dbfs = floor_dbfs
        self.decay_per_block = decay_db_per_s * self.BLOCK_MS / 1000
        self.reset()

    def reset(self) -> None:
        self._carry = np.zeros(0, np.float32)
        self._position = 0  # samples in whole blocks so far
        self._peak = self.floor_dbfs
        self.end = 0  # end of the last block of sound

    def push(self, pcm: np.ndarray) -> None:
        """Float32 mono samples (any length) at the stream's rate."""
        x = np.concatenate([self._carry, pcm]) if self._carry.size else pcm
        n = x.shape[0] // self.block
        self._carry = x[n * self.block :].copy()
        if not n:
            return
        blocks = x[: n * self.block].reshape(n, self.block)
        energies = np.einsum("ij,ij->i", blocks, blocks, dtype=np.float64) / self.block
        for i, energy in enumerate(energies.tolist()):
            level = 10.0 * math.log10(energy + 1e-12)
            self._peak = max(level, self._peak - self.decay_per_block, self.floor_dbfs)
            if level >= max(self._peak - self.range_db, self.floor_dbfs):
                self.end = self._position + (i + 1) * self.block
        self._position += n * self.block


class VadAnalysis(NamedTuple):
    """What a `VadFrontEnd` made of one chunk, for its `StreamingVad.apply`."""

    front: VadFrontEnd  # the front end that made it (a VAD takes only its own front end's)
    samples: int  # input samples in the chunk
    frames: list[tuple[float, int, int]]  # classifier frames completed: (probability, start, length)
    trail_end: int  # SoundTrail.end after the chunk
    cpu_ns: int  # the analysis's CPU time, on the thread that made it


class VadFrontEnd:
    """The signal half of a `StreamingVad`: resampling to 16 kHz, classifier frames and their
    probabilities, and the sound trail. It holds no turn state, so it can run off the thread that
    owns the turns (a server's codec worker, right after decoding the chunk): `analyse` there, then
    `StreamingVad.apply` the result where the turns are kept. One thread at a time, chunks in order;
    a new stream gets a new one (`StreamingVad.reset`)."""

    def __init__(self, config: VadConfig, sample_rate_hz: int):
        self.sample_rate_hz = sample_rate_hz
        if config.backend == "webrtc":
            self._classifier: WebRtcClassifier | SileroClassifier = WebRtcClassifier(config.aggressiveness)
        else:
            self._classifier = SileroClassifier()
        self._resampler = StreamResampler(sample_rate_hz, self._classifier.sample_rate_hz)
        self._chunker = FrameChunker(self._classifier.frame_samples)
        self._trail = SoundTrail(sample_rate_hz)
        self._classified = 0  # classifier-rate samples already classified

    def _to_input_sample(self, classifier_sample: int) -> int:
        return round(classifier_sample * self.sample_rate_hz / self._classifier.sample_rate_hz)

    def analyse(self, pcm: np.ndarray) -> VadAnalysis:
        """Float32 mono samples (1-D, any length, 0 allowed) at sample_rate_hz."""
        pcm = as_mono_float32(pcm)
        t0 = time.thread_time_ns()
        self._trail.push(pcm)
        frames = []
        for frame in self._chunker.push(self._resampler.process(pcm)):
            start = self._to_input_sample(self._classified)
            self._classified += frame.shape[0]
            frames.append((self._classifier(frame), start, self._to_input_sample(self._classified) - start))
        return VadAnalysis(self, pcm.shape[0], frames, self._trail.end, time.thread_time_ns() - t0)


class StreamingVad:
    """Streaming VAD for one audio stream: float32 chunks of any size in, turn events out.

    Audio is resampled to 16 kHz, cut into classifier frames, classified (`front`, a `VadFrontEnd`),
    and the per-frame decisions go through `TurnHysteresis` on the input timeline. Chunk boundaries
    never change the events. `push` does both here; a host that analyses elsewhere hands
    `front.analyse`'s results to `apply`, in order.
    """

    def __init__(self, config: VadConfig | None = None, sample_rate_hz: int = SAMPLE_RATE_HZ):
        if sample_rate_hz not in SUPPORTED_RATES:
            raise ValueError(
                f"VAD sample_rate_hz={sample_rate_hz} is not supported; use one of {SUPPORTED_RATES}"
            )
        self.config = config or VadConfig()
        self.sample_rate_hz = int(sample_rate_hz)
        # webrtc decisions are 0 or 1
        threshold = 0.5 if self.config.backend == "webrtc" else self.config.threshold
        self._quiet_lead = self.sample_rate_hz * QUIET_LEAD_MS // 1000
        self._hysteresis = TurnHysteresis(
            self.sample_rate_hz,
            min_speech_ms=self.config.min_speech_ms,
            min_silence_ms=self.config.min_silence_ms,
            prefix_padding_ms=self.config.prefix_padding_ms,
            threshold=threshold,
        )
        self.reset()

    def reset(self) -> None:
        """Forget everything: a new stream starts at sample 0 (e.g. a slot reused by a new session).
        A new front end too: one handed to another thread may be analysing still, and what it
        makes no longer applies here."""
        self.front = VadFrontEnd(self.config, self.sample_rate_hz)
        self._hysteresis.reset()
        self._position = 0
        self._trail_end = 0
        self._probability = 0.0
        self._cpu_ns = 0

    @property
    def speaking(self) -> bool:
        """True inside a detected turn (between speech_started and speech_stopped)."""
        return self._hysteresis.speaking

    @property
    def position(self) -> int:
        """Input samples pushed so far."""
        return self._position

    @property
    def voiced_end(self) -> int:
        """Input position where the last voiced classifier frame ended: inside a turn, `position`
        minus it is the pause the user is in (the turn ends when it reaches min_silence_ms)."""
        return self._hysteresis.voiced_end

    @property
    def quiet_since(self) -> int:
        """Inside a turn, where the pause the user is in began as a listener hears it: the end of
        their last sound (`SoundTrail`), never after `voiced_end` and at most QUIET_LEAD_MS before
        it (a trail held back by a loud sound earlier, over speech much softer, is not believed
        further: the user is still speaking as far as the classifier hears)."""
        voiced_end = self.voiced_end
        return (
            max(self._trail_end, voiced_end - self._quiet_lead)
            if self._trail_end < voiced_end
            else voiced_end
        )

    @property
    def probability(self) -> float:
        """The last classifier frame's speech probability (0/1 for webrtc), for level meters."""
        return self._probability

    @property
    def cpu_ms_per_frame(self) -> float:
        """Mean CPU time this VAD spent per 80 ms of input so far (the analysing thread's CPU clock)."""
        seconds = self._position / self.sample_rate_hz
        return self._cpu_ns / 1e6 / (seconds * 1000.0 / FRAME_MS) if seconds else 0.0

    def push(self, pcm: np.ndarray) -> list[VadEvent]:
        """Feed float32 mono samples (1-D, any length, 0 allowed) at sample_rate_hz; return events in order."""
        return self.apply(self.front.analyse(pcm))

    def apply(self, analysis: VadAnalysis) -> list[VadEvent]:
        """The next chunk as `front.analyse` made it (on any thread, chunks in order): events in order."""
        if analysis.front is not self.front:
            raise ValueError("a VAD applies only what its own front end analysed")
        self._position += analysis.samples
        self._trail_end = analysis.trail_end
        events: list[VadEvent] = []
        for probability, start, length in analysis.frames:
            self._probability = probability
            events.extend(self._hysteresis.update(probability, start, length))
        self._cpu_ns += analysis.cpu_ns
        return events
