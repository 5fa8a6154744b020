"""Where a session's 80 ms frames end in its input stream, so that each completes just before a tick.

The frame clock steps every session at the same ticks, but each client's audio arrives at its own
phase against them. A frame that is complete 70 ms before its tick has the user wait 70 ms for
nothing; one completed 1 ms after a tick waits a whole period. Where a session's frames begin in its
stream is ours to choose: `FramePhase` watches when each chunk arrives (its end's input position
and arrival time), and says, for a tick, which input position the frame stepped then should end at:
the last chunk end that has reliably arrived `margin_s` before the tick. The input buffer gets there
by padding silence in front of a frame (the boundary moves earlier) or dropping queued silence (it
moves later), only while the user is silent; `hysteresis_s` keeps it from moving back and forth.

Pure: arrival times and tick times are passed in; no clock, no I/O.
"""

from __future__ import annotations

import collections
import math

from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ

SNAP_SAMPLES = SAMPLE_RATE_HZ // 1000  # how near a usual chunk size counts as a frame's divisor or multiple


class FramePhase:
    """A session's arrival phase against the tick grid, and the frame end each tick should take.

    Positions are input samples at 24 kHz since the session began; times are seconds of one clock.
    For a client streaming in real time, the chunk ending at position e arrives at about
    `offset + e / rate` (plus jitter); `late_offset` is a high quantile of that offset over the
    recent arrivals (their median for the first few), so the chunk ending at e is due by
    `late_offset + e / rate`.
    """

    def __init__(
        self,
        sample_rate_hz: int = SAMPLE_RATE_HZ,
        frame_samples: int = FRAME_SAMPLES,
        margin_s: float = 0.003,
        hysteresis_s: float = 0.006,
        window: int = 50,
        quantile: float = 90.0,
    ):
        """margin_s: how long before its tick a frame's last chunk should be in (jitter).
        hysteresis_s: a boundary moves later (dropping silence) only when the frame would wait this
            much more than the margin beyond a whole chunk, so it never hops back and forth.
        window, quantile: the arrivals the late offset is taken over, and its percentile."""
        self.rate = sample_rate_hz
        self.frame_samples = frame_samples
        self.margin_s = margin_s
        self.hysteresis_s = hysteresis_s
        self.quantile = quantile
        # Each piece of input as it came, and the same grouped into bursts: pieces that came sooner
        # after the one before than half their own length (the packets of one socket read, four
        # 20 ms packets a client sends at once), up to a frame. A client that usually sends bursts is
        # judged by them: all of a burst is due when its end came. Taken one by one, a burst's first
        # piece, in as late as its last, said every chunk end was due that much later than it was
        # (with four 20 ms Opus packets sent at once, every frame waited 60 ms for a tick placed
        # for it). One whose pieces only now and then come together (jitter) is judged piece by
        # piece, so a late piece's lateness still counts.
        self._pieces = _Arrivals(window)
        self._bursts = _Arrivals(window)
        self.last_end = 0  # input position of the newest chunk's end
        self._last_at: float | None = None  # when the newest piece came
        # What the arrivals say, worked out once per change (a tick asks 2-5 times; numpy's
        # percentile of 50 values took 30 us each, a tenth of a session's event-loop time a frame).
        self._late: float | None = None
        self._chunk: int | None = None
        self._by: _Arrivals | None = None

    def arrived(self, end_sample: int, at_s: float) -> None:
        """A chunk ending at input position `end_sample` arrived at `at_s`."""
        if end_sample <= self.last_end:
            return
        size = end_sample - self.last_end
        offset = at_s - end_sample / self.rate
        self._pieces.add(size, offset)
        together = self._last_at is not None and at_s - self._last_at < size / self.rate / 2
        if together and self._bursts.sizes[-1] + size <= self.frame_samples:
            self._bursts.extend(size, offset)
        else:
            self._bursts.add(size, offset)
        self.last_end = end_sample
        self._last_at = at_s
        self._late = self._chunk = self._by = None

    def _arrivals(self) -> _Arrivals:
        """The bursts where the client usually sends several pieces at once, else the pieces (and
        the usual chunk, `chunk_samples`, their median size)."""
        if self._by is None:
            piece = _percentile(sorted(self._pieces.sizes), 50.0)
            burst = _percentile(sorted(self._bursts.sizes), 50.0)
            self._by, usual = (self._bursts, burst) if burst >= 2 * piece else (self._pieces, piece)
            self._chunk = _snapped(int(usual), self.frame_samples)
        return self._by

    @property
    def chunk_samples(self) -> int:
        """The client's usual chunk (the median of the recent ones). Within a millisecond of a size
        that divides a frame, or of a whole number of frames, it is that size: a decoder's or a
        resampler's filter holds back a few samples of the first chunk (an Opus session's first
        20 ms packet gives 464 samples, not 480), and the session's first frame is placed on that
        chunk alone."""
        if not self._pieces.sizes:
            return self.frame_samples
        self._arrivals()
        return self._chunk

    def late_offset(self) -> float | None:
        """Arrival time less stream time, at the recent arrivals' `quantile` (None before any)."""
        if not self._pieces.offsets:
            return None
        # A session's first few chunks (its set-up, a busy client) say little about its jitter: the
        # median places its first frame, the quantile takes over once there are enough.
        if self._late is None:
            offsets = self._arrivals().offsets
            quantile = 50.0 if len(offsets) < 10 else self.quantile
            self._late = _percentile(sorted(offsets), quantile)
        return self._late

    def frame_end(self, tick_s: float, margin_s: float | None = None) -> int | None:
        """The input position the frame stepped at `tick_s` should end at: the last chunk end due by
        `tick_s - margin_s`, on the grid of the newest chunk's end and the usual chunk size."""
        late = self.late_offset()
        if late is None:
            return None
        return self._last_due(
            tick_s - (self.margin_s if margin_s is None else margin_s), late, self.chunk_samples
        )

    def shift(self, natural_end: int, tick_s: float) -> int:
        """How far the frame stepped at `tick_s` should move its end from `natural_end` (where a whole
        frame from the front of the queue would end): < 0 earlier (pad that much silence in front:
        its last chunk would come too close to the tick or after it), > 0 later (drop that much
        queued input first: a whole chunk more is due even `hysteresis_s` earlier, or a whole frame
        more is due), 0 where it is."""
        end = self.frame_end(tick_s)
        if end is None:
            return 0
        chunk = self.chunk_samples
        if self._chunk_end(natural_end) > end:
            return end - natural_end
        if end - natural_end >= self.frame_samples:
            # A whole frame more is in: a backlog (a chunk that came late had its frame padded),
            # not jitter, and a tick placed close behind its chunks would never clear it otherwise.
            return end - natural_end
        later = self.frame_end(tick_s, self.margin_s + self.hysteresis_s)
        if later is not None and later - natural_end >= chunk:
            return end - natural_end
        return 0

    def tick_move(self, tick_s: float, *, sooner: bool, later_max_s: float = 0.010) -> float | None:
        """For a frame clock serving this session alone, which may move to it: how far the tick due
        at `tick_s` should move (s; < 0 sooner, 0 where it is) to have a chunk end reliably in
        `margin_s` before it. By the client's phase alone, never its queue (a backlog is the input
        buffer's to trim, not a reason to tick early). sooner: by the slack after the last chunk
        end in, when that is `hysteresis_s` or more. Otherwise later, when the next chunk end would
        come too late by `later_max_s` or less, and less than half a chunk (the client's clock
        runs slow, or its first chunks came early), since `frame_end` would otherwise leave that
        chunk to the next tick, a period later. Either way to a third of the hysteresis (2 ms)
        past margin and due time. Only for chunks that divide a frame or that frames divide: other
        chunk ends fall at another phase every tick, and no one phase serves them (0). None
        before any arrival."""
        late = self.late_offset()
        if late is None:
            return None
        chunk = self.chunk_samples
        if self.frame_samples % chunk and chunk % self.frame_samples:
            return 0.0
        step = min(chunk, self.frame_samples)
        end = self._last_due(tick_s - self.margin_s, late, step)
        slack = max(0.0, tick_s - self.margin_s - (late + end / self.rate))  # in [0, step)
        # Moved ticks land `headroom` past margin and due time: both are estimates, and a tick on the
        # very edge would flip between two frame ends as more arrivals refine them.
        headroom = self.hysteresis_s / 3
        if sooner:
            return headroom - slack if slack >= self.hysteresis_s else 0.0
        later = step / self.rate - slack  # for the next chunk end to be in `margin_s` before it
        return later + headroom if later <= min(later_max_s, step / self.rate / 2) else 0.0

    def _last_due(self, by_s: float, late: float, step: int) -> int:
        """The last position on the grid of the newest chunk's end, `step` apart, due by `by_s`
        (a chunk due exactly then counts, whatever the rounding: + 1e-6)."""
        target = (by_s - late) * self.rate
        return self.last_end + math.floor((target - self.last_end) / step + 1e-6) * step

    def _chunk_end(self, position: int) -> int:
        """Where the chunk holding `position` ends (on the grid of the newest chunk's end and the
        usual chunk size): the input there is heard once that chunk is in."""
        chunk = self.chunk_samples
        return self.last_end - math.floor((self.last_end - position) / chunk) * chunk


