"""bench/gpu.sh's driver: every GPU figure docs/performance.md lists, in one bounded run, as JSON and markdown.

Stages, in order (each point is recorded as it finishes, so a run cut short keeps what it measured):
1. `tests/test_moshi_static.py`'s CUDA-graph == eager test (tokens identical), in a subprocess.
2. The full engine step (Mimi encode + temporal + depth + Mimi decode) of a random model:
   CUDA graphs at each batch, and eager at batch 1. A capture that fails is recorded and the point
   is measured eagerly (the engine falls back by itself; a replay that raises is rerun eagerly).
3. int8 weight-only: weight bytes, peak memory and step time; a failure is recorded, the run goes on.
4. `assistant bench server --backend moshi` through real server processes at each session count.

`--mode gpu` is the real run (7B random bf16 on CUDA); `--mode dry-run` is the same code on CPU with
the tiny model and a handful of frames, to prove the script end to end without a GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRANSFORMERS_MIN = (5, 24)  # MoshiDecoderLayer's `cache=` argument; pyproject pins the same
MARGIN_P99_MS = 64.0  # 80 ms frame with 20% margin
CUDA_TEST = "tests/test_moshi_static.py::test_cuda_graph_replay_equals_the_eager_step_on_cuda"
WHEELS = REPO / "bench" / "gpu-wheels.txt"


@dataclass(frozen=True)
class Plan:
    model: str
    device: str
    graphs: bool  # request CUDA graphs for the graph rows (off in the dry run: CPU has none)
    graph_batches: tuple[int, ...]
    eager_batches: tuple[int, ...]
    int8_batches: tuple[int, ...]
    frames: int  # timed steps per point
    warmup: int  # untimed steps per point
    sessions: tuple[int, ...]
    server_seconds: float
    server_warmup_s: float
    budget_s: float  # no new point starts past this (a whole run ends within about 10 minutes)


PLANS = {
    "gpu": Plan(
        model="7b-random",
        device="cuda",
        graphs=True,
        graph_batches=(1, 8, 16, 32, 64),
        eager_batches=(1,),
        int8_batches=(1, 32),
        frames=40,
        warmup=5,
        sessions=(1, 16, 32, 64),
        server_seconds=3.2,  # 40 frames
        server_warmup_s=1.0,
        budget_s=480.0,
    ),
    "dry-run": Plan(
        model="tiny",
        device="cpu",
        graphs=False,
        graph_batches=(1, 2),
        eager_batches=(1,),
        int8_batches=(1, 2),
        frames=3,
        warmup=1,
        sessions=(1,),
        server_seconds=1.0,
        server_warmup_s=0.5,
        budget_s=120.0,
    ),
}


class Run:
    """The results so far; `save` rewrites the JSON and the markdown after every point."""

    def __init__(self, out: Path, mode: str, plan: Plan):
        self.out, self.t0 = out, time.monotonic()
        self.plan = plan
        self.data: dict = {
            "mode": mode,
            "plan": asdict(plan),
            "environment": environment(),
            "cuda_graph_test": None,
            "engine": [],
            "largest_batch_p99_under_64ms": None,
            "int8": None,
            "server": [],
            "errors": [],
            "seconds": 0.0,
        }

    def left_s(self) -> float:
        return self.plan.budget_s - (time.monotonic() - self.t0)

    def error(self, stage: str, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        print(f"gpu bench: {stage}: {text}", flush=True)
        self.data["errors"].append({"stage": stage, "error": text})

    def save(self) -> None:
        self.data["seconds"] = round(time.monotonic() - self.t0, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu-bench.json").write_text(json.dumps(self.data, indent=2, default=float) + "\n")
        (self.out / "gpu-bench.md").write_text(markdown(self.data))


def carried() -> list[str]:
    """The distributions bench/gpu-wheels.txt names: what the run imports besides torch."""
    lines = (line.split("#")[0].strip() for line in WHEELS.read_text().splitlines())
    return [line.split("==")[0] for line in lines if line]


def missing_packages() -> list[str]:
    """torch and the packages of bench/gpu-wheels.txt that this Python cannot import."""
    from importlib.metadata import PackageNotFoundError, version

    missing = []
    for name in ["torch", *carried()]:
        try:
            version(name)
        except PackageNotFoundError:
            missing.append(name)
    return missing


def environment() -> dict:
    from importlib.metadata import version

    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "packages": {name: version(name) for name in carried()},
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1) if cuda else None,
    }


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


# -- 1. the CUDA-graph == eager test ---------------------------------------------------------------
def cuda_graph_test(run: Run) -> None:
    t = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", CUDA_TEST],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=max(30.0, min(240.0, run.left_s())),
        )
        output = proc.stdout + proc.stderr
        passed = re.search(r"(\d+) passed", output)
        skipped = re.search(r"(\d+) skipped", output)
        outcome = "passed" if proc.returncode == 0 and passed else "skipped" if skipped else "failed"
    except subprocess.TimeoutExpired as exc:
        output, outcome = str(exc), "failed"
    run.data["cuda_graph_test"] = {
        "test": CUDA_TEST,
        "outcome": outcome,
        "seconds": round(time.monotonic() - t, 1),
        "output_tail": output[-2000:],
    }
    if outcome == "failed":
        run.error("cuda_graph_test", output[-600:])
    run.save()


# -- 2, 3. engine steps ----------------------------------------------------------------------------
class _Errors(logging.Handler):
    """Collects the engine's logged errors (a failed warm-up logs one and steps eagerly)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        self.messages.append(text)


