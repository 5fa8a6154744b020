"""The server's Prometheus metrics, through prometheus_client (text exposition format 0.0.4).

Counters, histograms and gauges live in one `Metrics` per server, each in its own registry (so a
test can build many); `render()` produces the text served at GET /metrics, label values escaped
by the library. Everything is updated from the event loop thread.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

PREFIX = "assistant_"

# name -> (kind, help, buckets for histograms)
_DEFINITIONS: dict[str, tuple[str, str, tuple[float, ...]]] = {
    "step_ms": (
        "histogram",
        "Engine step time per frame (ms).",
        (1, 2, 5, 10, 20, 40, 60, 80, 120, 200, 500),
    ),
    "tick_late_ms": (
        "histogram",
        "How late each frame-clock tick started after its deadline (ms).",
        (0.5, 1, 2, 5, 10, 20, 40, 80),
    ),
    "frame_wait_ms": (
        "histogram",
        "How long each frame's newest input waited for the tick that took it (ms).",
        (1, 2, 5, 10, 20, 40, 60, 80, 120),
    ),
    "response_gap_ms": (
        "histogram",
        "Last voiced user sample to first reply sample sent (ms).",
        (100, 200, 300, 500, 700, 1000, 1500, 2000, 5000),
    ),
    "server_overhead_ms": (
        "histogram",
        "End of user turn detected to first reply frame sent (ms).",
        (10, 20, 40, 60, 80, 100, 150, 200, 500),
    ),
    "sessions_total": ("counter", "Sessions started.", ()),
    "session_frames": ("counter", "80 ms frames processed, summed over sessions.", ()),
    "refused_total": ("counter", "Connections refused because every slot was taken.", ()),
    "client_cap_refused_total": (
        "counter",
        "Connections refused because their address held --max-connections-per-client already.",
        (),
    ),
    "underruns": ("counter", "Input frames missing at a tick (silence fed instead).", ()),
    "drops": ("counter", "Input frames dropped to keep latency bounded.", ()),
    "barge_ins": ("counter", "User barge-ins while the assistant spoke.", ()),
    "skipped_ticks": ("counter", "Frame-clock ticks skipped because a step overran.", ()),
    "slow_clients": ("counter", "Clients disconnected for reading too slowly.", ()),
    "errors": ("counter", "Errors sent to clients, by code.", ()),
    "captions_dropped": ("counter", "User captions dropped because the caption queue was full.", ()),
    "recording_failures": (
        "counter",
        "Sessions left unrecorded by --record: too little free space (low_disk), the files could not "
        "be opened (open), or writing failed mid-session (write).",
        (),
    ),
}
LABELS = {"errors": ("code",), "recording_failures": ("stage",)}  # counters counted per label value

# Counters export only their value, as before: no `_created` timestamp series beside each.
disable_created_metrics()


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self._counters: dict[str, Counter] = {}
        self._histograms: dict[str, Histogram] = {}
        for name, (kind, help_text, buckets) in _DEFINITIONS.items():
            if kind == "counter":
                labels = LABELS.get(name, ())
                self._counters[name] = Counter(PREFIX + name, help_text, labels, registry=self.registry)
            else:
                self._histograms[name] = Histogram(
                    PREFIX + name, help_text, buckets=buckets, registry=self.registry
                )

    def inc(self, name: str, value: float = 1, label: str = "") -> None:
        if name not in self._counters:
            raise ValueError(f"{name} is not a counter")
        counter = self._counters[name]
        (counter.labels(label) if name in LABELS else counter).inc(value)

    def observe(self, name: str, value: float) -> None:
        self._histograms[name].observe(value)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A value read at render time (live sessions, capacity left)."""
        Gauge(PREFIX + name, help_text, registry=self.registry).set_function(read)

    def value(self, name: str, label: str = "") -> float:
        labels = dict(zip(LABELS[name], (label,), strict=True)) if name in LABELS else None
        full = PREFIX + name.removesuffix("_total") + "_total"
        return self.registry.get_sample_value(full, labels) or 0.0

    def render(self) -> str:
        return generate_latest(self.registry).decode()
