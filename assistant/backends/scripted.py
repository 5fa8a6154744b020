"""The scripted backend: a speaker that replies with a recording when the user ends a turn.

Per slot, a streaming VAD listens to the user. When the user has been quiet for the VAD's
end-of-turn time (its `speech_stopped` event), the slot plays the reply WAV after
`script_delay_ms`, with the reply's words as text pieces, each emitted in the frame where that
word starts being spoken. When the user starts talking again (`speech_started`) the reply is cut
in that very frame and stays cut; the next user turn gets the reply again from the beginning.
No weights, no GPU: it exists so the server, clients and turn-taking can be tested end to end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from assistant.engine import FRAME_SAMPLES, SAMPLE_RATE_HZ, Engine, SlotOptions, StepOutput
from audio.resample import SUPPORTED_RATES, resample
from audio.vad import StreamingVad, VadConfig

DEFAULT_REPLY = Path(__file__).resolve().parents[1] / "data" / "reply.wav"

_ENVELOPE_MS = 10  # energy-envelope window used to find where speech is in the reply
_VOICED_REL_DB = -35.0  # a window is voiced when within this many dB of the loudest window
_MAX_INNER_GAP_MS = 40  # shorter dips (stop consonants) count as voiced, so they do not split words
_MIN_PAUSE_MS = 100  # a longer silence is a pause between phrases, matched to punctuation


@dataclass(frozen=True)
class Reply:
    """A reply ready to play: audio cut into frames and its text pieces aligned to those frames.

    frames: float32 (F, 1920) in [-1, 1], the WAV's samples in order, the last frame zero-padded.
    pieces: F strings, the text piece to emit with each frame ("" for none); they concatenate to `text`.
    """

    text: str
    frames: np.ndarray
    pieces: list[str]
    word_start_samples: list[int] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def voiced_mask(pcm: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """Which `_ENVELOPE_MS` windows of pcm carry speech energy: bool (ceil(n / window),)."""
    window = sample_rate_hz * _ENVELOPE_MS // 1000
    padded = np.zeros(-(-pcm.shape[0] // window) * window, dtype=np.float64)
    padded[: pcm.shape[0]] = pcm
    energy = (padded.reshape(-1, window) ** 2).mean(axis=1)
    if energy.size == 0 or energy.max() <= 0.0:
        return np.zeros(energy.size, dtype=bool)
    voiced = energy > energy.max() * 10.0 ** (_VOICED_REL_DB / 10.0)
    # Fill short dips between voiced windows: they are inside words, not pauses between them.
    max_gap = _MAX_INNER_GAP_MS // _ENVELOPE_MS
    idx = np.flatnonzero(voiced)
    for left, right in zip(idx[:-1], idx[1:], strict=True):
        if 1 < right - left <= max_gap + 1:
            voiced[left:right] = True
    return voiced


def _match_in_order(a: np.ndarray, b: np.ndarray) -> list[int]:
    """For each of the sorted values `a`, a distinct index into sorted `b` (len(b) >= len(a)), kept in
    order and minimising the total distance |a_i - b_j| (a small dynamic programme)."""
    n, m = len(a), len(b)
    cost = np.full((n + 1, m + 1), np.inf)
    cost[0, :] = 0.0
    for i in range(1, n + 1):
        for j in range(i, m + 1):
            cost[i, j] = min(cost[i, j - 1], cost[i - 1, j - 1] + abs(a[i - 1] - b[j - 1]))
    picks, j = [], m
    for i in range(n, 0, -1):
        while cost[i, j] == cost[i, j - 1]:
            j -= 1
        picks.append(j - 1)
        j -= 1
    return picks[::-1]


def estimate_word_starts(pcm: np.ndarray, words: list[str], sample_rate_hz: int) -> list[int]:
    """Estimate the sample where each word starts being spoken.

    Pauses in the audio are matched, in order, to the punctuation in the text that most likely
    caused them; between those anchors, words share the voiced time (pauses removed) in proportion
    to their length. Returns non-decreasing sample indices, one per word.
    """
    if not words:
        return []
    window = sample_rate_hz * _ENVELOPE_MS // 1000
    voiced_windows = np.flatnonzero(voiced_mask(pcm, sample_rate_hz))
    if voiced_windows.size == 0:
        return [0] * len(words)
    weights = np.array([len(w) + 1 for w in words], dtype=np.float64)
    # Voiced windows (as positions in voiced_windows) where speech resumes after a pause.
    resumes = np.flatnonzero(np.diff(voiced_windows) > _MIN_PAUSE_MS // _ENVELOPE_MS) + 1
    # Words that follow punctuation, where a pause is expected.
    after_punct = np.array([k for k in range(1, len(words)) if words[k - 1][-1] in ",.;:!?"], dtype=int)
    expected = np.cumsum(weights)[after_punct - 1] / weights.sum() if after_punct.size else np.zeros(0)
    observed = resumes / voiced_windows.size
    if len(expected) <= len(observed):
        pairs = [
            (int(after_punct[i]), int(resumes[j])) for i, j in enumerate(_match_in_order(expected, observed))
        ]
    else:
        picks = _match_in_order(observed, expected)
        pairs = [(int(after_punct[i]), int(resumes[j])) for j, i in enumerate(picks)]
    anchors = [(0, 0), *pairs, (len(words), voiced_windows.size)]
    starts: list[int] = []
    for (w0, v0), (w1, v1) in zip(anchors[:-1], anchors[1:], strict=True):
        span = weights[w0:w1]
        before = np.concatenate([[0.0], np.cumsum(span)[:-1]]) / span.sum()
        positions = np.minimum(v0 + (before * (v1 - v0)).astype(int), voiced_windows.size - 1)
        starts.extend(int(voiced_windows[p]) * window for p in positions)
    return starts


def pieces_for_frames(words: list[str], starts: list[int], num_frames: int, frame_samples: int) -> list[str]:
    """Group words into per-frame text pieces: each word lands in the frame holding its start sample.

    Every word but the first carries its leading space, so the pieces concatenate to " ".join(words).
    """
    pieces = [""] * num_frames
    for i, (word, start) in enumerate(zip(words, starts, strict=True)):
        frame = min(start // frame_samples, num_frames - 1)
        pieces[frame] += word if i == 0 else " " + word
    return pieces


def load_reply(path: str | Path | None = None) -> Reply:
    """Load a reply WAV (any supported rate, mono or multi-channel) and its text.

    The text comes from the file with the same name and a .txt suffix; a WAV without one replies
    with audio only. path None loads the built-in reply.
    """
    path = Path(path) if path is not None else DEFAULT_REPLY
    if not path.is_file():
        raise FileNotFoundError(f"script reply {path} does not exist; pass a WAV file with --script-reply")
    try:
        pcm, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"script reply {path} is not a readable audio file: {exc}") from exc
    if pcm.shape[0] == 0:
        raise ValueError(f"script reply {path} is empty")
    if rate not in SUPPORTED_RATES:
        raise ValueError(f"script reply {path} is {rate} Hz; use one of {SUPPORTED_RATES} (24000 preferred)")
    pcm = resample(pcm.mean(axis=1), rate, SAMPLE_RATE_HZ)
    pcm = np.clip(pcm, -1.0, 1.0)
    num_frames = -(-pcm.shape[0] // FRAME_SAMPLES)
    frames = np.zeros((num_frames, FRAME_SAMPLES), dtype=np.float32)
    frames.reshape(-1)[: pcm.shape[0]] = pcm
    text_path = path.with_suffix(".txt")
    words = text_path.read_text(encoding="utf-8").split() if text_path.is_file() else []
    starts = estimate_word_starts(pcm, words, SAMPLE_RATE_HZ)
    return Reply(
        text=" ".join(words),
        frames=frames,
        pieces=pieces_for_frames(words, starts, num_frames, FRAME_SAMPLES),
        word_start_samples=starts,
    )


def _vad_config(vad: VadConfig | dict | None) -> VadConfig:
    if vad is None:
        return VadConfig()
    if isinstance(vad, VadConfig):
        return vad
    if isinstance(vad, dict):
        try:
            return VadConfig(**vad)
        except TypeError as exc:
            raise ValueError(f"bad vad options {vad}: {exc}") from exc
    raise TypeError(f"vad must be a VadConfig, a dict or None, got {type(vad).__name__}")


@dataclass
class _SlotState:
    """One conversation's turn-taking state, in input samples since the slot opened."""

    vad: StreamingVad
    samples_in: int = 0
    reply_at_sample: int | None = None  # a reply is due once the input reaches this sample
    reply_frame: int | None = None  # the next reply frame to play; None when not speaking