def engine_point(loaded, batch: int, graphs: bool, quantize: str | None, plan: Plan) -> dict:
    """One engine of `batch` slots, every slot open, stepped `plan.frames` times: ms per part."""
    import torch

    from assistant.moshi.graphs import compile_mode
    from bench.engine import PARTS, bench, build

    device = next(loaded.model.parameters()).device
    cuda = device.type == "cuda"
    errors = _Errors()
    logging.getLogger("assistant").addHandler(errors)
    engine = None
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        engine = build(loaded, batch, compile=graphs, quantize=quantize, warm_up=False)
        engine.warm_up(buckets=[batch])
        times = bench(engine, plan.frames, plan.warmup)
        point = {
            "batch": batch,
            "requested": compile_mode(graphs, device),
            "mode": engine.runner.mode,
            "quantize": quantize or "none",
            "eager_fallbacks": getattr(engine.runner, "eager_fallbacks", 0),
            "peak_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if cuda else None,
            "errors": errors.messages,
        }
        for part in PARTS:
            name = part.removesuffix("_ms")
            point[f"{name}_median_ms"] = round(float(np.median(times[part])), 3)
            point[f"{name}_p99_ms"] = round(float(np.percentile(times[part], 99)), 3)
        return point
    finally:
        logging.getLogger("assistant").removeHandler(errors)
        del engine
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def measure(run: Run, loaded, stage: str, batch: int, graphs: bool, quantize: str | None) -> dict | None:
    """engine_point, with a failed graph point recorded and measured again eagerly."""
    if run.left_s() < 20:
        run.error(stage, f"batch {batch} skipped: the run's {run.plan.budget_s:.0f} s budget is spent")
        return None
    try:
        point = engine_point(loaded, batch, graphs, quantize, run.plan)
    except Exception as exc:  # OOM, a replay or kernel that raises: record it, go on eagerly
        run.error(stage, f"batch {batch} ({'graphs' if graphs else 'eager'}): {type(exc).__name__}: {exc}")
        if not graphs:
            return None
        return measure(run, loaded, stage, batch, False, quantize)
    for message in point["errors"]:
        run.error(stage, f"batch {batch}: {message}")
    return point


