"""Static shapes for the Moshi step: batch buckets, compacted rows, and CUDA-graph capture per bucket.

The engine keeps its live sessions in rows [0, n) of every state tensor (a slot -> row map; a
closing slot's hole is filled by moving the last live row into it, once). Each tick steps rows
[0, bucket) with bucket the smallest of `BUCKETS` >= n, so each bucket has fixed shapes and the KV
cache is never gathered. `LMStepRunner` runs that step:

- `eager`: plain PyTorch, any device.
- `cuda-graphs`: one CUDA graph per (bucket, text top-k width, audio top-k width), captured at
  start-up (`warm_up`); a tick whose key has no graph runs eagerly rather than capture on the clock.
- `torch-compile`: `torch.compile(fullgraph=True)` of the same step (backend from
  `ASSISTANT_COMPILE_BACKEND`, default inductor); on CUDA the compiled step is then graph-captured.

Every mode computes the same thing: outputs are identical with and without (tests check eager vs
`torch.compile(backend="eager"|"aot_eager")` on CPU, which also proves there are no graph breaks
or data-dependent shapes).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import fields

import torch

from assistant.moshi.lm import LMStep, MoshiStreamingLM, Sampling

log = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16, 32, 64)
MODES = ("eager", "cuda-graphs", "torch-compile")
_GRAPH_WARMUP_RUNS = 3  # eager runs on a side stream before capture (cuBLAS handles, allocator pools)


def buckets_for(max_rows: int) -> list[int]:
    """The batch buckets an engine of `max_rows` rows steps with: the standard ones below it, then itself."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    return [b for b in BUCKETS if b < max_rows] + [max_rows]


def bucket_for(live: int, buckets: list[int]) -> int:
    """The smallest bucket holding `live` rows (buckets sorted ascending)."""
    for bucket in buckets:
        if bucket >= live:
            return bucket
    raise ValueError(f"{live} live rows exceed the largest bucket {buckets[-1]}")


def topk_width(top_k: int, vocab: int) -> int:
    """Static top-k width for a largest per-row top_k: the next power of two, capped at the vocabulary.

    Few distinct widths means few graphs; sampling is the same for any width >= every row's top_k.
    """
    width = 1
    while width < top_k:
        width *= 2
    return min(width, vocab)


def compile_mode(compile: bool | None, device: torch.device) -> str:
    """The runner mode for a --compile/--no-compile flag (None: env ASSISTANT_COMPILE, default on CUDA only)."""
    if compile is None:
        env = os.environ.get("ASSISTANT_COMPILE", "").strip().lower()
        if env in ("0", "false", "no", "off"):
            compile = False
        elif env in ("1", "true", "yes", "on"):
            compile = True
        elif env:
            raise ValueError(f"ASSISTANT_COMPILE must be 0 or 1, got {env!r}")
        else:
            compile = device.type == "cuda"
    if not compile:
        return "eager"
    backend = os.environ.get("ASSISTANT_COMPILE_BACKEND", "").strip()
    if device.type == "cuda" and not backend:
        return "cuda-graphs"
    return "torch-compile"


def _temporal(lm: MoshiStreamingLM, user_codes: torch.Tensor):
    return lm.step_temporal(user_codes)


def _depth(lm: MoshiStreamingLM, hidden, text_logits, inputs, sampling: Sampling, force_mask, force_text,
           force_audio) -> LMStep:
    return lm.step_depth(hidden, text_logits, inputs, sampling, force_mask, force_text, force_audio)


def _timed(part: Callable, name: str, timings: dict[str, float] | None, device: torch.device):
    """Run part(); with `timings`, wait for the device and record its milliseconds under `name`."""
    if timings is None:
        return part()
    t0 = time.perf_counter()
    out = part()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = (time.perf_counter() - t0) * 1000
    return out


class _Graph:
    """One bucket's step as two CUDA graphs (temporal; sampling + depth), fed from static input buffers.

    Two graphs rather than one so that profiling can time the parts; the second reads the first's
    static outputs directly, so replaying both costs no copy.
    """

    def __init__(self, temporal: Callable, depth: Callable, lm: MoshiStreamingLM, bucket: int, text_kmax: int,
                 audio_kmax: int):
        dev, K = lm.device, lm.num_codebooks
        self.device = dev
        self.codes = torch.zeros(bucket, K, dtype=torch.long, device=dev)
        self.sampling = neutral_sampling(bucket, K, dev, text_kmax, audio_kmax)
        self.force_mask = torch.zeros(bucket, dtype=torch.bool, device=dev)
        self.force_text = torch.zeros(bucket, dtype=torch.long, device=dev)
        self.force_audio = torch.zeros(bucket, K, dtype=torch.long, device=dev)
        forced = (self.force_mask, self.force_text, self.force_audio)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(_GRAPH_WARMUP_RUNS):
                depth(lm, *temporal(lm, self.codes), self.sampling, *forced)
        torch.cuda.current_stream(dev).wait_stream(side)
        self.temporal_graph, self.depth_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.temporal_graph):
            middle = temporal(lm, self.codes)
        with torch.cuda.graph(self.depth_graph, pool=self.temporal_graph.pool()):
            self.out = depth(lm, *middle, self.sampling, *forced)

    def __call__(self, codes, sampling: Sampling, force_mask, force_text, force_audio,
                 timings: dict[str, float] | None) -> LMStep:
        self.codes.copy_(codes, non_blocking=True)
        for f in fields(Sampling):
            value = getattr(sampling, f.name)
            if isinstance(value, torch.Tensor):
                getattr(self.sampling, f.name).copy_(value, non_blocking=True)
        self.force_mask.copy_(force_mask, non_blocking=True)
        self.force_text.copy_(force_text, non_blocking=True)
        self.force_audio.copy_(force_audio, non_blocking=True)
        _timed(self.temporal_graph.replay, "temporal_ms", timings, self.device)
        _timed(self.depth_graph.replay, "depth_ms", timings, self.device)
        return self.out


