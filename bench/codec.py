"""`assistant bench codec`: streaming Mimi encode/decode time per 80 ms frame.

Real-size Mimi (MimiConfig() = kyutai/mimi geometry) with random weights: speed does not depend on
the values. Prints median and p99 ms per frame and the real-time factor for each batch size.
A benchmark: it prints figures and never fails on speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from transformers import MimiConfig, MimiModel

from assistant.engine_args import dtype_name
from audio.frames import FRAME_MS, SAMPLE_RATE_HZ
from audio.mimi.codec import StreamingMimi

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", default="1,4,16", help="comma-separated batch sizes (default 1,4,16)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: cpu)")
    parser.add_argument(
        "--dtype",
        type=dtype_name,
        default="float32",
        choices=sorted(DTYPES),
        help="bfloat16 and float16 (bf16, fp16) on cuda only (default: float32)",
    )
    parser.add_argument("--frames", type=int, default=50, help="timed frames per batch size (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed frames first (default 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument(
        "--parts",
        action="store_true",
        help="also print where the time goes: ms per frame in each part of the codec (first batch size)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also time transformers' own streaming encoder called once per frame, for comparison",
    )


def random_real_size_mimi(seed: int = 0) -> MimiModel:
    """MimiModel(MimiConfig()) with random weights and random (non-zero) codebooks."""
    torch.manual_seed(seed)
    model = MimiModel(MimiConfig()).eval()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "embed_sum") and hasattr(module, "_embed"):
                module.embed_sum.normal_()
                module._embed = None
    return model


def _test_signal(batch: int, frames: int, frame_samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(frames * frame_samples) / SAMPLE_RATE_HZ
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400, (batch, 1)) * t)
    return (tone + 0.05 * rng.standard_normal((batch, t.size))).astype(np.float32)


def _stats(times_ms: list[float]) -> tuple[float, float]:
    return float(np.median(times_ms)), float(np.percentile(times_ms, 99))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_streaming(model: MimiModel, batch: int, args) -> dict[str, float]:
    codec = StreamingMimi.from_model(model, batch, device=args.device, dtype=DTYPES[args.dtype])
    n = codec.frame_samples
    pcm = _test_signal(batch, args.frames + args.warmup, n)
    enc_ms, dec_ms, cpu_ms = [], [], []
    for i in range(args.warmup + args.frames):
        frame = pcm[:, i * n : (i + 1) * n]
        _sync(args.device)
        cpu_start = time.process_time()
        start = time.perf_counter()
        codes = codec.encode(frame)
        middle = time.perf_counter()
        codec.decode(codes)
        _sync(args.device)
        end = time.perf_counter()
        if i >= args.warmup:
            enc_ms.append((middle - start) * 1e3)
            dec_ms.append((end - middle) * 1e3)
            cpu_ms.append((time.process_time() - cpu_start) * 1e3)
    enc, dec = _stats(enc_ms), _stats(dec_ms)
    total = _stats([e + d for e, d in zip(enc_ms, dec_ms, strict=True)])
    return {
        "enc_med": enc[0],
        "enc_p99": enc[1],
        "dec_med": dec[0],
        "dec_p99": dec[1],
        "tot_med": total[0],
        "tot_p99": total[1],
        "cpu_med": _stats(cpu_ms)[0],
    }


class _Timed:
    """Wraps one codec part and adds its wall-clock time per call to `totals[name]`."""

    def __init__(self, part, name: str, totals: dict[str, float], device: str):
        self.part, self.name, self.totals, self.device = part, name, totals, device

    def __getattr__(self, attr):
        return getattr(self.part, attr)

    def __call__(self, *args):
        start = time.perf_counter()
        out = self.part(*args)
        _sync(self.device)
        self.totals[self.name] = self.totals.get(self.name, 0.0) + (time.perf_counter() - start) * 1e3
        return out


def bench_parts(model: MimiModel, batch: int, args) -> dict[str, float]:
    """ms per frame spent in each part: SEANet stacks layer by layer, transformers, (de)quantizer."""
    codec = StreamingMimi.from_model(model, batch, device=args.device, dtype=DTYPES[args.dtype])
    totals: dict[str, float] = {}
    for stack_name in ("_enc_seanet", "_dec_seanet"):
        stack = getattr(codec, stack_name)
        stack.steps = [
            _Timed(step, f"{stack_name[1:]}.{i} {type(step).__name__.lstrip('_')}", totals, args.device)
            if hasattr(step, "reset")
            else step
            for i, step in enumerate(stack.steps)
        ]
    for name in ("_enc_transformer", "_downsample", "_upsample", "_dec_transformer"):
        if getattr(codec, name) is not None:
            setattr(codec, name, _Timed(getattr(codec, name), name[1:], totals, args.device))
    quantizer = codec._quantizer
    quantizer.encode = _Timed(quantizer.encode, "quantizer.encode", totals, args.device)
    quantizer.decode = _Timed(quantizer.decode, "quantizer.decode", totals, args.device)
    n = codec.frame_samples
    pcm = _test_signal(batch, args.frames + args.warmup, n)
    for i in range(args.warmup + args.frames):
        if i == args.warmup:
            totals.clear()
        codec.decode(codec.encode(pcm[:, i * n : (i + 1) * n]))
    return {name: total / args.frames for name, total in totals.items()}


def bench_transformers_encoder(model: MimiModel, batch: int, args) -> tuple[float, float]:
    """transformers' streaming encode (padding_cache + KV cache), one call per frame."""
    n = model.config.frame_size
    pcm = torch.from_numpy(_test_signal(batch, args.frames + args.warmup, n)).to(args.device)
    padding_cache = past = None
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.frames):
            start = time.perf_counter()
            out = model.encode(
                pcm[:, None, i * n : (i + 1) * n],
                num_quantizers=8,
                padding_cache=padding_cache,
                encoder_past_key_values=past,
                use_streaming=True,
                return_dict=True,
            )
            _sync(args.device)
            padding_cache, past = out.padding_cache, out.encoder_past_key_values
            if i >= args.warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return _stats(times)


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device visible to torch", file=sys.stderr)
        return 2
    if args.device == "cpu" and args.dtype != "float32":
        print("on CPU the codec runs in float32 only", file=sys.stderr)
        return 2
    try:
        batches = [int(b) for b in args.batch.split(",") if b.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1 or args.frames < 1:
        print(
            f"--batch wants positive integers like 1,4,16 (got {args.batch!r}); --frames at least 1",
            file=sys.stderr,
        )
        return 2
    load = os.getloadavg()
    print(
        f"streaming Mimi, real size, random weights | device {args.device} {args.dtype} | "
        f"torch threads {torch.get_num_threads()} "
        f"(OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY') or 'unset'}) | "
        f"{args.frames} frames (+{args.warmup} warmup) | load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    model = random_real_size_mimi()
    header = (
        f"{'batch':>5} | {'encode med/p99 ms':>17} | {'decode med/p99 ms':>17} | {'enc+dec med/p99':>15} | "
        f"{'RTF':>5} | {'CPU ms':>6}"
    )
    print(header)
    print("-" * len(header))
    for batch in batches:
        r = bench_streaming(model, batch, args)
        print(
            f"{batch:>5} | {r['enc_med']:>7.1f} / {r['enc_p99']:>7.1f} | {r['dec_med']:>7.1f} / {r['dec_p99']:>7.1f}"
            f" | {r['tot_med']:>6.1f} / {r['tot_p99']:>6.1f} | {r['tot_med'] / FRAME_MS:>5.2f} | {r['cpu_med']:>6.1f}"
        )
    if args.parts:
        parts = bench_parts(model, batches[0], args)
        print(f"where the time goes, batch {batches[0]} (ms per frame, mean):")
        for name, ms in sorted(parts.items(), key=lambda item: -item[1]):
            print(f"  {name:<40} {ms:6.2f}")
        print(f"  {'sum of parts':<40} {sum(parts.values()):6.2f}")
    if args.baseline:
        for batch in batches:
            med, p99 = bench_transformers_encoder(model.to(args.device, torch.float32), batch, args)
            print(f"transformers' own streaming encode, batch {batch}: {med:.1f} ms median, {p99:.1f} ms p99")
    print(
        f"ms are wall-clock per 80 ms frame (all rows together); RTF = enc+dec median / {FRAME_MS:.0f} ms, "
        "below 1 keeps up with real time; CPU ms = process CPU time per frame (all threads), "
        "which other load on the machine inflates less than wall-clock"
    )
    return 0