def engine_stages(run: Run) -> None:
    import torch

    from assistant.moshi.quantize import quantize_moshi, weight_bytes
    from bench.engine import load

    plan = run.plan
    loaded = load(plan.model, plan.device, None)
    graph_points = []
    for batch in plan.graph_batches:
        point = measure(run, loaded, "engine", batch, plan.graphs, None)
        if point:
            graph_points.append(point)
            run.data["engine"].append(point)
        run.save()
    for batch in plan.eager_batches:
        point = measure(run, loaded, "engine", batch, False, None)
        if point:
            run.data["engine"].append(point)
        run.save()
    fits = [p["batch"] for p in graph_points if p["total_p99_ms"] < MARGIN_P99_MS]
    run.data["largest_batch_p99_under_64ms"] = max(fits) if fits else None

    int8: dict = {"weights_gb_before": round(weight_bytes(loaded.model) / 1e9, 3), "points": []}
    run.data["int8"] = int8
    try:
        int8["linears_swapped"] = quantize_moshi(loaded.model, "int8")
        int8["weights_gb"] = round(weight_bytes(loaded.model) / 1e9, 3)
    except Exception as exc:
        run.error("int8", exc)
    else:
        for batch in plan.int8_batches:
            point = measure(run, loaded, "int8", batch, plan.graphs, "int8")
            if point:
                int8["points"].append(point)
            run.save()
    run.save()
    del loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the servers of stage 4 need the whole GPU


# -- 4. the real server ----------------------------------------------------------------------------
def server_stage(run: Run) -> None:
    from bench import server as server_bench

    plan = run.plan
    parser = argparse.ArgumentParser()
    server_bench.add_arguments(parser)
    args = parser.parse_args(
        ["--backend", "moshi", "--model", plan.model, "--device", plan.device]
        + ["--seconds", str(plan.server_seconds), "--warmup", str(plan.server_warmup_s)]
        + ([] if plan.graphs else ["--no-compile"])
    )
    audio, what = server_bench.load_audio(None)
    run.data["server_audio"] = what
    for n in plan.sessions:
        if run.left_s() < 60:  # a 7B server loads and captures every bucket before it serves
            run.error("server", f"{n} sessions skipped: the run's {plan.budget_s:.0f} s budget is spent")
            continue
        t = time.monotonic()
        try:
            r = server_bench.run_one(n, args, audio)
        except (Exception, SystemExit) as exc:
            run.error("server", f"{n} sessions: {type(exc).__name__}: {exc}")
            continue
        run.data["server"].append(
            {
                "sessions": n,
                "underruns": r["underruns"],
                "underrun_percent": round(100 * r["underruns"] / max(r["session_frames"], 1), 2),
                "drops": r["drops"],
                "skipped_ticks": r["skipped_ticks"],
                "tick_late_p99_ms": r["late_ms"].get("p99"),
                "step_p50_ms": r["step_ms"].get("p50"),
                "step_p99_ms": r["step_ms"].get("p99"),
                "cpu_ms_per_session_frame": round(r["cpu_ms_per_session_frame"], 3),
                "frames_received_ratio": round(r["frames_received_ratio"], 3),
                "seconds": round(time.monotonic() - t, 1),
            }
        )
        run.save()
    held = [
        s["sessions"] for s in run.data["server"] if s["underruns"] == s["drops"] == s["skipped_ticks"] == 0
    ]
    run.data["sessions_held"] = max(held) if held else None
    run.save()


# -- markdown --------------------------------------------------------------------------------------
def _cell(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value) if isinstance(value, float) else str(value)