class LMStepRunner:
    """Runs `MoshiStreamingLM.step` on rows [0, bucket) in one of `MODES`."""

    def __init__(self, lm: MoshiStreamingLM, mode: str = "eager"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "cuda-graphs" and lm.device.type != "cuda":
            raise ValueError(f"cuda-graphs needs the model on a CUDA device, it is on {lm.device}")
        self.lm = lm
        self.mode = mode
        self.buckets = buckets_for(lm.batch_size)
        self._views = {b: lm.first_rows(b) for b in self.buckets}
        self._temporal: Callable = _temporal
        self._depth: Callable = _depth
        if mode == "torch-compile":
            backend = os.environ.get("ASSISTANT_COMPILE_BACKEND", "").strip() or "inductor"
            # one compiled graph per bucket and top-k width: lift dynamo's default limit of 8
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            self._temporal = torch.compile(_temporal, fullgraph=True, dynamic=False, backend=backend)
            self._depth = torch.compile(_depth, fullgraph=True, dynamic=False, backend=backend)
        self._graphs: dict[tuple[int, int, int], _Graph] = {}
        self.eager_fallbacks = 0  # ticks that ran eagerly for want of a captured graph

    @property
    def captures(self) -> bool:
        """Whether this runner replays CUDA graphs (warm-up captures them)."""
        return self.lm.device.type == "cuda" and self.mode in ("cuda-graphs", "torch-compile")

    def warm_up(self, keys: Iterable[tuple[int, int, int]], progress: Callable[[str], None] | None = None) -> None:
        """Capture (or compile) the step for every (bucket, text_kmax, audio_kmax) key, then reset every row.

        Runs the step on garbage state, so call it before any session is open.
        """
        with torch.no_grad():
            for bucket, text_kmax, audio_kmax in keys:
                if self.captures:
                    self._graphs[(bucket, text_kmax, audio_kmax)] = _Graph(
                        self._temporal, self._depth, self._views[bucket], bucket, text_kmax, audio_kmax)
                elif self.mode == "torch-compile":
                    view, K, dev = self._views[bucket], self.lm.num_codebooks, self.lm.device
                    zeros = torch.zeros(bucket, dtype=torch.long, device=dev)
                    self._depth(view, *self._temporal(view, torch.zeros(bucket, K, dtype=torch.long, device=dev)),
                                neutral_sampling(bucket, K, dev, text_kmax, audio_kmax), zeros.bool(), zeros,
                                torch.zeros(bucket, K, dtype=torch.long, device=dev))
                if progress is not None:
                    progress(f"bucket {bucket}")
        self.lm.reset(torch.arange(self.lm.batch_size, device=self.lm.device))

    @torch.no_grad()
    def __call__(self, bucket: int, user_codes: torch.Tensor, sampling: Sampling, force_mask: torch.Tensor,
                 force_text: torch.Tensor, force_audio: torch.Tensor, *, profile: bool = False) -> LMStep:
        """One step of rows [0, bucket); every tensor argument has `bucket` rows and lives on the LM's device.

        profile: time the parts (temporal; sampling + depth) in `timings_ms`, waiting for the device
        after each. With graphs the returned tensors are the graph's static outputs, overwritten by
        the next replay: read them before the next call.
        """
        timings: dict[str, float] | None = {} if profile else None
        view = self._views[bucket]
        if user_codes.is_inference():  # codec output; a compiled step would recompile for the dispatch keys
            user_codes = user_codes.clone()
        if self.captures:
            graph = self._graphs.get((bucket, sampling.text_kmax, sampling.audio_kmax))
            if graph is not None:
                out = graph(user_codes, sampling, force_mask, force_text, force_audio, timings)
                out.timings_ms = timings or {}
                return out
            if not self.eager_fallbacks:
                log.warning("no CUDA graph for bucket %d with top-k widths %d/%d: stepping eagerly", bucket,
                            sampling.text_kmax, sampling.audio_kmax)
            self.eager_fallbacks += 1
            temporal, depth = _temporal, _depth
        else:
            temporal, depth = self._temporal, self._depth
        middle = _timed(lambda: temporal(view, user_codes), "temporal_ms", timings, self.lm.device)
        out = _timed(lambda: depth(view, *middle, sampling, force_mask, force_text, force_audio), "depth_ms",
                     timings, self.lm.device)
        out.timings_ms = timings or {}
        return out


def neutral_sampling(bucket: int, num_codebooks: int, device, text_kmax: int, audio_kmax: int) -> Sampling:
    """Greedy settings for `bucket` rows (what warm-up runs and static buffers start from)."""
    ones = torch.ones(bucket, dtype=torch.long, device=device)
    return Sampling(text_temperature=torch.zeros(bucket, device=device), text_top_k=ones,
                    audio_temperature=torch.zeros(bucket, device=device), audio_top_k=ones.clone(),
                    uniform=torch.zeros(bucket, 1 + num_codebooks, device=device), text_kmax=text_kmax,
                    audio_kmax=audio_kmax)
