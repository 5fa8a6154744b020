"""Static shapes for the Moshi frame step: batch buckets, compacted rows, CUDA-graph capture per bucket.

The engine keeps its live sessions in rows [0, n) of every state tensor (a slot -> row map; a
closing slot's hole is filled by moving the last live row into it, once). Each tick steps rows
[0, bucket) with bucket the smallest of `BUCKETS` >= n, so each bucket has fixed shapes and no
state is gathered per step. `StepRunner` runs that step:

- `eager`: the LM step in plain PyTorch; the engine calls the codec's own (masked) encode / decode.
- `cuda-graphs`: the whole frame (Mimi encode, temporal transformer, sampling + 8 depth steps,
  Mimi decode; `StaticMimi` runs the codec on rows [0, bucket) with in-place state) captured per
  (bucket, text top-k width, audio top-k width) at start-up (`warm_up`); a tick whose key has no
  graph runs eagerly rather than capture on the clock.
- `torch-compile`: the same four parts through `torch.compile(fullgraph=True)` (backend from
  `ASSISTANT_COMPILE_BACKEND`, default inductor); on CUDA the compiled parts are then captured.

Every mode computes the same thing: tests check eager against `torch.compile(backend="eager")` on
CPU (identical audio and text), which also proves there are no graph breaks or data-dependent shapes.
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


class StaticMimi:
    """`StreamingMimi` encode / decode of rows [0, bucket): static shapes, state updated in place.

    The codec's own calls take a row mask (data-dependent rows), copy codes to the host and rebind
    their state tensors; none of that can be captured. This runs the same streaming parts with
    every state narrowed to rows [0, bucket) and copies each new state back in place, so a CUDA
    graph of it advances the codec. Decoding keeps rows that are not `ready` as they were (fresh:
    a row is not ready only before its first complete frame), which is what the codec's mask does.
    """

    def __init__(self, codec):
        self.codec = codec
        # the codec builds its tensors under inference_mode; those cannot be updated in place (or
        # traced by torch.compile) outside it, so this codec's tensors become ordinary ones, once
        _to_normal_tensors(codec, set())
        self.encoder = _stateful_leaves([codec._enc_seanet, codec._enc_transformer, codec._downsample])
        self.decoder = _stateful_leaves([codec._upsample, codec._dec_transformer, codec._dec_seanet])

    def encode(self, bucket: int, pcm: torch.Tensor) -> torch.Tensor:
        """pcm: float32 (bucket, frame_samples) on the codec's device -> codes long (bucket, K)."""
        c = self.codec

        def run():
            x = pcm.to(c.dtype)[:, None, :]
            h = c._enc_seanet(x, None)
            h = c._enc_transformer(h.transpose(1, 2), None).transpose(1, 2)
            if c._downsample is not None:
                h = c._downsample(h, None)
            return c._quantizer.encode(h[..., 0])

        return _on_rows(self.encoder, bucket, run, keep=None)

    def decode(self, bucket: int, codes: torch.Tensor, ready: torch.Tensor) -> torch.Tensor:
        """codes: long (bucket, K) in [0, cardinality); ready: bool (bucket,) -> pcm float32 (bucket, samples)."""
        c = self.codec

        def run():
            latents = c._quantizer.decode(codes).to(c.dtype)[..., None]
            if c._upsample is not None:
                latents = c._upsample(latents, None)
            h = c._dec_transformer(latents.transpose(1, 2), None).transpose(1, 2)
            return c._dec_seanet(h, None)[:, 0].float()

        return _on_rows(self.decoder, bucket, run, keep=ready)


_TRANSFORMER_STATE = ("keys", "values", "slot_pos", "offset")


def _stateful_leaves(parts) -> list:
    """The codec objects holding per-row state: streaming convolutions and transformers."""
    leaves, pending = [], [p for p in parts if p is not None]
    while pending:
        part = pending.pop(0)
        if hasattr(part, "slot_pos") or isinstance(getattr(part, "state", None), torch.Tensor):
            leaves.append(part)
        pending.extend(step for step in getattr(part, "steps", []) if hasattr(step, "reset"))
        if getattr(part, "shortcut", None) is not None:
            pending.append(part.shortcut)
    return leaves


