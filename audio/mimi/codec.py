"""Streaming Mimi codec: 80 ms of 24 kHz audio <-> 8 codes per frame, one row per session.

Built on transformers' `MimiModel` weights, but every stateful piece runs here with its state held
in plain tensors, one row per batch slot, so one slot can be reset while the others go on
(`audio.mimi.layers` for the convolutions, `audio.mimi.transformer` for the ring-buffer KV caches).
Frame-by-frame results equal one offline `MimiModel.encode` / `decode` call over the whole stream
(codes identical, audio within float32 rounding).

    codec = StreamingMimi.from_pretrained("kyutai/mimi", batch_size=4)
    codes = codec.encode(pcm)   # float32 (B, 1920) in [-1, 1] -> int64 (B, 8)
    pcm = codec.decode(codes)   # int64 (B, 8) -> float32 (B, 1920)
    codec.reset(slot)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import MimiConfig, MimiModel

from audio.mimi.layers import StreamingConv1d, StreamingConvTranspose1d, StreamingStack
from audio.mimi.loading import load_mimi_model
from audio.mimi.quantizer import Quantizer
from audio.mimi.transformer import StreamingTransformer

ArrayLike = np.ndarray | torch.Tensor


class StreamingMimi:
    """Mimi encode and decode, one 80 ms frame per call for B independent rows (sessions).

    Attributes: batch_size, frame_samples (1920), sample_rate_hz (24000), num_codebooks (8),
    cardinality (2048 codes per codebook), model (the transformers `MimiModel`),
    frames_encoded / frames_decoded (int64 (B,): frames each row was fed since its last reset).
    Not thread-safe: one caller (the engine's step) drives it.
    """

    def __init__(
        self,
        model: MimiModel,
        batch_size: int,
        num_codebooks: int = 8,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        config: MimiConfig = model.config
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not config.num_semantic_quantizers <= num_codebooks <= config.num_quantizers:
            raise ValueError(
                f"num_codebooks must be between {config.num_semantic_quantizers} and "
                f"{config.num_quantizers} for this Mimi, got {num_codebooks}"
            )
        if model.encoder is None or model.decoder is None:
            raise ValueError("StreamingMimi needs a MimiModel with both its encoder and its decoder")
        device = torch.device(device)
        if device.type == "cpu" and dtype != torch.float32:
            raise ValueError(f"on CPU the codec runs in float32 only, got {dtype}")
        self.model = model.to(device=device, dtype=dtype).eval()
        for module in self.model.modules():
            if hasattr(module, "_embed"):
                module._embed = None  # the codebook caches its centroids; recompute on this device/dtype
        self.device, self.dtype = device, dtype
        self.batch_size = batch_size
        self.num_codebooks = num_codebooks
        self.cardinality = config.codebook_size
        self.sample_rate_hz = config.sampling_rate
        self.frame_samples = int(config.frame_size)
        encoder, decoder = self.model.encoder, self.model.decoder
        # each transformer sees `latent_stride` steps per frame (25 Hz for 12.5 Hz frames)
        steps = config.latent_stride if encoder.downsample is not None else 1
        with torch.inference_mode():
            self._enc_seanet = StreamingStack(encoder.encoder_seanet.layers, batch_size, device, dtype)
            self._enc_transformer = StreamingTransformer(
                encoder.encoder_transformer, batch_size, steps, device, dtype
            )
            self._downsample = (
                StreamingConv1d(encoder.downsample, batch_size, device, dtype)
                if encoder.downsample is not None
                else None
            )
            self._upsample = (
                StreamingConvTranspose1d(decoder.upsample, batch_size, device, dtype)
                if decoder.upsample is not None
                else None
            )
            self._dec_transformer = StreamingTransformer(
                decoder.decoder_transformer, batch_size, steps, device, dtype
            )
            self._dec_seanet = StreamingStack(decoder.decoder_seanet.layers, batch_size, device, dtype)
            self._quantizer = Quantizer(self.model.quantizer, num_codebooks, batch_size)
        # frames each row has been fed since its reset: the streaming state in one number per row
        self.frames_encoded = np.zeros(batch_size, dtype=np.int64)
        self.frames_decoded = np.zeros(batch_size, dtype=np.int64)
        self._parts = [
            self._enc_seanet,
            self._enc_transformer,
            self._downsample,
            self._upsample,
            self._dec_transformer,
            self._dec_seanet,
        ]

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_model(
        cls,
        model: MimiModel,
        batch_size: int,
        device: str | torch.device = "cpu",
        num_codebooks: int = 8,
        dtype: torch.dtype = torch.float32,
    ) -> StreamingMimi:
        """Wrap an already-built (and loaded) transformers `MimiModel`. The model is moved to device/dtype."""
        return cls(model, batch_size, num_codebooks=num_codebooks, device=device, dtype=dtype)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        batch_size: int,
        device: str | torch.device = "cpu",
        num_codebooks: int = 8,
        dtype: torch.dtype = torch.float32,
        config: MimiConfig | None = None,
    ) -> StreamingMimi:
        """Load Mimi weights from `source` and build a streaming codec of `batch_size` rows.

        source: a local dir or Hugging Face repo id in transformers layout (config.json +
        model.safetensors, like `kyutai/mimi`), a Kyutai single-file checkpoint
        (`tokenizer-e351c8d8-checkpoint125.safetensors`), or a dir / repo id holding that file.
        config: the Mimi config of a Kyutai-layout file, which carries none; defaults to the
        7B Moshi's Mimi (`mimi_config_for_kyutai()`).
        """
        model = load_mimi_model(source, config=config)
        return cls.from_model(model, batch_size, device=device, num_codebooks=num_codebooks, dtype=dtype)

    # -- state -----------------------------------------------------------------------------------
    def reset(self, slot: int) -> None:
        """Forget everything row `slot` has seen (encoder and decoder); other rows are untouched."""
        if not 0 <= slot < self.batch_size:
            raise IndexError(f"slot {slot} out of range 0..{self.batch_size - 1}")
        with torch.inference_mode():  # the state tensors are inference tensors
            for part in self._parts:
                if part is not None:
                    part.reset(slot)
        self.frames_encoded[slot] = 0
        self.frames_decoded[slot] = 0

    def reset_encoder(self, slot: int) -> None:
        """Forget what row `slot` has encoded (its decoder goes on): its next frame is encoded as the
        first of a stream, with the left padding a fresh state applies."""
        if not 0 <= slot < self.batch_size:
            raise IndexError(f"slot {slot} out of range 0..{self.batch_size - 1}")
        with torch.inference_mode():  # the state tensors are inference tensors
            for part in (self._enc_seanet, self._enc_transformer, self._downsample):
                if part is not None:
                    part.reset(slot)
        self.frames_encoded[slot] = 0

    def copy_row(self, src: int, dst: int) -> None:
        """Make row `dst` continue exactly where row `src` is (all encoder/decoder state and counters),
        e.g. to compact live sessions into the first rows of a smaller batch."""
        for slot in (src, dst):
            if not 0 <= slot < self.batch_size:
                raise IndexError(f"slot {slot} out of range 0..{self.batch_size - 1}")
        with torch.inference_mode():  # the state tensors are inference tensors
            for tensor, dim in self._row_tensors():
                tensor.select(dim, dst).copy_(tensor.select(dim, src))
        self.frames_encoded[dst] = self.frames_encoded[src]
        self.frames_decoded[dst] = self.frames_decoded[src]

    def _row_tensors(self):
        """(tensor, batch dim) of every per-row state tensor."""
        pending = [part for part in self._parts if part is not None]
        while pending:
            part = pending.pop()
            if isinstance(part, StreamingTransformer):
                yield from ((part.keys, 1), (part.values, 1), (part.slot_pos, 0), (part.offset, 0))
                continue
            pending.extend(step for step in getattr(part, "steps", []) if hasattr(step, "reset"))
            if getattr(part, "shortcut", None) is not None:
                pending.append(part.shortcut)
            for name in ("state", "fresh"):
                if isinstance(getattr(part, name, None), torch.Tensor):
                    yield getattr(part, name), 0

    def reset_all(self) -> None:
        for slot in range(self.batch_size):
            self.reset(slot)

    # -- the two calls ----------------------------------------------------------------------------
    def encode(self, pcm: ArrayLike, mask: ArrayLike | None = None) -> torch.Tensor:
        """pcm: float32 (B, frame_samples) in [-1, 1] -> codes int64 (B, num_codebooks), on CPU.

        mask: optional bool (B,): only those rows are encoded and advance their state; the codes of
        the other rows are 0 and their state is untouched.
        """
        pcm = self._as_tensor(pcm, torch.float32, "pcm", (self.batch_size, self.frame_samples))
        rows = self._rows(mask)
        codes = torch.zeros(self.batch_size, self.num_codebooks, dtype=torch.long)
        if rows is not None and rows.numel() == 0:
            return codes
        with torch.inference_mode():
            x = pcm.to(self.device, self.dtype)
            if rows is not None:
                x = x[rows]
            hidden = self._enc_seanet(x[:, None, :], rows)
            hidden = self._enc_transformer(hidden.transpose(1, 2), rows).transpose(1, 2)
            if self._downsample is not None:
                hidden = self._downsample(hidden, rows)
            out = self._quantizer.encode(hidden[..., 0]).cpu()
        if rows is None:
            self.frames_encoded += 1
            return out
        codes[rows.cpu()] = out
        self.frames_encoded[rows.cpu().numpy()] += 1
        return codes

    def decode(self, codes: ArrayLike, mask: ArrayLike | None = None) -> torch.Tensor:
        """codes: int (B, num_codebooks) in [0, cardinality) -> pcm float32 (B, frame_samples), on CPU.

        mask: optional bool (B,): only those rows are decoded and advance their state; the other
        rows come back as silence (zeros) and their state is untouched.
        """
        codes = self._as_tensor(codes, torch.long, "codes", (self.batch_size, self.num_codebooks))
        rows = self._rows(mask)
        pcm = torch.zeros(self.batch_size, self.frame_samples, dtype=torch.float32)
        if rows is not None and rows.numel() == 0:
            return pcm
        fed = codes if rows is None else codes[rows.cpu()]
        if int(fed.min()) < 0 or int(fed.max()) >= self.cardinality:
            raise ValueError(
                f"codes must be in [0, {self.cardinality}), got {int(fed.min())}..{int(fed.max())}"
            )
        with torch.inference_mode():
            c = fed.to(self.device)
            latents = self._quantizer.decode(c).to(self.dtype)[..., None]  # (b, C, 1)
            if self._upsample is not None:
                latents = self._upsample(latents, rows)
            hidden = self._dec_transformer(latents.transpose(1, 2), rows).transpose(1, 2)
            audio = self._dec_seanet(hidden, rows)[:, 0].float().cpu()
        if rows is None:
            self.frames_decoded += 1
            return audio
        pcm[rows.cpu()] = audio
        self.frames_decoded[rows.cpu().numpy()] += 1
        return pcm

    # -- helpers -------------------------------------------------------------------------------------
    def _as_tensor(
        self, value: ArrayLike, dtype: torch.dtype, name: str, shape: tuple[int, int]
    ) -> torch.Tensor:
        tensor = torch.as_tensor(value)
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
        if dtype == torch.long and tensor.is_floating_point():
            raise ValueError(f"{name} must be integers, got {tensor.dtype}")
        return tensor.to(dtype)

    def _rows(self, mask: ArrayLike | None) -> torch.Tensor | None:
        if mask is None:
            return None
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool or tuple(mask.shape) != (self.batch_size,):
            raise ValueError(
                f"mask must be bool of shape ({self.batch_size},), got {mask.dtype} {tuple(mask.shape)}"
            )
        if bool(mask.all()):
            return None
        return mask.nonzero()[:, 0].to(self.device)
