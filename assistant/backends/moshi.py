"""The `moshi` backend: Mimi encode of the users' frames -> one Moshi step -> Mimi decode, for B slots.

Each slot is a conversation with its own LM rows (token ring, positions, KV cache), codec state,
sampling options and random generator; opening or closing a slot never changes another's output.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import numpy as np
import torch

from assistant.engine import Engine, SlotOptions, StepOutput
from assistant.moshi.lm import MoshiStreamingLM, Sampling
from assistant.moshi.loading import LoadedMoshi, load_moshi, resolve_device, resolve_dtype

DEFAULT_TEXT_TEMPERATURE = 0.7
DEFAULT_TEXT_TOP_K = 25
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 250
SPEAKING_RMS = 3e-3  # about -50 dBFS: quieter output frames count as the assistant not speaking
_SILENCE_WARMUP_FRAMES = 4  # frames of zeros the encoder sees before its "silence" codes are taken


@dataclass
class _SlotSampling:
    text_temperature: float
    text_top_k: int
    temperature: float
    top_k: int


class MoshiEngine(Engine):
    """Moshi + Mimi over `batch_size` slots. Build it with `from_pretrained` (or from parts, in tests)."""

    name = "moshi"

    def __init__(self, loaded: LoadedMoshi, codec, batch_size: int, *,
                 text_temperature: float = DEFAULT_TEXT_TEMPERATURE, text_top_k: int = DEFAULT_TEXT_TOP_K,
                 temperature: float = DEFAULT_TEMPERATURE, top_k: int = DEFAULT_TOP_K,
                 context: int | None = None, profile: bool = False):
        super().__init__(batch_size)
        if codec.batch_size != batch_size:
            raise ValueError(f"codec has {codec.batch_size} rows, engine has {batch_size} slots")
        self.loaded = loaded
        self.model_name = loaded.source
        self.codec = codec
        self.lm = MoshiStreamingLM(loaded.model, batch_size, delays=loaded.delays, context=context)
        if codec.cardinality != self.lm.card:
            raise ValueError(f"Mimi has {codec.cardinality} codes per codebook but the LM expects {self.lm.card}")
        self.profile = profile
        self.defaults = _SlotSampling(*_checked(text_temperature, text_top_k, temperature, top_k,
                                                self.lm.text_card, self.lm.card))
        self._sampling = [self.defaults] * batch_size
        self._generators = [torch.Generator() for _ in range(batch_size)]
        self._silence_codes = self._measure_silence_codes()
        for slot in range(batch_size):
            self._reset_slot(slot, SlotOptions())

    @classmethod
    def from_pretrained(cls, model: str | None, *, batch_size: int = 1, device=None, dtype=None,
                        **options) -> MoshiEngine:
        """Load `model` (HF repo id or local dir, Kyutai or HF layout) with its Mimi; options as __init__."""
        from audio.codec import StreamingMimi

        if not model:
            raise ValueError("the moshi backend needs --model (a Hugging Face repo id or a checkpoint dir)")
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        loaded = load_moshi(model, device=device, dtype=dtype)
        num_codebooks = loaded.model.config.num_codebooks
        # Mimi stays in float32: it is small, and low precision there is heard directly.
        if loaded.layout == "hf":
            codec = StreamingMimi.from_model(loaded.mimi, batch_size=batch_size, device=device,
                                             num_codebooks=num_codebooks)
        else:
            codec = StreamingMimi.from_pretrained(loaded.mimi, batch_size=batch_size, device=device,
                                                  num_codebooks=num_codebooks, config=loaded.mimi_config)
        return cls(loaded, codec, batch_size, **options)

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

    # -- slots -----------------------------------------------------------------------------------
    def _reset_slot(self, slot: int, options: SlotOptions) -> None:
        self.lm.reset(slot)
        self.codec.reset(slot)
        self._apply_options(slot, options, reseed=True)

    def update(self, slot: int, options: SlotOptions) -> None:
        self._check_slot(slot)
        self._apply_options(slot, options, reseed=options.seed is not None)

    def _apply_options(self, slot: int, options: SlotOptions, reseed: bool) -> None:
        current = self.defaults if reseed else self._sampling[slot]
        self._sampling[slot] = _SlotSampling(*_checked(
            _pick(options.text_temperature, current.text_temperature),
            _pick(options.text_top_k, current.text_top_k),
            _pick(options.temperature, current.temperature),
            _pick(options.top_k, current.top_k),
            self.lm.text_card, self.lm.card,
        ))
        if reseed:
            seed = options.seed if options.seed is not None else secrets.randbits(63)
            self._generators[slot].manual_seed(int(seed))

    # -- the step --------------------------------------------------------------------------------
    def _step(self, pcm_in: np.ndarray) -> StepOutput:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        live = torch.from_numpy(self.live.copy())
        codes = self.codec.encode(pcm_in, mask=live if not live.all() else None)
        timings["codec_encode_ms"] = (time.perf_counter() - t0) * 1000

        silenced = torch.from_numpy(self.silenced.copy()).to(self.lm.device)
        out = self.lm.step(
            codes, self._sampling_tensors(),
            force_mask=silenced,
            force_text=torch.full((self.batch_size,), self.loaded.text_pad_id, dtype=torch.long),
            force_audio=self._silence_codes.expand(self.batch_size, -1),
            profile=self.profile,
        )
        timings.update(out.timings_ms)

        t1 = time.perf_counter()
        ready = out.ready.cpu()
        audio = out.audio.cpu()
        decode_rows = ready & live
        pcm = self.codec.decode(audio.clamp(0, self.lm.card - 1),
                                mask=decode_rows if not decode_rows.all() else None)
        timings["codec_decode_ms"] = (time.perf_counter() - t1) * 1000

        pcm = pcm.numpy().astype(np.float32, copy=False)
        quiet = ~decode_rows.numpy() | self.silenced
        pcm[quiet] = 0.0  # a silenced slot, or one with no complete frame yet, outputs exact silence
        np.clip(pcm, -1.0, 1.0, out=pcm)
        text_ids = out.text.cpu().tolist()
        text = ["" if quiet[b] else self.loaded.tokenizer.piece(text_ids[b]) for b in range(self.batch_size)]
        speaking = ~quiet & (np.sqrt(np.mean(pcm**2, axis=1)) > SPEAKING_RMS)
        timings["total_ms"] = (time.perf_counter() - t0) * 1000
        return StepOutput(pcm_out=pcm, text=text, speaking=speaking, timings_ms=timings)

    def _sampling_tensors(self) -> Sampling:
        s, dev = self._sampling, self.lm.device
        uniform = torch.stack([torch.rand(1 + self.lm.num_codebooks, generator=g) for g in self._generators])
        return Sampling(
            text_temperature=torch.tensor([x.text_temperature for x in s], device=dev),
            text_top_k=torch.tensor([x.text_top_k for x in s], device=dev),
            audio_temperature=torch.tensor([x.temperature for x in s], device=dev),
            audio_top_k=torch.tensor([x.top_k for x in s], device=dev),
            uniform=uniform.to(dev),
            text_kmax=max(x.text_top_k for x in s),
            audio_kmax=max(x.top_k for x in s),
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

    def describe(self) -> dict:
        d = self.defaults
        return super().describe() | {
            "layout": self.loaded.layout,
            "device": str(self.lm.device),
            "dtype": str(self.lm.dtype).removeprefix("torch."),
            "context_frames": self.lm.context,
            "text_temperature": d.text_temperature,
            "text_top_k": d.text_top_k,
            "temperature": d.temperature,
            "top_k": d.top_k,
        }


def _pick(value, default):
    return default if value is None else value


def _checked(text_temperature, text_top_k, temperature, top_k, text_card: int, card: int):
    """Validate sampling options; top_k < 1 means no limit (the whole vocabulary)."""
    for name, value in (("text_temperature", text_temperature), ("temperature", temperature)):
        if not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a number >= 0 (0 = greedy), got {value!r}")
    for name, value in (("text_top_k", text_top_k), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    text_top_k = text_card if text_top_k < 1 else min(text_top_k, text_card)
    top_k = card if top_k < 1 else min(top_k, card)
    return float(text_temperature), int(text_top_k), float(temperature), int(top_k)
