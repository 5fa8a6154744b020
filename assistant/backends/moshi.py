"""The `moshi` backend: Mimi encode of the users' frames -> one Moshi step -> Mimi decode, for B slots.

Each slot is a conversation with its own LM rows (token ring, positions, KV cache), codec state,
sampling options and random generator; opening or closing a slot never changes another's output.

Live slots are kept compacted in rows [0, n) of the LM and codec state (a slot -> row map; when a
slot closes, the last live row is moved into its hole), and each tick steps rows [0, bucket) with
bucket the smallest of 1, 2, 4, ..., 64 (and the engine's size) holding n: fixed shapes per bucket,
so the LM step can be replayed as a CUDA graph per bucket (`compile`, see `assistant.moshi.graphs`).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass

import numpy as np
import torch

from assistant.engine import Engine, SlotOptions, StepOutput, checked_context_policy
from assistant.moshi.graphs import StepRunner, bucket_for, compile_mode, topk_width
from assistant.moshi.image_feed import DEFAULT_IMAGE_START, ImageFeed, ImageSlots
from assistant.moshi.lm import Sampling
from assistant.moshi.loading import LoadedMoshi, load_moshi, resolve_device, resolve_dtype
from assistant.moshi.persona import DEFAULT_CHUNK_FRAMES, Prompter, PromptJob
from assistant.moshi.prompt_feed import PromptSlots
from assistant.moshi.random_models import RANDOM_MODELS, random_loaded
from assistant.moshi.vision_lm import streaming_lm

DEFAULT_TEXT_TEMPERATURE = 0.7
DEFAULT_TEXT_TOP_K = 25
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 250
SPEAKING_RMS = 3e-3  # about -50 dBFS: quieter output frames count as the assistant not speaking
log = logging.getLogger(__name__)
_SILENCE_WARMUP_FRAMES = 4  # frames of zeros the encoder sees before its "silence" codes are taken


@dataclass
class _SlotSampling:
    text_temperature: float
    text_top_k: int
    temperature: float
    top_k: int


class MoshiEngine(PromptSlots, ImageSlots, Engine):
    """Moshi + Mimi over `batch_size` slots. Build it with `from_pretrained` (or from parts, in tests)."""

    name = "moshi"

    def __init__(
        self,
        loaded: LoadedMoshi,
        codec,
        batch_size: int,
        *,
        text_temperature: float = DEFAULT_TEXT_TEMPERATURE,
        text_top_k: int = DEFAULT_TEXT_TOP_K,
        temperature: float = DEFAULT_TEMPERATURE,
        top_k: int = DEFAULT_TOP_K,
        context: int | None = None,
        context_policy: str | None = None,
        profile: bool = False,
        compile: bool | None = None,
        quantize: str | None = None,
        warm_up: bool = True,
        prefill: str = "fast",
        prefill_chunk: int = DEFAULT_CHUNK_FRAMES,
        image_start: int = DEFAULT_IMAGE_START,
    ):
        """compile: CUDA-graph the LM step per batch bucket (None: env ASSISTANT_COMPILE, default on CUDA).
        quantize: None or "int8" (None: env ASSISTANT_QUANTIZE), weight-only, applied to loaded.model in place.
        warm_up: capture every bucket now (with a progress bar), so no tick ever waits for a capture.
        prefill: how a prompted model takes a slot's prompt: "fast" (many positions per forward
        pass; while others are live, one pass per tick after their step, as many positions as fit
        half the frame's spare time, at most `prefill_chunk`) or "stepwise" (one position per
        forward, all at once; the reference the fast path is checked against).
        context_policy: one of `CONTEXT_POLICIES`, what a full context window forgets (None: "pin",
        the prompt stays while the conversation slides past it; a model without prompts pins nothing).
        image_start: a vision model's default first step at which a slot's image counts (`set_image`).
        """
        super().__init__(batch_size)
        if codec.batch_size != batch_size:
            raise ValueError(f"codec has {codec.batch_size} rows, engine has {batch_size} slots")
        self.loaded = loaded
        self.model_name = loaded.source
        self.codec = codec
        self.quantize = quantize_option(quantize)
        if self.quantize:
            from assistant.moshi.quantize import quantize_moshi

            quantize_moshi(loaded.model, self.quantize)
        self.context_policy = checked_context_policy(context_policy)
        pin = self.context_policy == "pin" and loaded.takes_prompts
        step_mode = compile_mode(compile, next(loaded.model.parameters()).device)
        self.lm = streaming_lm(
            loaded, batch_size, context=context, static=step_mode != "eager", pin_prompts=pin
        )
        if codec.cardinality != self.lm.card:
            raise ValueError(
                f"Mimi has {codec.cardinality} codes per codebook but the LM expects {self.lm.card}"
            )
        self.profile = profile
        self.defaults = _SlotSampling(
            *_validate_and_clamp(
                text_temperature, text_top_k, temperature, top_k, self.lm.text_card, self.lm.card
            )
        )
        self._sampling = [self.defaults] * batch_size
        self._generators = [torch.Generator() for _ in range(batch_size)]
        self._row_of: dict[int, int] = {}  # live slot -> its row
        self._slot_at: list[int] = []  # the slot in each live row, rows [0, n)
        self._silence_codes = self._measure_silence_codes()
        dev = self.lm.device
        self._force_text = torch.full((batch_size,), loaded.text_pad_id, dtype=torch.long, device=dev)
        self._force_audio = self._silence_codes.expand(batch_size, -1).contiguous()
        self.runner = StepRunner(self.lm, codec, step_mode)
        if prefill not in ("fast", "stepwise"):
            raise ValueError(f"prefill must be 'fast' or 'stepwise', got {prefill!r}")
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.prefill_mode, self.prefill_chunk = prefill, int(prefill_chunk)
        self.prompter = Prompter(self.lm, loaded, codec.model) if loaded.takes_prompts else None
        self.images = ImageFeed(self.lm, image_start) if loaded.takes_images else None
        self._jobs: dict[int, PromptJob | None] = {}  # slot -> its prompt's prefill (None: not built yet)
        self._parked: dict[int, PromptJob] = {}  # held slots whose prompt is in, waiting for `start`
        self._failed: dict[int, str] = {}  # slot -> why its prompt could not be fed (reported once)
        self._broken: set[int] = set()  # slots whose prompt failed: silent until closed
        self._prompt_of: dict[int, tuple[str | None, str | None]] = {}
        self.prefill_stats = {"prompts": 0, "positions": 0, "ms": 0.0}
        self._ms_per_position: float | None = None  # measured cost of a prefill position (moving average)
        self._last_step_ms = 0.0  # the live step of this tick, before any prefill
        self._held = np.zeros(batch_size, dtype=np.int64)  # per slot: positions its context holds
        for slot in range(batch_size):
            self._reset_slot(slot, SlotOptions())
        if warm_up:
            self.warm_up()

    @classmethod
    def from_pretrained(
        cls, model: str | None, *, batch_size: int = 1, device=None, dtype=None, **options
    ) -> MoshiEngine:
        """Load `model` (HF repo id or local dir, Kyutai or HF layout) with its Mimi; options as __init__."""
        if not model:
            raise ValueError("the moshi backend needs --model (a Hugging Face repo id or a checkpoint dir)")
        if model in RANDOM_MODELS:
            return cls.random(model, batch_size=batch_size, device=device, dtype=dtype, **options)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        return cls.from_loaded(
            load_moshi(model, device=device, dtype=dtype), batch_size=batch_size, **options
        )

    @classmethod
    def from_loaded(cls, loaded: LoadedMoshi, *, batch_size: int = 1, **options) -> MoshiEngine:
        """An engine of `batch_size` slots over an already loaded model (several engines may share one)."""
        from transformers import MimiModel

        from audio.mimi.codec import StreamingMimi

        device = next(loaded.model.parameters()).device
        num_codebooks = loaded.model.config.num_codebooks
        # Mimi stays in float32: it is small, and low precision there is heard directly.
        if isinstance(loaded.mimi, MimiModel):
            codec = StreamingMimi.from_model(
                loaded.mimi, batch_size=batch_size, device=device, num_codebooks=num_codebooks
            )
        else:
            codec = StreamingMimi.from_pretrained(
                loaded.mimi,
                batch_size=batch_size,
                device=device,
                num_codebooks=num_codebooks,
                config=loaded.mimi_config,
            )
        return cls(loaded, codec, batch_size, **options)

    @classmethod
    def random(cls, which: str, *, batch_size: int = 1, device=None, dtype=None, **options) -> MoshiEngine:
        """`tiny` or `7b-random`: the architecture with random weights (benchmarks, no download)."""
        device = resolve_device(device)
        loaded = random_loaded(which, device, resolve_dtype(dtype, device))
        return cls.from_loaded(loaded, batch_size=batch_size, **options)

    @staticmethod
    def suggested_batch_size(device=None) -> int:
        """Slots to serve when not told: 1 on CPU; on CUDA as many as fit beside a 7B in bf16, at most 16.

        A 7B slot's ring KV cache (32 layers, 3000 frames, 4096 wide, keys and values, bf16) is ~1.6 GB.
        """
        device = resolve_device(device)
        if device.type != "cuda":
            return 1
        free_bytes, _ = torch.cuda.mem_get_info(device)
        weights, headroom, per_slot = 15.4e9, 6e9, 1.6e9
        return int(max(1, min(16, (free_bytes - weights - headroom) // per_slot)))

    def _new_row(self, slot: int) -> int:
        row = len(self._slot_at)
        self._row_of[slot] = row
        self._slot_at.append(slot)
        self.codec.reset(row)
        return row

    def _row_sampling(self, slot: int) -> Sampling:
        s, dev = self._sampling[slot], self.lm.device
        uniform = torch.rand(1, 1 + self.lm.num_codebooks, generator=self._generators[slot])
        return Sampling(
            text_temperature=torch.tensor([s.text_temperature], device=dev),
            text_top_k=torch.tensor([s.text_top_k], device=dev),
            audio_temperature=torch.tensor([s.temperature], device=dev),
            audio_top_k=torch.tensor([s.top_k], device=dev),
            uniform=uniform.to(dev),
        )

    # -- slots -----------------------------------------------------------------------------------
    def open(self, slot: int, options: SlotOptions | None = None, held: bool = False) -> None:
        """held: no row until `start` (a prompt is prefilled meanwhile, then waits); in the
        "stepwise" prefill mode a prompted slot gets its row as soon as its prompt is in."""
        self._check_slot(slot)
        if self.live[slot]:
            raise RuntimeError(f"slot {slot} is already open")
        options = options or SlotOptions()
        if self.prompter is not None:
            self.prompter.check(options.instructions, options.voice)  # refuse before anything changes
            super().open(slot, options, held)
            self._failed.pop(slot, None)
            self._broken.discard(slot)
            self._start_prompt(slot, options)
            return
        if held:
            super().open(slot, options, held)
            return
        self._row_of[slot] = len(self._slot_at)
        self._slot_at.append(slot)
        try:
            super().open(slot, options)
        except Exception:
            del self._row_of[slot]
            self._slot_at.pop()
            raise

    def start(self, slot: int) -> None:
        super().start(slot)
        if slot in self._parked:
            self._activate(slot, self._parked.pop(slot))
        elif self.live[slot] and self.prompter is None and slot not in self._row_of:
            self.lm.reset(self._new_row(slot))
        if self.images is not None and slot in self._row_of:
            self.images.place(slot, self._row_of[slot])  # an image encoded while the slot was held

    def reset_encoder(self, slot: int) -> None:
        super().reset_encoder(slot)
        if slot in self._row_of:
            self.codec.reset_encoder(self._row_of[slot])

    def close(self, slot: int) -> None:
        self._check_slot(slot)
        was_live = bool(self.live[slot])
        self._jobs.pop(slot, None)
        self._parked.pop(slot, None)
        self._prompt_of.pop(slot, None)
        self._failed.pop(slot, None)
        self._broken.discard(slot)
        if self.images is not None:
            self.images.forget(slot)
        super().close(slot)
        if was_live and slot in self._row_of:
            self._release_row(slot)

    def _release_row(self, slot: int) -> None:
        """Fill the closed slot's row with the last live row (once, now), so live rows stay [0, n)."""
        hole, last = self._row_of.pop(slot), len(self._slot_at) - 1
        moved = self._slot_at.pop()
        if hole != last:
            self.lm.move_row(last, hole)
            self.codec.copy_row(last, hole)
            self._slot_at[hole] = moved
            self._row_of[moved] = hole
        self.lm.reset(last)
        self.codec.reset(last)

    def row_of(self, slot: int) -> int | None:
        """The state row of a live slot (None when closed): rows move when other slots close."""
        return self._row_of.get(slot)

    def _reset_slot(self, slot: int, options: SlotOptions) -> None:
        self._held[slot] = 0
        row = self._row_of.get(slot)
        if row is not None:
            self.lm.reset(row)
            self.codec.reset(row)
        self._apply_options(slot, options, reseed=True)

    def update(self, slot: int, options: SlotOptions) -> None:
        """New sampling options apply from the next frame. A new prompt (instructions or voice)
        starts the slot's model context over with it: the model forgets the conversation so far."""
        self._check_slot(slot)
        if (
            self.prompter is not None
            and self.live[slot]
            and self._prompt_key(options) != self._prompt_of.get(slot)
        ):
            self.prompter.check(options.instructions, options.voice)
            self._apply_options(slot, options, reseed=options.seed is not None)
            self._jobs.pop(slot, None)
            self._parked.pop(slot, None)
            self._broken.discard(slot)
            if slot in self._row_of:
                self._release_row(slot)
            self._start_prompt(slot, options)
            return
        self._apply_options(slot, options, reseed=options.seed is not None)

    def _apply_options(self, slot: int, options: SlotOptions, reseed: bool) -> None:
        current = self.defaults if reseed else self._sampling[slot]
        self._sampling[slot] = _SlotSampling(
            *_validate_and_clamp(
                _given_or(options.text_temperature, current.text_temperature),
                _given_or(options.text_top_k, current.text_top_k),
                _given_or(options.temperature, current.temperature),
                _given_or(options.top_k, current.top_k),
                self.lm.text_card,
                self.lm.card,
            )
        )
        if reseed:
            seed = options.seed if options.seed is not None else secrets.randbits(63)
            self._generators[slot].manual_seed(int(seed))

    # -- the step --------------------------------------------------------------------------------
    def warm_up(self, buckets: list[int] | None = None) -> None:
        """Capture the LM step of every batch bucket (default sampling widths) before sessions arrive.

        buckets: only these (default all). Nothing to do when the step runs eagerly. Resets every LM
        row, so it refuses while slots are open.
        """
        if self.runner.mode == "eager":
            return
        if self._slot_at:
            raise RuntimeError("warm_up resets the model state; call it before opening slots")
        from rich.progress import Progress

        widths = (
            topk_width(self.defaults.text_top_k, self.lm.text_card),
            topk_width(self.defaults.top_k, self.lm.card),
        )
        keys = [(bucket, *widths) for bucket in (buckets or self.runner.buckets)]
        with Progress(transient=True) as progress:
            task = progress.add_task(
                f"{self.runner.mode}: warming up {len(keys)} batch buckets", total=len(keys)
            )

            def advance(what: str) -> None:
                progress.update(task, description=f"{self.runner.mode}: {what}")
                progress.advance(task)

            try:
                self.runner.warm_up(keys, advance)
            except (
                Exception
            ):  # a model or driver the capture does not support: serve, slower, rather than not
                log.exception(
                    "%s warm-up failed; stepping eagerly instead (ASSISTANT_COMPILE=0 skips it)",
                    self.runner.mode,
                )
                self.runner = StepRunner(self.lm, self.codec, "eager")
                self.lm.reset(torch.arange(self.batch_size, device=self.lm.device))
                self.codec.reset_all()

    def _step(self, pcm_in: np.ndarray) -> StepOutput:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        B, n = self.batch_size, len(self._slot_at)
        pcm_out = np.zeros((B, self.frame_samples), dtype=np.float32)
        text = [""] * B
        if n == 0:  # nobody to serve: no model work beyond pending prompts
            self._last_step_ms = 0.0
            timings = {"prefill_ms": self._advance_prompts()} if self._jobs else {}
            timings["total_ms"] = (time.perf_counter() - t0) * 1000
            return StepOutput(
                pcm_out=pcm_out,
                text=text,
                speaking=np.zeros(B, dtype=bool),
                timings_ms=timings,
                failed=self._take_failures(),
            )
        slots = np.asarray(self._slot_at)
        bucket = bucket_for(n, self.runner.buckets)
        rows_pcm = np.zeros((bucket, self.frame_samples), dtype=np.float32)
        rows_pcm[:n] = pcm_in[slots]
        dev = self.lm.device
        silenced = torch.zeros(bucket, dtype=torch.bool)
        silenced[:n] = torch.from_numpy(self.silenced[slots])
        step_args = (
            self._sampling_tensors(bucket),
            silenced.to(dev),
            self._force_text[:bucket],
            self._force_audio[:bucket],
        )
        if self.runner.mode == "eager":
            tokens, pcm = self._eager_step(n, bucket, rows_pcm, step_args, timings)
        else:
            t1 = time.perf_counter()
            pcm_rows, out = self.runner.frame(
                bucket, torch.from_numpy(rows_pcm).to(dev), *step_args, profile=self.profile
            )
            # one device -> host copy per output: text, 8 audio codes and ready; the audio
            tokens = torch.cat([out.text[:n, None], out.audio[:n], out.ready[:n, None].long()], dim=1).cpu()
            pcm = pcm_rows[:n].cpu()
            self.codec.frames_encoded[:n] += 1
            self.codec.frames_decoded[:n] += tokens[:, -1].numpy()
            timings["device_step_ms"] = (time.perf_counter() - t1) * 1000
            timings.update(out.timings_ms)
        ready = tokens[:, -1].bool()

        pcm = pcm.numpy().astype(np.float32, copy=False)
        quiet = ~ready.numpy() | self.silenced[slots]
        pcm[quiet] = 0.0  # a silenced slot, or one with no complete frame yet, outputs exact silence
        np.clip(pcm, -1.0, 1.0, out=pcm)
        pcm_out[slots] = pcm
        self._held[slots] += 1
        text_ids = tokens[:, 0].tolist()
        for row, slot in enumerate(self._slot_at):
            if not quiet[row]:
                text[slot] = self.loaded.tokenizer.piece(text_ids[row])
        speaking = np.zeros(B, dtype=bool)
        speaking[slots] = ~quiet & (np.sqrt(np.mean(pcm**2, axis=1)) > SPEAKING_RMS)
        if self._jobs:
            self._last_step_ms = (time.perf_counter() - t0) * 1000
            timings["prefill_ms"] = self._advance_prompts()
        if self.images is not None and self.images.jobs:
            timings["image_ms"] = self._advance_images(t0, all_now=False)
        timings["total_ms"] = (time.perf_counter() - t0) * 1000
        return StepOutput(
            pcm_out=pcm_out, text=text, speaking=speaking, timings_ms=timings, failed=self._take_failures()
        )

    def _take_failures(self) -> dict[int, str]:
        failed, self._failed = self._failed, {}
        return failed

    def _eager_step(self, n: int, bucket: int, rows_pcm: np.ndarray, step_args, timings: dict[str, float]):
        """The codec's own masked encode / decode around the LM step: (tokens long (n, 1 + K + 1): text, K audio codes, ready; pcm (n, samples))."""
        B, dev = self.batch_size, self.lm.device
        t0 = time.perf_counter()
        live_rows = torch.zeros(B, dtype=torch.bool)
        live_rows[:n] = True
        all_pcm = np.zeros((B, self.frame_samples), dtype=np.float32)
        all_pcm[:bucket] = rows_pcm
        codes = self.codec.encode(all_pcm, mask=live_rows if n < B else None)
        timings["codec_encode_ms"] = (time.perf_counter() - t0) * 1000

        t1 = time.perf_counter()
        out = self.runner.lm_step(bucket, codes[:bucket].to(dev), *step_args, profile=self.profile)
        # one device -> host copy: text, 8 audio codes, ready, per live row
        tokens = torch.cat([out.text[:n, None], out.audio[:n], out.ready[:n, None].long()], dim=1).cpu()
        timings["lm_ms"] = (time.perf_counter() - t1) * 1000
        timings.update(out.timings_ms)

        t2 = time.perf_counter()
        ready = torch.zeros(B, dtype=torch.bool)
        ready[:n] = tokens[:, -1].bool()
        rows_codes = torch.zeros(B, self.lm.num_codebooks, dtype=torch.long)
        rows_codes[:n] = tokens[:, 1:-1].clamp(0, self.lm.card - 1)
        pcm = self.codec.decode(rows_codes, mask=ready if not ready.all() else None)
        timings["codec_decode_ms"] = (time.perf_counter() - t2) * 1000
        return tokens, pcm[:n]

    def _sampling_tensors(self, bucket: int) -> Sampling:
        """Sampling settings and this frame's draws for rows [0, bucket); idle rows get the defaults."""
        dev, n = self.lm.device, len(self._slot_at)
        s = [self._sampling[slot] for slot in self._slot_at] + [self.defaults] * (bucket - n)
        uniform = torch.zeros(bucket, 1 + self.lm.num_codebooks)
        for row, slot in enumerate(self._slot_at):
            uniform[row] = torch.rand(1 + self.lm.num_codebooks, generator=self._generators[slot])
        return Sampling(
            text_temperature=torch.tensor([x.text_temperature for x in s], device=dev),
            text_top_k=torch.tensor([x.text_top_k for x in s], device=dev),
            audio_temperature=torch.tensor([x.temperature for x in s], device=dev),
            audio_top_k=torch.tensor([x.top_k for x in s], device=dev),
            uniform=uniform.to(dev),
            # static widths (powers of two, the defaults always included): one graph serves most ticks
            text_kmax=topk_width(
                max(self.defaults.text_top_k, *(x.text_top_k for x in s)), self.lm.text_card
            ),
            audio_kmax=topk_width(max(self.defaults.top_k, *(x.top_k for x in s)), self.lm.card),
        )

    def _measure_silence_codes(self) -> torch.Tensor:
        """The codes Mimi gives to digital silence once its state has settled: long (1, K)."""
        zeros = np.zeros((self.batch_size, self.frame_samples), dtype=np.float32)
        mask = torch.zeros(self.batch_size, dtype=torch.bool)
        mask[0] = True
        for _ in range(_SILENCE_WARMUP_FRAMES):
            codes = self.codec.encode(zeros, mask=mask)
        self.codec.reset(0)
        return codes[:1].to(self.lm.device)

    def context_fill(self, slot: int) -> float | None:
        if not self.live[slot]:
            return None
        return min(int(self._held[slot]), self.lm.context) / self.lm.context

    def describe(self) -> dict:
        d = self.defaults
        return super().describe() | {
            "layout": self.loaded.layout,
            "model_type": self.loaded.model_type,
            "takes_prompts": self.takes_prompts,
            "takes_images": self.takes_images,
            "voices": len(self.voices()),
            "prefill": self.prefill_mode,
            "device": str(self.lm.device),
            "dtype": str(self.lm.dtype).removeprefix("torch."),
            "context_frames": self.lm.context,
            "context_policy": self.context_policy,
            "step_mode": self.runner.mode,
            "batch_buckets": self.runner.buckets,
            "quantize": self.quantize or "none",
            "text_temperature": d.text_temperature,
            "text_top_k": d.text_top_k,
            "temperature": d.temperature,
            "top_k": d.top_k,
        }


def quantize_option(value: str | None) -> str | None:
    """--quantize value, or env ASSISTANT_QUANTIZE when None; "none" / "" mean off."""
    from assistant.moshi.quantize import MODES

    if value is None:
        value = os.environ.get("ASSISTANT_QUANTIZE", "")
    value = value.strip().lower()
    if value in ("", "none", "off", "0"):
        return None
    if value not in MODES:
        raise ValueError(f"quantize must be one of none, {', '.join(MODES)}; got {value!r}")
    return value


def _given_or(value, current):
    """An option the caller set, else the slot's current one."""
    return current if value is None else value


def _validate_and_clamp(text_temperature, text_top_k, temperature, top_k, text_card: int, card: int):
    """Sampling options, validated, with each top-k clamped to its vocabulary (< 1: the whole of it)."""
    for name, value in (("text_temperature", text_temperature), ("temperature", temperature)):
        if not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a number >= 0 (0 = greedy), got {value!r}")
    for name, value in (("text_top_k", text_top_k), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    text_top_k = text_card if text_top_k < 1 else min(text_top_k, text_card)
    top_k = card if top_k < 1 else min(top_k, card)
    return float(text_temperature), int(text_top_k), float(temperature), int(top_k)
