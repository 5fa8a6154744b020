"""`assistant bench prefill`: what a role / voice prompt costs, and what it costs everybody else.

Two figures, on a prompted model (a PersonaPlex checkpoint, or a random `*-personaplex` one):

1. ms per prompt of N frames, one-pass chunked prefill vs one step per frame (the reference way);
2. the frame clock while sessions join: L live sessions are stepped every 80 ms of wall time, and
   J new sessions with N-frame prompts join during the run, which goes on past its ticks until every
   joining prompt is in. Reported per run (none joining vs J joining): step ms and how late each
   tick ends past its 80 ms deadline (p50 / p99 / max), and how many ticks each joining prompt took.

Random weights give honest speed figures (a step costs the same whatever the weights say).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from assistant.engine_args import add_engine_arguments, engine_kwargs, model_of
from audio.frames import FRAME_MS, FRAME_SAMPLES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser, backend=None, model="tiny-personaplex")
    parser.add_argument("--prompt-frames", type=int, default=200, help="frames per prompt (default 200)")
    parser.add_argument("--live", type=int, default=4, help="sessions already talking (default 4)")
    parser.add_argument("--joining", type=int, default=4, help="sessions joining with a prompt (default 4)")
    parser.add_argument("--ticks", type=int, default=100, help="80 ms ticks per clock run (default 100)")
    parser.add_argument(
        "--chunk", type=int, default=None, help="prompt positions per prefill pass (default: the engine's)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed prompts per prefill mode (default 3)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def _instructions(engine, frames: int) -> str:
    """Role text whose prompt (no voice: 2 x 6 silence frames around it) is exactly `frames` long."""
    base = 2 * 6 + len(engine.loaded.tokenizer.encode("<system>  <system>"))
    words = ["film", "music", "sea", "talk", "kind", "tell", "story", "calm"]
    text: list[str] = []
    while base + len(engine.loaded.tokenizer.encode(" ".join(text))) < frames:
        text.append(words[len(text) % len(words)])
    return " ".join(text)


def _engine(args, batch_size: int, prefill: str):
    from assistant.backends.moshi import MoshiEngine

    options = {"prefill": prefill}
    if args.chunk:
        options["prefill_chunk"] = args.chunk
    engine = engine_kwargs(args)
    return MoshiEngine.from_pretrained(engine.pop("model"), batch_size=batch_size, **engine, **options)


def prompt_ms(args) -> dict:
    """Median ms to take one prompt with nobody else live, per prefill mode."""
    import torch

    from assistant.engine import SlotOptions

    out = {}
    for mode in ("fast", "stepwise"):
        engine = _engine(args, 1, mode)
        if not engine.takes_prompts:
            raise SystemExit(f"bench prefill: {model_of(args)} takes no prompts; use a PersonaPlex model")
        options = SlotOptions(instructions=_instructions(engine, args.prompt_frames))
        times = []
        for _ in range(args.repeats + 1):  # the first is a warm-up
            t0 = time.perf_counter()
            engine.open(0, options)
            engine.finish_prompts()
            if engine.lm.device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000)
            frames = int(engine.lm.offsets[engine.row_of(0)])
            engine.close(0)
        out[mode] = {"ms": round(statistics.median(times[1:]), 2), "frames": frames}
    out["speedup"] = round(out["stepwise"]["ms"] / max(out["fast"]["ms"], 1e-9), 1)
    return out


def clock_run(args, joining: int) -> dict:
    """Step L live sessions on an 80 ms wall clock while `joining` sessions with prompts open."""
    import torch

    from assistant.engine import SlotOptions

    engine = _engine(args, args.live + args.joining, "fast")  # the same engine size for both runs
    text = _instructions(engine, args.prompt_frames)
    for slot in range(args.live):
        engine.open(slot, SlotOptions(instructions="Talk.", seed=slot))
    rng = np.random.default_rng(0)
    pcm = (0.05 * rng.standard_normal((engine.batch_size, FRAME_SAMPLES))).astype(np.float32)
    for _ in range(10):  # warm-up: first steps allocate and fill caches
        engine.step(pcm)
    join_at = {10 + 3 * k: args.live + k for k in range(joining)}
    opened_at, ready_at = {}, {}
    period = FRAME_MS / 1000
    step_ms, late_ms = [], []
    start = time.perf_counter()
    tick = 0
    # `ticks` ticks, then on until every prompt that joined is in: a busy CPU leaves less spare time
    # per frame, so prompts take more ticks (at least MIN_PREFILL_CHUNK positions a tick, so not forever).
    while tick < args.ticks or len(ready_at) < len(opened_at):
        deadline = start + (tick + 1) * period
        if tick in join_at:
            engine.open(join_at[tick], SlotOptions(instructions=text, seed=tick))
            opened_at[join_at[tick]] = tick
        t0 = time.perf_counter()
        failed = engine.step(pcm).failed
        if failed:
            raise SystemExit(f"bench prefill: a prompt could not be fed: {failed}")
        if engine.lm.device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        step_ms.append((t1 - t0) * 1000)
        late_ms.append(max(0.0, (t1 - deadline) * 1000))
        for slot in opened_at:
            if slot not in ready_at and engine.is_ready(slot):
                ready_at[slot] = tick
        time.sleep(max(0.0, deadline - time.perf_counter()))
        tick += 1
    return {
        "live": args.live,
        "joining": joining,
        "step_ms": _percentiles(step_ms),
        "late_ms": _percentiles(late_ms),
        "ticks": tick,
        "ticks_to_ready": [ready_at[s] - opened_at[s] + 1 for s in sorted(opened_at)],
    }


def ready_text(ticks_to_ready: list[int | None], ticks: int) -> str:
    """How many ticks each joining session took to be ready; None is one still not ready at the end."""
    ready = [str(t) for t in ticks_to_ready if t is not None]
    text = f", ready after {', '.join(ready)} ticks" if ready else ""
    waiting = len(ticks_to_ready) - len(ready)
    if waiting:
        text += f", {waiting} not ready within the run's {ticks} ticks"
    return text


def _percentiles(values: list[float]) -> dict:
    a = np.asarray(values)
    return {
        "p50": round(float(np.percentile(a, 50)), 2),
        "p99": round(float(np.percentile(a, 99)), 2),
        "max": round(float(a.max()), 2),
    }


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_grad_enabled(False)
    figures = {"model": model_of(args), "prompt_frames": args.prompt_frames, "prompt": prompt_ms(args)}
    figures["clock"] = [clock_run(args, 0), clock_run(args, args.joining)]
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    p = figures["prompt"]
    print(f"model {model_of(args)}, prompts of {p['fast']['frames']} frames")
    print(f"  fast prefill     {p['fast']['ms']:9.1f} ms per prompt")
    print(f"  stepwise prefill {p['stepwise']['ms']:9.1f} ms per prompt  ({p['speedup']}x slower)")
    print(
        f"frame clock, {args.live} live session{'s' if args.live != 1 else ''}, {args.ticks} ticks of {FRAME_MS} ms:"
    )
    for run_ in figures["clock"]:
        s, late = run_["step_ms"], run_["late_ms"]
        extra = ready_text(run_["ticks_to_ready"], args.ticks)
        print(
            f"  {run_['joining']} joining: step p50 {s['p50']} / p99 {s['p99']} / max {s['max']} ms; "
            f"late p99 {late['p99']} / max {late['max']} ms{extra}"
        )
    return 0