class ScriptedEngine(Engine):
    """Replies with a fixed recording after each user turn and stops when interrupted.

    Options: script_reply (WAV path; default the built-in reply), script_delay_ms (pause between
    the end of the user's turn and the reply, default 0), vad (VadConfig or dict of its fields).
    force_silence(slot, True) cuts any reply in progress, like a barge-in; a reply that became due
    while silenced starts when the silence is lifted, unless the user speaks again first.
    """

    name = "scripted"

    def __init__(
        self,
        batch_size: int,
        *,
        script_reply: str | Path | None = None,
        script_delay_ms: float = 0.0,
        vad: VadConfig | dict | None = None,
    ):
        super().__init__(batch_size)
        if not np.isfinite(script_delay_ms) or script_delay_ms < 0:
            raise ValueError(f"script_delay_ms must be a finite number >= 0, got {script_delay_ms}")
        self.reply = load_reply(script_reply)
        self.model_name = str(Path(script_reply).name if script_reply is not None else "builtin-reply")
        self.script_delay_ms = float(script_delay_ms)
        self.vad_config = _vad_config(vad)
        self._delay_samples = round(self.script_delay_ms * self.sample_rate_hz / 1000)
        self._min_silence_samples = round(self.vad_config.min_silence_ms * self.sample_rate_hz / 1000)
        self._slots = [self._new_state() for _ in range(batch_size)]

    def _new_state(self) -> _SlotState:
        return _SlotState(vad=StreamingVad(self.vad_config, sample_rate_hz=self.sample_rate_hz))

    def _reset_slot(self, slot: int, options: SlotOptions) -> None:
        self._slots[slot] = self._new_state()

    def _step(self, pcm_in: np.ndarray) -> StepOutput:
        pcm_out = np.zeros((self.batch_size, self.frame_samples), dtype=np.float32)
        text = [""] * self.batch_size
        speaking = np.zeros(self.batch_size, dtype=bool)
        for b in np.flatnonzero(self.live & ~self.held):  # a held slot hears nothing yet
            state = self._slots[b]
            events = state.vad.push(pcm_in[b])
            state.samples_in += self.frame_samples
            for event in events:
                if event.type == "speech_started":
                    state.reply_at_sample = state.reply_frame = None
                elif event.type == "speech_stopped":
                    # The event points back at the end of speech; the turn ended once the silence
                    # after it reached min_silence, which is when the delay starts counting.
                    turn_end = min(state.samples_in, event.sample + self._min_silence_samples)
                    state.reply_at_sample = turn_end + self._delay_samples
                    state.reply_frame = None
            if self.silenced[b]:
                # Silence cuts what is being said; a reply the user is waiting for stays due and
                # starts once speaking is allowed again (manual turns: `response.create`).
                state.reply_frame = None
                continue
            # This frame is played once its input has arrived, so a reply due by the end of the
            # input frame starts in this output frame: with no delay, the frame that ended the turn.
            if state.reply_at_sample is not None and state.samples_in >= state.reply_at_sample:
                state.reply_at_sample, state.reply_frame = None, 0
            if state.reply_frame is not None:
                pcm_out[b] = self.reply.frames[state.reply_frame]
                text[b] = self.reply.pieces[state.reply_frame]
                speaking[b] = True
                state.reply_frame += 1
                if state.reply_frame == self.reply.num_frames:
                    state.reply_frame = None
        return StepOutput(pcm_out=pcm_out, text=text, speaking=speaking)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "script_delay_ms": self.script_delay_ms,
            "reply_seconds": self.reply.num_frames * self.frame_samples / self.sample_rate_hz,
        }