def markdown(data: dict) -> str:
    env, plan = data["environment"], data["plan"]
    lines = [
        f"# GPU figures ({data['mode']})",
        "",
        f"{env['gpu'] or 'no GPU (CPU)'}, torch {env['torch']}, transformers {env['transformers']}, "
        f"Python {env['python']}; model `{plan['model']}` on {plan['device']}, {plan['frames']} timed steps "
        f"per point after {plan['warmup']}; {data['seconds']:.0f} s in all.",
        "",
        "## CUDA graphs == eager (`tests/test_moshi_static.py`, tokens identical)",
        "",
    ]
    test = data["cuda_graph_test"]
    lines.append(f"`{CUDA_TEST.split('::')[1]}`: **{test['outcome']}**" if test else "not run")
    lines += [
        "",
        "## Full step (Mimi encode + temporal + 8 depth steps + Mimi decode), ms",
        "",
        "| batch | step | median | p99 | encode | temporal | depth | decode | peak GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in data["engine"]:
        lines.append(_step_row(p))
    lines += [
        "",
        f"Largest batch with p99 < {MARGIN_P99_MS:.0f} ms: **{_cell(data['largest_batch_p99_under_64ms'])}** "
        "(goal: batch 1 median <= 15 ms).",
        "",
        "## Through the real server (`assistant bench server --backend moshi`)",
        "",
        "| sessions | underruns | underrun % | drops | skipped ticks | tick late p99 ms | step p50 / p99 ms "
        "| CPU ms / session / frame | recv |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in data["server"]:
        lines.append(
            f"| {s['sessions']} | {s['underruns']:.0f} | {s['underrun_percent']:.2f} | {s['drops']:.0f} "
            f"| {s['skipped_ticks']:.0f} | {_cell(s['tick_late_p99_ms'], '{:.1f}')} "
            f"| {_cell(s['step_p50_ms'], '{:.1f}')} / {_cell(s['step_p99_ms'], '{:.1f}')} "
            f"| {s['cpu_ms_per_session_frame']:.3f} | {s['frames_received_ratio']:.2f} |"
        )
    lines += [
        "",
        f"Largest session count held without underruns, drops or skipped ticks: "
        f"**{_cell(data.get('sessions_held'))}** (goal: >= 32).",
        "",
        "## int8 weight-only",
        "",
    ]
    int8 = data["int8"] or {}
    lines += [
        f"Weights: {_cell(int8.get('weights_gb_before'), '{:.2f}')} GB before, "
        f"{_cell(int8.get('weights_gb'), '{:.2f}')} GB int8.",
        "",
        "| batch | step | median | p99 | encode | temporal | depth | decode | peak GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in int8.get("points", []):
        lines.append(_step_row(p))
    lines += ["", "## Errors", ""]
    lines += [f"- {e['stage']}: {e['error'].splitlines()[0][:300]}" for e in data["errors"]] or ["none"]
    return "\n".join(lines) + "\n"


def _step_row(p: dict) -> str:
    mode = p["mode"] if p["mode"] == p["requested"] else f"{p['mode']} (asked {p['requested']})"
    parts = " | ".join(
        f"{p[f'{name}_median_ms']:.2f}" for name in ("codec_encode", "temporal", "depth", "codec_decode")
    )
    return (
        f"| {p['batch']} | {mode} | {p['total_median_ms']:.2f} | {p['total_p99_ms']:.2f} | {parts} "
        f"| {_cell(p['peak_gb'])} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=tuple(PLANS), default="gpu")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu-bench.json and gpu-bench.md")
    args = parser.parse_args(argv)
    plan = PLANS[args.mode]
    if missing := missing_packages():
        print(
            f"gpu bench: this Python lacks {', '.join(missing)}; torch must be the host's CUDA build, the"
            " rest come as the wheels of bench/gpu-wheels.txt in .whl/ (see docs/performance.md)",
            file=sys.stderr,
        )
        return 2

    import torch
    import transformers

    if version_tuple(transformers.__version__) < TRANSFORMERS_MIN:
        print(
            f"gpu bench: transformers {transformers.__version__} is older than "
            f"{'.'.join(map(str, TRANSFORMERS_MIN))}, which the engine needs; carry the wheels of "
            "bench/gpu-wheels.txt (see docs/performance.md)",
            file=sys.stderr,
        )
        return 2
    if plan.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu bench: no CUDA device; `bench/gpu.sh --dry-run` runs the same script on CPU", file=sys.stderr
        )
        return 2
    if plan.device == "cpu":
        torch.set_num_threads(1)  # the tiny model is fastest on one thread
    run = Run(args.out, args.mode, plan)
    run.save()
    for stage, fn in (
        ("cuda_graph_test", cuda_graph_test),
        ("engine", engine_stages),
        ("server", server_stage),
    ):
        print(f"gpu bench: {stage} ({run.left_s():.0f} s of budget left)", flush=True)
        try:
            fn(run)
        except Exception as exc:  # one stage failing must not cost the others their figures
            run.error(stage, exc)
        run.save()
    print((args.out / "gpu-bench.md").read_text(), flush=True)
    print(f"gpu bench: wrote {args.out / 'gpu-bench.json'} and {args.out / 'gpu-bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
