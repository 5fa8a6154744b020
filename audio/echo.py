"""Acoustic echo cancellation for a mic next to speakers: WebRTC's AEC3, from livekit's wheel.

On speakers the microphone hears the assistant's own voice; sent on, that echo is user speech to
the server's VAD and to the model, and the assistant interrupts itself. The canceller learns the
speaker-to-mic path from the exact samples handed to the output device (the reference), subtracts
its estimate from the mic and suppresses what is left, in 10 ms frames at the mic's own rate
(any of audio.resample.SUPPORTED_RATES). A speaker that runs at another rate than the mic (a 48 kHz
headset output beside a 44.1 kHz microphone) has its reference resampled to the mic's rate. Noise suppression and gain control stay off: they would
change the voice the server's VAD and the model hear, and neither is needed against echo.

AEC3 finds the echo delay by itself up to about half a second (`assistant bench echo`); past that
(Bluetooth speakers, remote audio) it would cancel nothing, so the reference is held back by the
known delay less a margin. Holding back too little only leaves AEC3 more delay to find; too much
(the echo before its reference) would cancel nothing, hence the margin.

Threads: `played` may run on the sound device's output thread, `process` on the capture side. The
reference waits in a bounded queue and reaches AEC3 just before the next mic frame, so every call
into AEC3 happens on one thread, and a reference sample always goes in before the mic frames that
can hold its echo.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from audio.pcm import FrameChunker, as_mono_float32, float32_to_pcm16, pcm16_to_float32
from audio.resample import SUPPORTED_RATES, StreamResampler

FRAME_MS = 10  # AEC3 works on 10 ms frames
DELAY_MARGIN_MS = 30.0  # the reference is held back by the echo delay less this much
MAX_QUEUED_MS = 1000.0  # reference waiting for the mic beyond this is dropped (a stalled capture)
INSTALL_HINT = "it comes with the talk extra: pip install 'duplex-assistant[talk]'"


def _load_livekit_rtc():
    """livekit.rtc (about 0.8 s to import, so only when a canceller is made)."""
    try:
        from livekit import rtc
    except ImportError as exc:
        raise ImportError(f"echo cancellation needs the livekit package ({INSTALL_HINT}): {exc}") from exc
    return rtc


class EchoCanceller:
    """One mic stream at `sample_rate_hz` with the played audio as reference, float32 mono.

    reference_rate_hz: the output device's rate, of what `played` gets (default: sample_rate_hz).
    delay_ms: how long after a block is handed to the output device its echo reaches `process`
    (device output + input latency and the air); an estimate is fine, AEC3 tracks the rest.
    """

    def __init__(self, sample_rate_hz: int, delay_ms: float = 0.0, reference_rate_hz: int | None = None):
        reference_rate_hz = reference_rate_hz or sample_rate_hz
        for name, rate in (("sample_rate_hz", sample_rate_hz), ("reference_rate_hz", reference_rate_hz)):
            if rate not in SUPPORTED_RATES:
                raise ValueError(f"{name}={rate!r} is not supported; use one of {SUPPORTED_RATES}")
        if not 0.0 <= delay_ms <= 1000.0:
            raise ValueError(f"delay_ms must be between 0 and 1000, got {delay_ms}")
        self._rtc = _load_livekit_rtc()
        self._apm = self._rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True)
        self.sample_rate_hz = int(sample_rate_hz)
        self.reference_rate_hz = int(reference_rate_hz)
        # Used by `process` alone, so every resampling of the reference happens on the mic's thread.
        self._to_mic_rate = (
            StreamResampler(self.reference_rate_hz, self.sample_rate_hz)
            if self.reference_rate_hz != self.sample_rate_hz
            else None
        )
        self.frame_samples = self.sample_rate_hz * FRAME_MS // 1000
        hold_frames = int(max(0.0, delay_ms - DELAY_MARGIN_MS) // FRAME_MS)
        self.hold_back_ms = float(hold_frames * FRAME_MS)
        self.stream_delay_ms = round(delay_ms - self.hold_back_ms)  # the delay AEC3 is told remains
        self._reference = FrameChunker(self.frame_samples)
        # The hold-back is a delay line of whole frames, primed with silence.
        self._held = deque(np.zeros((hold_frames, self.frame_samples), np.float32))
        self._hold_frames = hold_frames
        self._mic = FrameChunker(self.frame_samples)
        self._lock = threading.Lock()
        self._queue: list[np.ndarray] = []
        self._queued_samples = 0
        self._max_queued = round(MAX_QUEUED_MS * self.reference_rate_hz / 1000)
        self.dropped_reference_samples = 0

    def played(self, pcm: np.ndarray) -> None:
        """The reference: float (n,) exactly as handed to the output device (at reference_rate_hz), in order."""
        block = as_mono_float32(pcm).copy()  # the caller reuses its buffer
        with self._lock:
            self._queue.append(block)
            self._queued_samples += block.shape[0]
            while self._queued_samples > self._max_queued:
                self._queued_samples -= self._queue[0].shape[0]
                self.dropped_reference_samples += self._queue.pop(0).shape[0]

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """Mic samples float (n,) in, the echo-cancelled mic out: float32, whole 10 ms frames.

        Samples short of a frame wait for the next call, so the output may be shorter or longer
        than this call's input; over a stream nothing is lost or reordered.
        """
        with self._lock:
            queue, self._queue, self._queued_samples = self._queue, [], 0
        for block in queue:
            if self._to_mic_rate is not None:
                block = self._to_mic_rate.process(block)
            self._held.extend(self._reference.push(block))
            while len(self._held) > self._hold_frames:
                self._apm.process_reverse_stream(self._frame(self._held.popleft()))
        cleaned = []
        for frame in self._mic.push(pcm):
            audio_frame = self._frame(frame)
            self._apm.set_stream_delay_ms(self.stream_delay_ms)  # AEC3 asks for it before every frame
            self._apm.process_stream(audio_frame)  # in place
            cleaned.append(pcm16_to_float32(audio_frame.data.cast("B").tobytes()))
        return np.concatenate(cleaned) if cleaned else np.zeros(0, dtype=np.float32)

    def _frame(self, frame: np.ndarray):
        return self._rtc.AudioFrame(float32_to_pcm16(frame), self.sample_rate_hz, 1, self.frame_samples)

    def describe(self) -> str:
        held = f", reference held back {self.hold_back_ms:.0f} ms" if self.hold_back_ms else ""
        return f"echo cancelling{held}"
