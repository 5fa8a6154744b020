"""Speech segments of a whole recording, as FDB cuts them: Silero VAD's speech timestamps at 16 kHz.

The probabilities come from the project's own Silero classifier (audio/vad.py: the model the
silero-vad package ships, one shared ONNX session); the cutting into segments is silero-vad's
`get_speech_timestamps` with its defaults, which is what FDB runs, so segment edges match theirs.
"""

from __future__ import annotations

import functools

import numpy as np

from audio.vad import CLASSIFIER_RATE_HZ, SileroClassifier

FDB_RESOLUTION_DECIMALS = 1  # FDB asks Silero for seconds, which it rounds to 0.1 s


class _ClassifierAsSileroModel:
    """What `get_speech_timestamps` calls on a model (`reset_states`, `model(chunk, sr).item()`),
    answered by the project's classifier."""

    def __init__(self):
        self._classifier = SileroClassifier()

    def reset_states(self) -> None:
        self._classifier.reset()

    def __call__(self, chunk, sample_rate_hz: int):
        import torch

        return torch.tensor(self._classifier(chunk.numpy()))


@functools.cache
def _get_speech_timestamps():
    import torch

    threads = torch.get_num_threads()
    from silero_vad import get_speech_timestamps

    torch.set_num_threads(threads)  # importing silero_vad pins torch to one thread for the whole process
    return get_speech_timestamps


def speech_segments(pcm_16k: np.ndarray, decimals: int | None = None) -> list[tuple[float, float]]:
    """Speech in float32 (n,) 16 kHz audio as (start_s, end_s) pairs in time order.

    decimals: round the times as FDB's backchannel scorer sees them (FDB_RESOLUTION_DECIMALS);
    None keeps sample precision, for timing overlaps and plots.
    """
    import torch

    pcm = np.ascontiguousarray(pcm_16k, dtype=np.float32)
    if pcm.size == 0 or not np.any(pcm):
        return []
    found = _get_speech_timestamps()(
        torch.from_numpy(pcm), _ClassifierAsSileroModel(), sampling_rate=CLASSIFIER_RATE_HZ
    )
    segments = [(s["start"] / CLASSIFIER_RATE_HZ, s["end"] / CLASSIFIER_RATE_HZ) for s in found]
    if decimals is None:
        return segments
    return [(round(s, decimals), round(e, decimals)) for s, e in segments]
