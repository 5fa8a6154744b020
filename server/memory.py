"""What the server's memory holds, on demand: `kill -USR1 PID` logs a report.

The report gives the resident size (and what it is once the C allocator has handed its free heap
back to the system: memory that Python freed but glibc keeps for reuse is not a leak), the live objects by type (only those created after start-up:
everything loaded before serving is frozen out of the garbage collector and not counted), and,
when the process runs under tracemalloc (`PYTHONTRACEMALLOC=1`), the source lines holding the most
memory and what changed since the previous report. Under tracemalloc each report also dumps its
snapshot to a file named in the log, so two of them can be compared offline
(`tracemalloc.Snapshot.load`). Comparing two reports taken some minutes apart under steady load is
how to tell a leak (a line or a type that keeps growing) from caches filling and levelling off.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

TOP = 12


def rss_mb(pid: int | str = "self") -> float:
    """A process's resident size in MB (NaN where /proc cannot tell)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def release_free_heap() -> bool:
    """glibc's malloc_trim(0): give freed heap pages back to the system. False where unavailable."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


class MemoryReporter:
    def __init__(self, snapshot_dir: str | None = None):
        self.snapshot_dir = Path(snapshot_dir or tempfile.gettempdir())
        self.count = 0
        self._types: collections.Counter[str] = collections.Counter()
        self._snapshot: tracemalloc.Snapshot | None = None

    def report(self) -> str:
        t0 = time.perf_counter()
        self.count += 1
        gc.collect()
        types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        rss = rss_mb()
        trimmed = f" ({rss_mb():.1f} MB after malloc_trim)" if release_free_heap() else ""
        lines = [
            f"memory report {self.count}: RSS {rss:.1f} MB{trimmed}, {sum(types.values())} objects since start-up"
        ]
        grown = {k: types[k] - self._types.get(k, 0) for k in types}
        lines.append(
            "  most objects: " + ", ".join(f"{k} {n} ({grown[k]:+d})" for k, n in types.most_common(TOP))
        )
        self._types = types
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            path = self.snapshot_dir / f"assistant-memory-{os.getpid()}-{self.count}.tracemalloc"
            snapshot.dump(str(path))
            traced = sum(s.size for s in snapshot.statistics("filename"))
            lines.append(f"  traced {traced / 2**20:.1f} MB; snapshot {path}")
            for stat in snapshot.statistics("lineno")[:TOP]:
                frame = stat.traceback[0]
                lines.append(
                    f"    {stat.size / 1024:9.1f} KiB  {stat.count:7d}  {frame.filename}:{frame.lineno}"
                )
            if self._snapshot is not None:
                lines.append("  grown since the previous report:")
                for stat in snapshot.compare_to(self._snapshot, "lineno")[:TOP]:
                    frame = stat.traceback[0]
                    lines.append(
                        f"    {stat.size_diff / 1024:+9.1f} KiB  {stat.count_diff:+7d}  {frame.filename}:{frame.lineno}"
                    )
            self._snapshot = snapshot
        else:
            lines.append("  (run under PYTHONTRACEMALLOC=1 for the lines that allocated it)")
        lines.append(f"  (this report took {(time.perf_counter() - t0) * 1000:.0f} ms)")
        return "\n".join(lines)