class _Arrivals:
    """The recent chunks: each one's size and its offset (arrival time less its end's stream time)."""

    def __init__(self, window: int):
        self.sizes: collections.deque[int] = collections.deque(maxlen=window)
        self.offsets: collections.deque[float] = collections.deque(maxlen=window)

    def add(self, size: int, offset: float) -> None:
        self.sizes.append(size)
        self.offsets.append(offset)

    def extend(self, size: int, offset: float) -> None:
        """The newest chunk goes on: due when its new end came."""
        self.sizes[-1] += size
        self.offsets[-1] = offset


def _snapped(chunk: int, frame: int) -> int:
    """`chunk`, or the nearest size that divides `frame` or is a multiple of it, when that is less
    than a millisecond (24 samples at 24 kHz) away."""
    if chunk >= frame:
        near = [round(chunk / frame) * frame]
    else:
        near = [
            frame // n
            for n in {max(1, math.floor(frame / chunk)), math.ceil(frame / chunk)}
            if frame % n == 0
        ]
    best = min(near, key=lambda size: abs(size - chunk), default=chunk)
    return best if abs(best - chunk) < SNAP_SAMPLES else chunk


def _percentile(ordered: list[float], q: float) -> float:
    """numpy.percentile's default (linear) of values already sorted (equal to it up to rounding),
    without numpy's overhead."""
    at = (len(ordered) - 1) * q / 100.0
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)
