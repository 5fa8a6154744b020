"""`assistant bench engine`: milliseconds per engine step, split into codec encode, temporal
transformer, depth transformer (with sampling) and codec decode, at several batch sizes.

Models: `tiny` (a small random Moshi + small random Mimi, for CPU), `7b-random` (the real 7B
architecture and the real Mimi with random weights; bf16 on GPU), or a checkpoint PATH / repo id.
The model is loaded once; each batch size gets its own engine (its own KV cache) with every slot
open, stepped on noise (`--alternate-policies`: an engine per `--context-policy` value, stepped
in turns, a row each, so that both see the same machine). `--compile` captures the LM step as
CUDA graphs (the batch's bucket only), `--quantize int8` uses int8 weights. Prints per-part median / p99 ms, tokens/s, peak GPU memory, and
the largest batch that stays real time (p99 step < 80 ms; with margin < 64 ms). Never fails on speed.

On an H100: `assistant bench engine --model 7b-random --device cuda --batch 1,8,16,32,64 --compile`
(a 7B slot's KV cache is ~1.6 GB at the full 3000-frame context: pass `--context 1500` for 64 rows).

`--images` (a model that takes images: `tiny-vis`, `medium-vis`, `7b-random-vis`, a MoshiVis
checkpoint) gives every slot an image, so every row runs the cross-attention, and first times one
image's encode (SigLIP, projection, keys and values).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from assistant.engine import CONTEXT_POLICIES, SlotOptions
from assistant.engine_args import add_engine_arguments, model_of
from audio.frames import FRAME_MS, FRAME_SAMPLES

PARTS = ("codec_encode_ms", "temporal_ms", "depth_ms", "codec_decode_ms", "total_ms")
TOKENS_PER_FRAME = 9  # a text token and 8 audio codes per slot per step
REALTIME_P99_MS = FRAME_MS
MARGIN_P99_MS = 0.8 * FRAME_MS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser, backend=None, model="tiny")
    parser.add_argument("--batch", default="1,4,16", help="comma-separated batch sizes (default 1,4,16)")
    parser.add_argument("--frames", type=int, default=50, help="timed steps per batch size (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--alternate-policies",
        action="store_true",
        help="measure an engine of each --context-policy (pin, slide) in turns, step by step: a fair"
        " comparison on a busy machine",
    )
    parser.add_argument(
        "--images",
        action="store_true",
        help="every slot sees an image (vision models); also times one image's encode",
    )
    parser.add_argument(
        "--context",
        type=int,
        default=None,
        help="KV cache frames per slot (default: the model's, 3000 for 7B)",
    )


def load(model: str, device, dtype):
    """The LoadedMoshi for a --model value: random weights for tiny / 7b-random, else the checkpoint."""
    from assistant.moshi.loading import load_moshi, resolve_device, resolve_dtype
    from assistant.moshi.random_models import RANDOM_MODELS, random_loaded

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if model in RANDOM_MODELS:
        return random_loaded(model, device, dtype)
    return load_moshi(model, device=device, dtype=dtype)


def build(model, batch_size: int, device=None, dtype=None, **options):
    """A profiling MoshiEngine of `batch_size` slots; `model` a --model value or an already LoadedMoshi."""
    from assistant.backends.moshi import MoshiEngine

    loaded = load(model, device, dtype) if isinstance(model, str) else model
    return MoshiEngine.from_loaded(loaded, batch_size=batch_size, profile=True, **options)


def bench(engine, frames: int, warmup: int, images: bool = False) -> dict[str, np.ndarray]:
    """Step `engine` with every slot open on noise input (each with an image in force from the
    first step: `images`); return per-step timings (ms) per part."""
    return bench_in_turns([engine], frames, warmup, images)[0]


def bench_in_turns(
    engines: list, frames: int, warmup: int, images: bool = False
) -> list[dict[str, np.ndarray]]:
    """`bench` of several engines of one batch size, one step of each in turn; timings per engine."""
    batch = engines[0].batch_size
    for engine in engines:
        for slot in range(batch):
            engine.open(slot, SlotOptions(seed=slot))
            if images:
                engine.set_image(slot, engine.check_image(_test_image(slot)), start_frame=0)
        engine.finish_prompts()
    rng = np.random.default_rng(0)
    pcm = (0.1 * rng.standard_normal((batch, FRAME_SAMPLES))).astype(np.float32)
    times: list[dict[str, list[float]]] = [{p: [] for p in PARTS} for _ in engines]
    for i in range(warmup + frames):
        for engine, kept in zip(engines, times, strict=True):
            t0 = time.perf_counter()
            out = engine.step(pcm)
            wall = (time.perf_counter() - t0) * 1000
            if i >= warmup:
                for part in PARTS:
                    kept[part].append(wall if part == "total_ms" else out.timings_ms.get(part, float("nan")))
    return [{p: np.asarray(v) for p, v in kept.items()} for kept in times]


def _batches(text: str) -> list[int] | None:
    try:
        batches = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        return None
    return batches if batches and min(batches) >= 1 else None


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = _batches(args.batch)
    if batches is None:
        print(f"bench engine: --batch must be comma-separated integers >= 1, got {args.batch!r}")
        return 2
    if args.frames < 1 or args.warmup < 0 or (args.context is not None and args.context < 1):
        print("bench engine: --frames and --context must be >= 1, --warmup >= 0")
        return 2
    from assistant.backends.moshi import quantize_option
    from assistant.moshi.graphs import compile_mode
    from assistant.moshi.quantize import quantize_moshi, weight_bytes

    try:
        quantize = quantize_option(args.quantize)
        loaded = load(model_of(args), args.device, args.dtype)
    except (ValueError, FileNotFoundError) as exc:
        print(f"bench engine: {exc}")
        return 2
    if args.images and not loaded.takes_images:
        print(f"bench engine: --images needs a model that takes images (e.g. tiny-vis), not {args.model}")
        return 2
    param = next(loaded.model.parameters())
    device, cuda = param.device, param.device.type == "cuda"
    if quantize:
        quantize_moshi(loaded.model, quantize)
    step_mode = compile_mode(args.compile, device)
    options = {"compile": args.compile, "quantize": quantize, "context": args.context, "warm_up": False}
    policies = CONTEXT_POLICIES if args.alternate_policies else (args.context_policy or CONTEXT_POLICIES[0],)
    print(
        f"model={model_of(args)} device={device} dtype={str(param.dtype).removeprefix('torch.')} "
        f"step={step_mode} quantize={quantize or 'none'} context_policy={','.join(policies)} "
        f"frames={args.frames} "
        f"warmup={args.warmup} torch_threads={torch.get_num_threads()}"
    )
    print(
        f"weights {weight_bytes(loaded.model) / 1e9:.2f} GB, KV cache {_kv_gb(loaded, args.context):.3f} GB per slot"
    )
    if args.images:
        print(_encode_line(loaded))
    print(
        "ms per step, median / p99 (temporal: temporal transformer; depth: sampling + depth transformer "
        "+ token bookkeeping)" + ("; every slot has an image" if args.images else "")
    )
    header = (
        f"{'batch':>5} | "
        + " | ".join(f"{p.removesuffix('_ms'):>17}" for p in PARTS)
        + f" | {'rt x':>5} | {'tokens/s':>8} | {'GPU GB':>6}"
        + (" | policy" if args.alternate_policies else "")
    )
    print(header)
    print("-" * len(header))
    fits: list[tuple[int, float, str]] = []
    for batch in batches:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        engines = []
        try:
            for policy in policies:
                engine = build(loaded, batch, context_policy=policy, **options)
                engine.warm_up(buckets=[batch])
                if engine.runner.mode != step_mode:
                    print(
                        f"{batch:>5} | {step_mode} warm-up failed (see the log above): measuring {engine.runner.mode}"
                    )
                engines.append(engine)
            runs = bench_in_turns(engines, args.frames, args.warmup, images=args.images)
        except torch.OutOfMemoryError:
            engines = engine = None
            torch.cuda.empty_cache()
            print(
                f"{batch:>5} | out of GPU memory (KV cache {_kv_gb(loaded, args.context):.2f} GB per slot; "
                f"try --context or --quantize int8)",
                flush=True,
            )
            continue
        memory = f"{torch.cuda.max_memory_allocated(device) / 1e9:6.1f}" if cuda else f"{'-':>6}"
        for policy, times in zip(policies, runs, strict=True):
            cells = [f"{np.median(times[p]):7.2f} / {np.percentile(times[p], 99):7.2f}" for p in PARTS]
            median_s = float(np.median(times["total_ms"])) / 1000
            realtime = FRAME_MS / 1000 / median_s
            tokens_s = batch * TOKENS_PER_FRAME / median_s
            print(
                f"{batch:>5} | "
                + " | ".join(cells)
                + f" | {realtime:5.1f} | {tokens_s:8.0f} | {memory}"
                + (f" | {policy}" if args.alternate_policies else ""),
                flush=True,
            )
            fits.append((batch, float(np.percentile(times["total_ms"], 99)), policy))
        engines = engine = None
        if cuda:
            torch.cuda.empty_cache()
    print(
        "rt x: how many times faster than real time one step is (80 ms of audio per step, all slots); "
        f"tokens/s: {TOKENS_PER_FRAME} tokens per slot per step"
    )
    for limit, label in ((REALTIME_P99_MS, "real time"), (MARGIN_P99_MS, "real time with 20% margin")):
        for policy in policies:
            ok = [b for b, p99, of in fits if p99 < limit and of == policy]
            which = f", {policy}" if args.alternate_policies else ""
            print(f"largest batch in {label} (p99 step < {limit:.0f} ms{which}): {max(ok) if ok else 'none'}")
    return 0


def _kv_gb(loaded, context: int | None) -> float:
    config = loaded.model.config
    frames = context or config.sliding_window or config.max_position_embeddings
    dtype_bytes = next(loaded.model.parameters()).element_size()
    return (
        2
        * config.num_hidden_layers
        * config.num_key_value_heads
        * config.head_dim
        * frames
        * dtype_bytes
        / 1e9
    )


def _test_image(seed: int) -> bytes:
    """A 640 x 480 PNG of smooth noise (different per seed)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(small).resize((640, 480), Image.BILINEAR).save(out, format="PNG")
    return out.getvalue()


def _encode_line(loaded, repeats: int = 5) -> str:
    """One image's encode (SigLIP + projection + K/V), median of `repeats` after one warm-up; its
    slowest single stage (what a tick spends at most on it when time is short)."""
    from assistant.images import prepare_image

    vision, dtype = loaded.vision, next(loaded.model.parameters()).dtype
    device = next(vision.encoder.parameters()).device
    image = prepare_image(_test_image(0), vision.image_size)
    totals, slowest = [], 0.0
    for i in range(repeats + 1):  # the first is a warm-up
        t0 = last = time.perf_counter()
        for tokens in vision.encoder.stages(image.pixels):
            if tokens is not None:
                vision.cross.keys_values(tokens, dtype)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            slowest = max(slowest, now - last) if i else slowest
            last = now
        if i:
            totals.append((last - t0) * 1000)
    return (
        f"image encode (SigLIP {vision.image_size} px, {vision.num_tokens} tokens, + projection + K/V): "
        f"median {np.median(totals):.1f} ms over {repeats}, slowest stage {slowest * 1000:.1f} ms, "
        f"{vision.encoder.num_stages} stages"
    )
