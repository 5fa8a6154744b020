"""`bench/gpu.sh`, the one prepared GPU run: its CPU dry run goes end to end and writes the JSON and
the markdown table a person reads; a point whose graph capture fails is recorded and measured eagerly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from setuptools.config.pyprojecttoml import read_configuration

from bench import gpu

REPO = Path(__file__).resolve().parents[1]
# The server's packages a GPU run does not carry, and why it runs without them.
NOT_CARRIED = {
    "torch": "the host's own CUDA build",
    "av": "Opus on /ws: the server skips the codec when absent",
    "sphn": "Opus on /api/chat: skipped the same way",
    "faster-whisper": "captions, off in bench server",
    "ctranslate2": "the same captions",
    "silero-vad": "the Silero VAD; bench server runs webrtc",
    "onnxruntime": "the same Silero VAD",
    "pyloudnorm": "voice prompts; 7b-random takes none",
}


def test_dry_run_writes_every_figure_of_the_gpu_run(tmp_path):
    proc = subprocess.run(
        ["bash", "bench/gpu.sh", "--dry-run", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "gpu-bench.json").read_text())
    assert data["mode"] == "dry-run" and data["plan"]["model"] == "tiny" and data["errors"] == []
    # no CUDA here: the graph == eager test is collected and skipped, not failed
    assert data["cuda_graph_test"]["outcome"] == "skipped"
    plan = data["plan"]
    steps = data["engine"]
    assert [p["batch"] for p in steps] == plan["graph_batches"] + plan["eager_batches"]
    for p in steps + data["int8"]["points"]:
        assert p["mode"] == "eager" and 0 < p["total_median_ms"] <= p["total_p99_ms"]
        assert all(
            p[f"{part}_median_ms"] > 0 for part in ("codec_encode", "temporal", "depth", "codec_decode")
        )
    assert data["largest_batch_p99_under_64ms"] in (None, *plan["graph_batches"])
    int8 = data["int8"]
    assert int8["linears_swapped"] > 0 and int8["weights_gb"] < int8["weights_gb_before"]
    assert [p["batch"] for p in int8["points"]] == plan["int8_batches"]
    assert all(p["quantize"] == "int8" for p in int8["points"])
    [server] = data["server"]
    assert server["sessions"] == 1 and server["tick_late_p99_ms"] is not None
    # Frames came from the real server: at least half of one per tick it ran (a busy CPU makes the
    # tiny model's clock skip some; skipped ticks send no frame).
    served = 1 - server["skipped_ticks"] / (plan["server_seconds"] * 12.5)
    assert server["cpu_ms_per_session_frame"] > 0 and server["frames_received_ratio"] > 0.5 * served

    table = (tmp_path / "gpu-bench.md").read_text()
    for heading in ("## CUDA graphs == eager", "## Full step", "## Through the real server", "## int8"):
        assert heading in table
    assert "**skipped**" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| batch")]
    rows = [r for r in rows if not r.startswith("| sessions")]
    assert len(rows) == len(steps) + len(int8["points"]) + 1  # every point has its row
    assert table.rstrip().endswith("none")  # no errors


def test_a_failed_capture_is_recorded_and_the_point_measured_eagerly(tmp_path, monkeypatch):
    calls = []

    def point(loaded, batch, graphs, quantize, plan):
        calls.append(graphs)
        if graphs:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        return {"batch": batch, "mode": "eager", "errors": []}

    monkeypatch.setattr(gpu, "engine_point", point)
    run = gpu.Run(tmp_path, "gpu", gpu.PLANS["gpu"])
    assert gpu.measure(run, None, "engine", 8, True, None) == {"batch": 8, "mode": "eager", "errors": []}
    assert calls == [True, False]
    [error] = run.data["errors"]
    assert (
        error["stage"] == "engine" and "batch 8 (graphs)" in error["error"] and "capturing" in error["error"]
    )


def test_the_gpu_plan_ends_within_ten_minutes():
    plan = gpu.PLANS["gpu"]
    assert plan.model == "7b-random" and plan.graphs and plan.budget_s <= 480
    assert plan.graph_batches == (1, 8, 16, 32, 64) and plan.eager_batches == (1,)
    assert plan.int8_batches == (1, 32) and plan.sessions == (1, 16, 32, 64)
    assert 30 <= plan.frames + plan.warmup <= 50 and 30 <= plan.server_seconds / 0.08 <= 50


def test_the_wheel_list_carries_every_other_package_of_the_server_at_a_version_it_accepts():
    core = {Requirement(r) for r in read_configuration(REPO / "pyproject.toml")["project"]["dependencies"]}
    wanted = {r.name.lower().replace("_", "-"): r for r in core}
    lines = [
        line.split("#")[0].strip() for line in (REPO / "bench" / "gpu-wheels.txt").read_text().splitlines()
    ]
    pins = {Requirement(line) for line in lines if line}
    carried = {p.name.lower().replace("_", "-"): p for p in pins}
    assert set(carried) == set(wanted) - set(NOT_CARRIED)
    for name, pin in carried.items():
        (version,) = [s.version for s in pin.specifier]
        assert wanted[name].specifier.contains(version), (
            f"{name}=={version} is outside pyproject's {wanted[name]}"
        )


def test_a_missing_package_is_named_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu, "carried", lambda: ["websockets", "no-such-package"])
    assert gpu.main(["--mode", "dry-run", "--out", str(tmp_path)]) == 2
    assert "this Python lacks no-such-package;" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