def _on_rows(leaves: list, bucket: int, run: Callable, keep: torch.Tensor | None):
    """run() with every leaf's state narrowed to rows [0, bucket), then written back in place.

    keep: bool (bucket,); rows where False get their pre-call (fresh) state back.
    """
    saved = []
    for leaf in leaves:
        if hasattr(leaf, "slot_pos"):  # transformer: (layer, row, ...) caches updated in place through views
            full = {n: getattr(leaf, n) for n in _TRANSFORMER_STATE}
            before = (
                {"slot_pos": leaf.slot_pos[:bucket].clone(), "offset": leaf.offset[:bucket].clone()}
                if keep is not None
                else None
            )
            leaf.keys, leaf.values = full["keys"][:, :bucket], full["values"][:, :bucket]
            leaf.slot_pos, leaf.offset = full["slot_pos"][:bucket], full["offset"][:bucket]
        else:  # convolution: its call rebinds `state` to a new tensor
            full = {"state": leaf.state, "fresh": getattr(leaf, "fresh", None)}
            before = (
                {"fresh": full["fresh"][:bucket].clone()}
                if keep is not None and full["fresh"] is not None
                else None
            )
            leaf.state = full["state"][:bucket]
            if full["fresh"] is not None:
                leaf.fresh = full["fresh"][:bucket]
        saved.append((leaf, full, before))
    try:
        out = run()
        for leaf, full, before in saved:
            if hasattr(leaf, "slot_pos"):
                if (
                    keep is not None
                ):  # keys written for rows not kept are unreachable once their slots are empty
                    leaf.slot_pos.copy_(torch.where(keep[:, None], leaf.slot_pos, before["slot_pos"]))
                    leaf.offset.copy_(torch.where(keep, leaf.offset, before["offset"]))
            else:
                new = (
                    leaf.state
                    if keep is None
                    else torch.where(keep[:, None, None], leaf.state, full["state"][:bucket])
                )
                full["state"][:bucket].copy_(new)
                if before is not None:
                    full["fresh"][:bucket].copy_(torch.where(keep, leaf.fresh, before["fresh"]))
    finally:  # the codec's own calls must find its full-batch state again, even after an error
        for leaf, full, _ in saved:
            for name, tensor in full.items():
                if tensor is not None:
                    setattr(leaf, name, tensor)
    return out


def _to_normal_tensors(obj, seen: set[int]):
    """Replace inference tensors reachable from a codec object by ordinary clones (in place)."""
    if isinstance(obj, torch.Tensor):
        return obj.clone() if obj.is_inference() else obj
    if isinstance(obj, list):
        obj[:] = [_to_normal_tensors(x, seen) for x in obj]
        return obj
    if isinstance(obj, tuple):
        return tuple(_to_normal_tensors(x, seen) for x in obj)
    if isinstance(obj, torch.nn.Module) or id(obj) in seen or not type(obj).__module__.startswith("audio."):
        return obj
    seen.add(id(obj))
    for name, value in list(vars(obj).items()):
        setattr(obj, name, _to_normal_tensors(value, seen))
    return obj


def _encode(mimi: StaticMimi, bucket: int, pcm: torch.Tensor) -> torch.Tensor:
    return mimi.encode(bucket, pcm)


def _temporal(lm: MoshiStreamingLM, user_codes: torch.Tensor):
    return lm.step_temporal(user_codes)


def _depth(
    lm: MoshiStreamingLM, hidden, text_logits, inputs, sampling: Sampling, force_mask, force_text, force_audio
) -> LMStep:
    return lm.step_depth(hidden, text_logits, inputs, sampling, force_mask, force_text, force_audio)


def _decode(mimi: StaticMimi, bucket: int, step: LMStep) -> torch.Tensor:
    return mimi.decode(bucket, step.audio.clamp(0, mimi.codec.cardinality - 1), step.ready)


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


class _Parts:
    """The four parts of a frame step (plain functions, or torch.compile'd ones)."""

    def __init__(self, compile_backend: str | None):
        self.encode, self.temporal, self.depth, self.decode = _encode, _temporal, _depth, _decode
        if compile_backend:
            # one compiled graph per part, bucket and top-k width: lift dynamo's default limit of 8
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            compiled = [
                torch.compile(f, fullgraph=True, dynamic=False, backend=compile_backend)
                for f in (_encode, _temporal, _depth, _decode)
            ]
            self.encode, self.temporal, self.depth, self.decode = compiled

    def frame(self, mimi, lm, bucket, pcm, sampling, force_mask, force_text, force_audio, timings=None):
        """Mimi encode -> temporal -> sampling + depth -> Mimi decode; returns (pcm (bucket, samples), LMStep)."""
        dev = lm.device
        codes = _timed(lambda: self.encode(mimi, bucket, pcm), "codec_encode_ms", timings, dev)
        middle = _timed(lambda: self.temporal(lm, codes), "temporal_ms", timings, dev)
        step = _timed(
            lambda: self.depth(lm, *middle, sampling, force_mask, force_text, force_audio),
            "depth_ms",
            timings,
            dev,
        )
        out = _timed(lambda: self.decode(mimi, bucket, step), "codec_decode_ms", timings, dev)
        return out, step


