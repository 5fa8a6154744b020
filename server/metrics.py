"""Prometheus text exposition (format 0.0.4) without extra dependencies.

Counters, gauges and histograms live in one `Metrics` registry; `render()` produces the text
served at GET /metrics. Everything is updated from the event loop thread.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

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
    "underruns": ("counter", "Input frames missing at a tick (silence fed instead).", ()),
    "drops": ("counter", "Input frames dropped to keep latency bounded.", ()),
    "barge_ins": ("counter", "User barge-ins while the assistant spoke.", ()),
    "skipped_ticks": ("counter", "Frame-clock ticks skipped because a step overran.", ()),
    "slow_clients": ("counter", "Clients disconnected for reading too slowly.", ()),
    "errors": ("counter", "Errors sent to clients, by code.", ()),
    "captions_dropped": ("counter", "User captions dropped because the caption queue was full.", ()),
}


class Metrics:
    def __init__(self):
        self._counters: dict[tuple[str, str], float] = {}
        self._hist: dict[str, tuple[list[int], list[float]]] = {}  # name -> (bucket counts, [sum, count])
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def inc(self, name: str, value: float = 1, label: str = "") -> None:
        if _DEFINITIONS[name][0] != "counter":
            raise ValueError(f"{name} is not a counter")
        key = (name, label)
        self._counters[key] = self._counters.get(key, 0) + value

    def observe(self, name: str, value: float) -> None:
        _, _, buckets = _DEFINITIONS[name]
        counts, total = self._hist.setdefault(name, ([0] * (len(buckets) + 1), [0.0, 0]))
        counts[bisect.bisect_left(buckets, value)] += 1
        total[0] += value
        total[1] += 1

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A value read at render time (live sessions, capacity left)."""
        self._gauges[name] = (help_text, read)

    def value(self, name: str, label: str = "") -> float:
        return self._counters.get((name, label), 0)

    def render(self) -> str:
        lines: list[str] = []
        for name, (help_text, read) in self._gauges.items():
            full = PREFIX + name
            lines += [f"# HELP {full} {help_text}", f"# TYPE {full} gauge", f"{full} {_fmt(read())}"]
        for name, (kind, help_text, buckets) in _DEFINITIONS.items():
            full = PREFIX + name + ("_total" if kind == "counter" and not name.endswith("_total") else "")
            lines += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"]
            if kind == "counter":
                labelled = sorted((lab, v) for (n, lab), v in self._counters.items() if n == name)
                if not labelled:
                    lines.append(f"{full} 0")
                for lab, v in labelled:
                    lines.append(f'{full}{{code="{lab}"}} {_fmt(v)}' if lab else f"{full} {_fmt(v)}")
            else:
                counts, (total, count) = self._hist.get(name, ([0] * (len(buckets) + 1), [0.0, 0]))
                running = 0
                for bound, c in zip((*buckets, float("inf")), counts, strict=True):
                    running += c
                    le = "+Inf" if bound == float("inf") else _fmt(bound)
                    lines.append(f'{full}_bucket{{le="{le}"}} {running}')
                lines += [f"{full}_sum {_fmt(total)}", f"{full}_count {count}"]
        return "\n".join(lines) + "\n"


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.6g}"
