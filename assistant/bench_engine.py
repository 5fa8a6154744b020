"""`assistant bench engine`: milliseconds per engine step, split into codec encode, temporal
transformer, depth transformer and codec decode, at several batch sizes.

Models: `tiny` (a small random Moshi + small random Mimi, for CPU), `7b-random` (the real 7B
architecture and the real Mimi with random weights; bf16 on GPU), or a checkpoint PATH / repo id.
Prints figures; never fails on speed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from assistant.engine import FRAME_MS, FRAME_SAMPLES, SlotOptions

PARTS = ("codec_encode_ms", "temporal_ms", "depth_ms", "codec_decode_ms", "total_ms")
TINY_KWARGS = {"dim": 256, "num_heads": 4, "num_layers": 4, "text_card": 2000, "card": 2048, "context": 3000,
               "depformer_dim": 128, "depformer_num_heads": 4, "depformer_num_layers": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="tiny | 7b-random | checkpoint dir or HF repo id (default tiny)")
    parser.add_argument("--batch", default="1,4,16", help="comma-separated batch sizes (default 1,4,16)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="bf16 / fp32 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--frames", type=int, default=50, help="timed steps per batch size (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _random_codebooks(mimi) -> None:
    """An untrained Mimi has all-zero codebooks (every code equal); random ones make decode do real work."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in mimi.modules():
            if hasattr(module, "embed_sum") and hasattr(module, "cluster_usage"):
                module.embed_sum.copy_(torch.randn(module.embed_sum.shape, generator=gen))
                module.cluster_usage.fill_(1.0)
                module._embed = None


def _random_parts(which: str, device: torch.device, dtype: torch.dtype):
    """(LoadedMoshi, MimiModel) with random weights for `tiny` or `7b-random`."""
    from transformers import MimiConfig, MimiModel

    from assistant.moshi.loading import (
        KYUTAI_7B_KWARGS,
        LoadedMoshi,
        TextTokenizer,
        kyutai_lm_config,
        kyutai_lm_kwargs,
        random_moshi,
    )
    from audio.mimi_convert import mimi_config_for_kyutai

    if which == "tiny":
        kwargs = kyutai_lm_kwargs(dict(KYUTAI_7B_KWARGS, **TINY_KWARGS, depformer_dim_feedforward=None))
        mimi_config = MimiConfig(hidden_size=64, num_filters=8, num_hidden_layers=2, intermediate_size=128,
                                 num_attention_heads=4, num_key_value_heads=4, head_dim=16, codebook_size=2048,
                                 codebook_dim=32, vector_quantization_hidden_dimension=32, num_quantizers=8,
                                 upsample_groups=64)
    else:
        kwargs, mimi_config = dict(KYUTAI_7B_KWARGS), mimi_config_for_kyutai()
    config = kyutai_lm_config(kwargs, mimi_config)
    model = random_moshi(config, device=device, dtype=dtype)
    mimi = MimiModel(mimi_config).eval()
    _random_codebooks(mimi)
    tokenizer = TextTokenizer(pieces=[f"\u2581w{i}" for i in range(config.vocab_size)], silent_ids=frozenset({0, 3}))
    return LoadedMoshi(model=model, tokenizer=tokenizer, mimi=mimi, layout="random", source=which), mimi


def build(model: str, batch_size: int, device, dtype):
    from assistant.backends.moshi import MoshiEngine
    from assistant.moshi.loading import resolve_device, resolve_dtype
    from audio.codec import StreamingMimi

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if model in ("tiny", "7b-random"):
        loaded, mimi = _random_parts(model, device, dtype)
        codec = StreamingMimi.from_model(mimi, batch_size=batch_size, device=device)
        return MoshiEngine(loaded, codec, batch_size, profile=True)
    engine = MoshiEngine.from_pretrained(model, batch_size=batch_size, device=device, dtype=dtype)
    engine.profile = True
    return engine


def bench(engine, frames: int, warmup: int) -> dict[str, np.ndarray]:
    """Step `engine` with every slot open on noise input; return per-step timings (ms) per part."""
    for slot in range(engine.batch_size):
        engine.open(slot, SlotOptions(seed=slot))
    rng = np.random.default_rng(0)
    pcm = (0.1 * rng.standard_normal((engine.batch_size, FRAME_SAMPLES))).astype(np.float32)
    times: dict[str, list[float]] = {p: [] for p in PARTS}
    for i in range(warmup + frames):
        t0 = time.perf_counter()
        out = engine.step(pcm)
        wall = (time.perf_counter() - t0) * 1000
        if i >= warmup:
            for part in PARTS:
                times[part].append(wall if part == "total_ms" else out.timings_ms.get(part, float("nan")))
    return {p: np.asarray(v) for p, v in times.items()}


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        batches = [int(b) for b in args.batch.split(",") if b.strip()]
    except ValueError:
        print(f"bench engine: --batch must be comma-separated integers, got {args.batch!r}")
        return 2
    if not batches or min(batches) < 1 or args.frames < 1:
        print("bench engine: batch sizes and --frames must be >= 1")
        return 2
    print(f"model={args.model} device={args.device or 'auto'} frames={args.frames} warmup={args.warmup} "
          f"torch_threads={torch.get_num_threads()}")
    header = f"{'batch':>5} | " + " | ".join(f"{p.removesuffix('_ms'):>18}" for p in PARTS) + " | rt x"
    print("ms per step, median / p99")
    print(header)
    print("-" * len(header))
    for batch in batches:
        engine = build(args.model, batch, args.device, args.dtype)
        times = bench(engine, args.frames, args.warmup)
        cells = [f"{np.median(times[p]):8.2f} / {np.percentile(times[p], 99):7.2f}" for p in PARTS]
        realtime = FRAME_MS / float(np.median(times["total_ms"]))
        print(f"{batch:>5} | " + " | ".join(cells) + f" | {realtime:5.1f}", flush=True)
        del engine
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print("rt x: how many times faster than real time one step is (80 ms of audio per step, all slots)")
    return 0