class _Graph:
    """One bucket's frame step as four CUDA graphs (encode, temporal, depth, decode) over static buffers.

    Four graphs rather than one so that profiling can time the parts; each reads the previous one's
    static outputs directly and they share one memory pool (replayed in capture order), so
    replaying all four costs no copy.
    """

    def __init__(
        self,
        parts: _Parts,
        mimi: StaticMimi,
        lm: MoshiStreamingLM,
        bucket: int,
        text_kmax: int,
        audio_kmax: int,
    ):
        dev, K = lm.device, lm.num_codebooks
        self.device = dev
        self.pcm = torch.zeros(bucket, mimi.codec.frame_samples, device=dev)
        self.sampling = neutral_sampling(bucket, K, dev, text_kmax, audio_kmax)
        self.force_mask = torch.zeros(bucket, dtype=torch.bool, device=dev)
        self.force_text = torch.zeros(bucket, dtype=torch.long, device=dev)
        self.force_audio = torch.zeros(bucket, K, dtype=torch.long, device=dev)
        forced = (self.force_mask, self.force_text, self.force_audio)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(_GRAPH_WARMUP_RUNS):
                parts.frame(mimi, lm, bucket, self.pcm, self.sampling, *forced)
        torch.cuda.current_stream(dev).wait_stream(side)
        self.graphs = [torch.cuda.CUDAGraph() for _ in range(4)]
        pool = None
        with torch.cuda.graph(self.graphs[0]):
            codes = parts.encode(mimi, bucket, self.pcm)
        pool = self.graphs[0].pool()
        with torch.cuda.graph(self.graphs[1], pool=pool):
            middle = parts.temporal(lm, codes)
        with torch.cuda.graph(self.graphs[2], pool=pool):
            self.step = parts.depth(lm, *middle, self.sampling, *forced)
        with torch.cuda.graph(self.graphs[3], pool=pool):
            self.out = parts.decode(mimi, bucket, self.step)
        self._between = (
            codes,
            middle,
        )  # outputs one graph hands the next: their pool memory must stay theirs

    def __call__(
        self, pcm, sampling: Sampling, force_mask, force_text, force_audio, timings: dict[str, float] | None
    ):
        self.pcm.copy_(pcm, non_blocking=True)
        for f in fields(Sampling):
            value = getattr(sampling, f.name)
            if isinstance(value, torch.Tensor):
                getattr(self.sampling, f.name).copy_(value, non_blocking=True)
        self.force_mask.copy_(force_mask, non_blocking=True)
        self.force_text.copy_(force_text, non_blocking=True)
        self.force_audio.copy_(force_audio, non_blocking=True)
        for graph, name in zip(
            self.graphs, ("codec_encode_ms", "temporal_ms", "depth_ms", "codec_decode_ms"), strict=True
        ):
            _timed(graph.replay, name, timings, self.device)
        return self.out, self.step


class StepRunner:
    """Runs the frame step on rows [0, bucket) in one of `MODES`.

    eager: `lm_step` only (the engine calls the codec's own encode / decode around it).
    cuda-graphs / torch-compile: `frame`, the whole step (Mimi encode, LM, Mimi decode) on the device.
    """

    def __init__(self, lm: MoshiStreamingLM, codec, mode: str = "eager"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "cuda-graphs" and lm.device.type != "cuda":
            raise ValueError(f"cuda-graphs needs the model on a CUDA device, it is on {lm.device}")
        if codec.device.type != lm.device.type:
            raise ValueError(f"Mimi runs on {codec.device} but the LM on {lm.device}")
        self.lm = lm
        self.mode = mode
        self.buckets = buckets_for(lm.batch_size)
        self._views = {b: lm.first_rows(b) for b in self.buckets}
        backend = (
            (os.environ.get("ASSISTANT_COMPILE_BACKEND", "").strip() or "inductor")
            if mode == "torch-compile"
            else None
        )
        self._parts = _Parts(backend)
        self.mimi = StaticMimi(codec) if mode != "eager" else None
        self._graphs: dict[tuple[int, int, int], _Graph] = {}
        self.eager_fallbacks = 0  # ticks that ran eagerly for want of a captured graph

    @property
    def captures(self) -> bool:
        """Whether this runner replays CUDA graphs (warm-up captures them)."""
        return self.lm.device.type == "cuda" and self.mode != "eager"

    def warm_up(
        self, keys: Iterable[tuple[int, int, int]], progress: Callable[[str], None] | None = None
    ) -> None:
        """Capture (or compile) the step for every (bucket, text_kmax, audio_kmax) key, then reset every row.

        Runs the step on garbage state, so call it before any session is open.
        """
        if self.mode == "eager":
            return
        codec = self.mimi.codec
        with torch.no_grad():
            for bucket, text_kmax, audio_kmax in keys:
                view = self._views[bucket]
                if self.captures:
                    self._graphs[(bucket, text_kmax, audio_kmax)] = _Graph(
                        self._parts, self.mimi, view, bucket, text_kmax, audio_kmax
                    )
                else:
                    K, dev = self.lm.num_codebooks, self.lm.device
                    zeros = torch.zeros(bucket, dtype=torch.long, device=dev)
                    self._parts.frame(
                        self.mimi,
                        view,
                        bucket,
                        torch.zeros(bucket, codec.frame_samples, device=dev),
                        neutral_sampling(bucket, K, dev, text_kmax, audio_kmax),
                        zeros.bool(),
                        zeros,
                        torch.zeros(bucket, K, dtype=torch.long, device=dev),
                    )
                if progress is not None:
                    progress(f"bucket {bucket}")
        self.lm.reset(torch.arange(self.lm.batch_size, device=self.lm.device))
        codec.reset_all()

    @torch.no_grad()
    def lm_step(
        self,
        bucket: int,
        user_codes: torch.Tensor,
        sampling: Sampling,
        force_mask: torch.Tensor,
        force_text: torch.Tensor,
        force_audio: torch.Tensor,
        *,
        profile: bool = False,
    ) -> LMStep:
        """Eager mode: one LM step of rows [0, bucket); tensors have `bucket` rows, on the LM's device."""
        timings: dict[str, float] | None = {} if profile else None
        view, dev = self._views[bucket], self.lm.device
        middle = _timed(lambda: _temporal(view, user_codes), "temporal_ms", timings, dev)
        out = _timed(
            lambda: _depth(view, *middle, sampling, force_mask, force_text, force_audio),
            "depth_ms",
            timings,
            dev,
        )
        out.timings_ms = timings or {}
        return out

    @torch.no_grad()
    def frame(
        self,
        bucket: int,
        pcm: torch.Tensor,
        sampling: Sampling,
        force_mask: torch.Tensor,
        force_text: torch.Tensor,
        force_audio: torch.Tensor,
        *,
        profile: bool = False,
    ):
        """Compiled modes: the whole frame step of rows [0, bucket) -> (pcm out (bucket, samples), LMStep).

        pcm: float32 (bucket, samples) on the device. profile: time the four parts in the LMStep's
        `timings_ms`, waiting for the device after each. With graphs the returned tensors are the
        graph's static outputs, overwritten by the next replay: read them before the next call.
        """
        if self.mode == "eager":
            raise RuntimeError(
                "the eager runner steps the LM only (lm_step); the engine runs the codec itself"
            )
        timings: dict[str, float] | None = {} if profile else None
        args = (pcm, sampling, force_mask, force_text, force_audio)
        graph = self._graphs.get((bucket, sampling.text_kmax, sampling.audio_kmax)) if self.captures else None
        if graph is not None:
            out, step = graph(*args, timings)
        else:
            if self.captures:
                if not self.eager_fallbacks:
                    log.warning(
                        "no CUDA graph for bucket %d with top-k widths %d/%d: stepping eagerly",
                        bucket,
                        sampling.text_kmax,
                        sampling.audio_kmax,
                    )
                self.eager_fallbacks += 1
            parts = self._parts if not self.captures else _Parts(None)
            out, step = parts.frame(self.mimi, self._views[bucket], bucket, *args, timings=timings)
        step.timings_ms = timings or {}
        return out, step


def neutral_sampling(bucket: int, num_codebooks: int, device, text_kmax: int, audio_kmax: int) -> Sampling:
    """Greedy settings for `bucket` rows (what warm-up runs and static buffers start from)."""
    ones = torch.ones(bucket, dtype=torch.long, device=device)
    return Sampling(
        text_temperature=torch.zeros(bucket, device=device),
        text_top_k=ones,
        audio_temperature=torch.zeros(bucket, device=device),
        audio_top_k=ones.clone(),
        uniform=torch.zeros(bucket, 1 + num_codebooks, device=device),
        text_kmax=text_kmax,
        audio_kmax=audio_kmax,
    )
