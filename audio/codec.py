"""Streaming Mimi codec: 80 ms of 24 kHz audio <-> 8 codes per frame, one row per session.

Built on transformers' `MimiModel` weights, but every stateful piece runs here with its state held
in plain tensors, one row per batch slot, so one slot can be reset while the others go on:
- causal convolutions keep the last `kernel - stride` input samples (the left padding they would see offline);
- transposed convolutions keep the overlapping tail of their last output, added to the next one;
- the transformers keep a ring-buffer KV cache of `sliding_window` steps and their own position per row.
Frame-by-frame results equal one offline `MimiModel.encode` / `decode` call over the whole stream
(codes identical, audio within float32 rounding).

    codec = StreamingMimi.from_pretrained("kyutai/mimi", batch_size=4)
    codes = codec.encode(pcm)   # float32 (B, 1920) in [-1, 1] -> int64 (B, 8)
    pcm = codec.decode(codes)   # int64 (B, 8) -> float32 (B, 1920)
    codec.reset(slot)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import MimiConfig, MimiModel
from transformers.models.mimi.modeling_mimi import (
    MimiConv1d,
    MimiConvTranspose1d,
    MimiResnetBlock,
    MimiSplitResidualVectorQuantizer,
    MimiTransformerModel,
)

from audio.mimi_convert import (
    KYUTAI_MIMI_FILENAME,
    convert_kyutai_mimi_state_dict,
    is_kyutai_mimi_state_dict,
    mimi_config_for_kyutai,
)

ArrayLike = np.ndarray | torch.Tensor
Rows = torch.Tensor | None  # indices of the batch rows a call feeds; None = every row


# -- streaming building blocks ---------------------------------------------------------------------


# Below this many output steps a convolution's weights dwarf its activations: one matmul over
# im2col columns streams the weights once, about 3x faster than torch's conv1d on CPU (measured).
_MATMUL_MAX_STEPS = 32


def _conv1d_as_matmul(
    x: torch.Tensor, matmul: _Linear, kernel: int, stride: int, dilation: int
) -> torch.Tensor:
    """F.conv1d(x, weight, bias, stride, 0, dilation) for groups=1, as im2col + one matmul.

    matmul: `_Linear` of the weight as (Cout, Cin * kernel)."""
    cin = x.shape[1]
    cols = x.unfold(-1, (kernel - 1) * dilation + 1, stride)  # (b, Cin, T, span)
    if dilation > 1:
        cols = cols[..., ::dilation]
    cols = cols.transpose(1, 2).reshape(x.shape[0], cols.shape[2], cin * kernel)
    return matmul(cols).transpose(1, 2)


def _packs_for_onednn(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()


class _Linear:
    """y = x W^T + b, with W kept in the memory order that CPU matmuls stream fastest.

    Streaming feeds these matmuls only a few rows (2 per transformer frame), so they are bound by
    reading the weights. On CPU the weight is reordered once into oneDNN's blocked layout: at 2 rows
    that streams 11-14 GB/s on one core where F.linear gets 6-10 GB/s, and it scales to the second
    core (measured on the 2-core dev box, 512..8192-wide layers). Elsewhere (or without oneDNN) a
    weight with more outputs than inputs is kept transposed, which CPU matmuls stream faster.
    rows_hint: the rows one call usually has; oneDNN picks its blocking for it (any count works).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, rows_hint: int = 2):
        self.bias = bias
        self.packed = _packs_for_onednn(weight)
        self.transposed = not self.packed and weight.device.type == "cpu" and weight.shape[0] > weight.shape[1]
        if self.packed:
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows_hint)
            # torch.compile cannot lower a packed weight that is not a graph constant; it traces this one.
            self.plain = weight
        else:
            self.weight = weight.t().contiguous() if self.transposed else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            if torch.compiler.is_compiling():
                return F.linear(x, self.plain, self.bias)
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        if not self.transposed:
            return F.linear(x, self.weight, self.bias)
        if self.bias is None:
            return torch.matmul(x, self.weight)
        # bias added inside the matmul: one op, no second pass over the output
        y = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return y.view(*x.shape[:-1], y.shape[-1])


class _StreamingConv1d:
    """A causal `MimiConv1d` fed in chunks: keeps the last `kernel - stride` inputs of every row."""

    def __init__(self, conv: MimiConv1d, batch_size: int, device, dtype):
        if not conv.causal:
            raise NotImplementedError("streaming needs causal convolutions (config.use_causal_conv=True)")
        self.weight = conv.conv.weight
        self.bias = conv.conv.bias
        self.stride = conv.conv.stride[0]
        self.dilation = conv.conv.dilation[0]
        self.groups = conv.conv.groups
        self.replicate = conv.pad_mode == "replicate"
        if conv.pad_mode not in ("constant", "replicate"):
            raise NotImplementedError(f"streaming does not support pad_mode={conv.pad_mode!r}")
        self.context = int(conv.padding_total)
        self.span = int(conv.kernel_size)  # kernel size with dilation
        cout, cin, kernel = self.weight.shape
        # the heaviest matmul-path layers (25 Hz end, 16-34 MB of weights) see 2 steps per row and frame:
        # packing for 2 rows each is 5-8% faster per frame than for 1 (measured)
        self.matmul = (
            _Linear(self.weight.reshape(cout, cin * kernel), self.bias, rows_hint=2 * batch_size)
            if self.groups == 1
            else None
        )
        self.state = torch.zeros(batch_size, conv.in_channels, self.context, device=device, dtype=dtype)
        # replicate padding repeats a row's first input sample, which it only sees on its first call
        self.fresh = torch.ones(batch_size, dtype=torch.bool, device=device)

    def reset(self, row: int) -> None:
        self.state[row].zero_()
        self.fresh[row] = True

    def __call__(self, x: torch.Tensor, rows: Rows) -> torch.Tensor:
        state = self.state if rows is None else self.state[rows]
        if self.replicate:
            fresh = self.fresh if rows is None else self.fresh[rows]
            state = torch.where(fresh[:, None, None], x[..., :1].expand_as(state), state)
            if rows is None:
                self.fresh.zero_()
            else:
                self.fresh[rows] = False
        x = torch.cat([state, x], dim=-1)
        new_state = x[..., x.shape[-1] - self.context :]
        if rows is None:
            self.state = new_state.contiguous()
        else:
            self.state[rows] = new_state
        steps = (x.shape[-1] - self.span) // self.stride + 1
        if self.matmul is not None and steps <= _MATMUL_MAX_STEPS:
            return _conv1d_as_matmul(x, self.matmul, self.weight.shape[-1], self.stride, self.dilation)
        return F.conv1d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _StreamingConvTranspose1d:
    """A causal `MimiConvTranspose1d` fed in chunks: the last `kernel - stride` outputs of a chunk are
    incomplete (the next input adds to them), so they are held back and added to the next chunk."""

    def __init__(self, convtr: MimiConvTranspose1d, batch_size: int, device, dtype):
        if not convtr.causal or convtr.padding_left != 0:
            raise NotImplementedError(
                "streaming needs causal transposed convolutions with trim_right_ratio=1"
            )
        conv = convtr.conv
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride = conv.stride[0]
        self.groups = conv.groups
        self.overlap = conv.kernel_size[0] - self.stride
        self.state = torch.zeros(batch_size, conv.out_channels, self.overlap, device=device, dtype=dtype)
        # each input step times the (Cin, Cout * kernel) weight, as a linear layer of Cout * kernel outputs
        # (packed for 2 steps per row, like the convolutions)
        cin = self.weight.shape[0]
        self.matmul = (
            _Linear(self.weight.reshape(cin, -1).t(), rows_hint=2 * batch_size) if self.groups == 1 else None
        )

    def reset(self, row: int) -> None:
        self.state[row].zero_()

    def _transposed_conv(self, x: torch.Tensor) -> torch.Tensor:
        """conv_transpose1d without bias: (b, Cin, T) -> (b, Cout, (T - 1) * stride + kernel).

        torch's CPU kernel for it is far below memory bandwidth (58 ms vs 13 ms for the 33 MB
        first decoder layer), so each input step's contribution is one matmul and the kernel/stride
        overlapping pieces are added up shifted."""
        kernel, stride = self.weight.shape[-1], self.stride
        cin, steps = x.shape[1], x.shape[-1]
        if kernel % stride:
            return F.conv_transpose1d(x, self.weight, None, stride, 0, 0, self.groups)
        pieces = kernel // stride
        if self.matmul is not None and steps <= _MATMUL_MAX_STEPS:
            cols = self.matmul(x.transpose(1, 2))  # (b, T, Cout * K)
            cols = cols.view(x.shape[0], steps, -1, pieces, stride).permute(0, 2, 1, 3, 4)
        elif self.groups == cin == self.weight.shape[0] and self.weight.shape[1] == 1:  # depthwise
            cols = (x[..., None] * self.weight[:, 0, None, :]).view(*x.shape, pieces, stride)
        else:
            return F.conv_transpose1d(x, self.weight, None, stride, 0, 0, self.groups)
        out = cols.new_zeros(cols.shape[0], cols.shape[1], steps + pieces - 1, stride)
        for piece in range(pieces):
            out[:, :, piece : piece + steps] += cols[:, :, :, piece]
        return out.view(cols.shape[0], cols.shape[1], -1)

    def __call__(self, x: torch.Tensor, rows: Rows) -> torch.Tensor:
        y = self._transposed_conv(x)
        y[..., : self.overlap] += self.state if rows is None else self.state[rows]
        complete = x.shape[-1] * self.stride
        if rows is None:
            self.state = y[..., complete:].contiguous()
        else:
            self.state[rows] = y[..., complete:]
        out = y[..., :complete]
        return out.contiguous() if self.bias is None else out + self.bias[:, None]


class _StreamingResnetBlock:
    """`MimiResnetBlock` (ELU, dilated conv, ELU, 1x1 conv, plus the skip) with streaming convs."""

    def __init__(self, block: MimiResnetBlock, batch_size: int, device, dtype):
        self.steps = [_wrap(layer, batch_size, device, dtype) for layer in block.block]
        self.shortcut = (
            _StreamingConv1d(block.shortcut, batch_size, device, dtype)
            if isinstance(block.shortcut, MimiConv1d)
            else None
        )

    def reset(self, row: int) -> None:
        for step in self.steps:
            if hasattr(step, "reset"):
                step.reset(row)
        if self.shortcut is not None:
            self.shortcut.reset(row)

    def __call__(self, x: torch.Tensor, rows: Rows) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x, rows)
        for step in self.steps:
            x = step(x, rows) if hasattr(step, "reset") else step(x)
        return residual + x


def _wrap(layer: nn.Module, batch_size: int, device, dtype):
    if isinstance(layer, MimiConv1d):
        return _StreamingConv1d(layer, batch_size, device, dtype)
    if isinstance(layer, MimiConvTranspose1d):
        return _StreamingConvTranspose1d(layer, batch_size, device, dtype)
    if isinstance(layer, MimiResnetBlock):
        return _StreamingResnetBlock(layer, batch_size, device, dtype)
    if isinstance(layer, nn.ELU):
        return layer  # stateless
    raise NotImplementedError(f"no streaming version of {type(layer).__name__}")


class _StreamingStack:
    """A SEANet encoder or decoder (`layers` list) run chunk by chunk."""

    def __init__(self, layers: nn.ModuleList, batch_size: int, device, dtype):
        self.steps = [_wrap(layer, batch_size, device, dtype) for layer in layers]

    def reset(self, row: int) -> None:
        for step in self.steps:
            if hasattr(step, "reset"):
                step.reset(row)

    def __call__(self, x: torch.Tensor, rows: Rows) -> torch.Tensor:
        for step in self.steps:
            x = step(x, rows) if hasattr(step, "reset") else step(x)
        return x


class _StreamingTransformer:
    """`MimiTransformerModel` one chunk at a time, with a ring-buffer KV cache and a position per row.

    Each row sees exactly what an offline run over its own stream would: keys of the last
    `sliding_window` steps (query - key < window), RoPE at its own positions counted from its reset.
    """

    def __init__(self, model: MimiTransformerModel, batch_size: int, max_chunk: int, device, dtype):
        config = model.config
        self.layers = list(model.layers)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        if not config.sliding_window:
            raise NotImplementedError("streaming needs a sliding-window transformer (config.sliding_window)")
        self.window = config.sliding_window
        # the ring must still hold a chunk's oldest needed key after the chunk itself was written
        self.capacity = self.window + max_chunk - 1
        self.inv_freq = model.rotary_emb.inv_freq.to(device=device, dtype=torch.float32)
        self.rope_scale = model.rotary_emb.attention_scaling
        self.scaling = self.layers[0].self_attn.scaling
        self.eps = config.norm_eps
        # (layer, row, head, slot, dim): the layout attention reads, so no copy per step
        shape = (len(self.layers), batch_size, self.num_kv_heads, self.capacity, self.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        # absolute position of the key in each ring slot, -1 for an empty slot
        self.slot_pos = torch.full((batch_size, self.capacity), -1, dtype=torch.long, device=device)
        self.offset = torch.zeros(batch_size, dtype=torch.long, device=device)
        if any(layer.self_attn.q_proj.bias is not None for layer in self.layers):
            raise NotImplementedError("streaming does not support attention_bias=True")
        self.qkv, self.o_proj, self.fc1, self.fc2 = [], [], [], []
        for layer in self.layers:
            attn = layer.self_attn
            qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            rows = batch_size * max_chunk
            self.qkv.append(_Linear(qkv, rows_hint=rows))
            self.o_proj.append(_Linear(attn.o_proj.weight, rows_hint=rows))
            self.fc1.append(_Linear(layer.mlp.fc1.weight, layer.mlp.fc1.bias, rows_hint=rows))
            self.fc2.append(_Linear(layer.mlp.fc2.weight, layer.mlp.fc2.bias, rows_hint=rows))

    def reset(self, row: int) -> None:
        self.slot_pos[row] = -1
        self.offset[row] = 0

    def _rope(self, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for `_rotate`: sin is negated on its first half, the sign of rotate_half."""
        # the same float32 arithmetic as MimiRotaryEmbedding, so positions round identically
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        sin = emb.sin() * self.rope_scale
        sin[..., : freqs.shape[-1]].neg_()
        return (emb.cos() * self.rope_scale).to(dtype), sin.to(dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        # rotate_half(x) = cat(-x2, x1) = roll(x, half) with the sign folded into signed_sin: 3 ops, not 5
        return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), signed_sin)

    def __call__(self, x: torch.Tensor, rows: Rows) -> torch.Tensor:
        """x: (b, T, C) for the b rows in `rows` -> (b, T, C)."""
        b, steps, _ = x.shape
        if steps > self.capacity - self.window + 1:
            raise ValueError(f"chunk of {steps} steps is longer than this transformer was set up for")
        row_idx = torch.arange(b, device=x.device) if rows is None else rows
        offset = self.offset[row_idx]
        positions = offset[:, None] + torch.arange(steps, device=x.device)  # (b, T)
        slots = positions % self.capacity
        slot_pos = self.slot_pos[row_idx]
        slot_pos.scatter_(1, slots, positions)
        self.slot_pos[row_idx] = slot_pos
        self.offset[row_idx] = offset + steps
        delta = positions[:, :, None] - slot_pos[:, None, :]  # (b, T, capacity)
        mask = (slot_pos[:, None, :] >= 0) & (delta >= 0) & (delta < self.window)
        mask = mask[:, None]  # (b, 1, T, capacity), broadcast over heads
        if rows is not None:
            # attention runs over every row's cache in place (gathering the fed rows' caches would copy
            # them all, every layer); the rows not fed attend to anything and their output is dropped
            full_mask = torch.ones((self.offset.shape[0], *mask.shape[1:]), dtype=torch.bool, device=x.device)
            full_mask[rows] = mask
            mask = full_mask
        # an additive mask, built once: a bool one is converted to it again in every layer's attention
        mask = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(~mask, float("-inf"))
        cos, sin = self._rope(positions, x.dtype)
        cos, sin = cos[:, :, None], sin[:, :, None]  # (b, T, 1, D)
        q_dim = self.num_heads * self.head_dim
        kv_dim = self.num_kv_heads * self.head_dim
        gather_rows = row_idx[:, None]
        qk_heads = self.num_heads + self.num_kv_heads
        for index, layer in enumerate(self.layers):
            h = F.layer_norm(
                x, (x.shape[-1],), layer.input_layernorm.weight, layer.input_layernorm.bias, self.eps
            )
            qkv = self.qkv[index](h)
            # q and k heads side by side, rotated in one go
            qk = self._rotate(qkv[..., : q_dim + kv_dim].view(b, steps, qk_heads, self.head_dim), cos, sin)
            q, k = qk.split([self.num_heads, self.num_kv_heads], dim=2)
            v = qkv[..., q_dim + kv_dim :].view(b, steps, self.num_kv_heads, self.head_dim)
            # advanced indices around a slice put their dims first: the target is (b, T, heads, dim)
            self.keys[index][gather_rows, :, slots] = k
            self.values[index][gather_rows, :, slots] = v
            if rows is not None:
                q = q.new_zeros((self.offset.shape[0], *q.shape[1:])).index_copy_(0, rows, q)
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                self.keys[index],
                self.values[index],
                attn_mask=mask,
                scale=self.scaling,
                enable_gqa=self.num_heads != self.num_kv_heads,
            )
            if rows is not None:
                out = out[rows]
            out = self.o_proj[index](out.transpose(1, 2).reshape(b, steps, q_dim))
            x = torch.addcmul(x, layer.self_attn_layer_scale.scale, out)
            norm = layer.post_attention_layernorm
            h = F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, self.eps)
            h = layer.mlp.activation_fn(self.fc1[index](h))
            x = torch.addcmul(x, layer.mlp_layer_scale.scale, self.fc2[index](h))
        return x


class _Quantizer:
    """Mimi's split residual VQ for one latent per row, with the centroids and their norms precomputed.

    Nearest centroid by ||e||^2 - 2 x.e (what cdist's matmul path computes, without re-reading every
    codebook for its norms on each call), as one linear layer of weight -2e and bias ||e||^2 per
    codebook (scaling by -2 is exact); distances in float32 as transformers does.
    Only the `num_codebooks` codebooks in use are kept: encode and decode never touch the others.
    """

    def __init__(self, quantizer: MimiSplitResidualVectorQuantizer, num_codebooks: int, batch_size: int = 1):
        semantic = quantizer.semantic_residual_vector_quantizer
        acoustic = quantizer.acoustic_residual_vector_quantizer
        n_semantic = quantizer.num_semantic_quantizers
        self.halves = []
        for rvq, count in ((semantic, n_semantic), (acoustic, num_codebooks - n_semantic)):
            embeds = [layer.codebook.embed.float() for layer in rvq.layers[:count]]
            self.halves.append(
                (
                    None if rvq.input_proj is None else rvq.input_proj.weight[:, :, 0],
                    None if rvq.output_proj is None else rvq.output_proj.weight[:, :, 0],
                    embeds,
                    [_Linear(-2 * e, (e * e).sum(-1), rows_hint=batch_size) for e in embeds],
                )
            )

    def encode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (b, C) -> codes int64 (b, K)."""
        codes = []
        for input_proj, _, embeds, distances in self.halves:
            residual = (latents if input_proj is None else F.linear(latents, input_proj)).float()
            for embed, distance in zip(embeds, distances, strict=True):
                index = distance(residual).argmin(dim=-1)
                residual = residual - embed[index]
                codes.append(index)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (b, K) -> latents (b, C), in the model's dtype."""
        out, start = None, 0
        for _, output_proj, embeds, _ in self.halves:
            if not embeds:
                continue
            quantized = sum(embed[codes[:, start + i]] for i, embed in enumerate(embeds))
            start += len(embeds)
            quantized = quantized.to(output_proj.dtype) if output_proj is not None else quantized
            quantized = quantized if output_proj is None else F.linear(quantized, output_proj)
            out = quantized if out is None else out + quantized
        return out


# -- the codec ------------------------------------------------------------------------------------------


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
            self._enc_seanet = _StreamingStack(encoder.encoder_seanet.layers, batch_size, device, dtype)
            self._enc_transformer = _StreamingTransformer(
                encoder.encoder_transformer, batch_size, steps, device, dtype
            )
            self._downsample = (
                _StreamingConv1d(encoder.downsample, batch_size, device, dtype)
                if encoder.downsample is not None
                else None
            )
            self._upsample = (
                _StreamingConvTranspose1d(decoder.upsample, batch_size, device, dtype)
                if decoder.upsample is not None
                else None
            )
            self._dec_transformer = _StreamingTransformer(
                decoder.decoder_transformer, batch_size, steps, device, dtype
            )
            self._dec_seanet = _StreamingStack(decoder.decoder_seanet.layers, batch_size, device, dtype)
            self._quantizer = _Quantizer(self.model.quantizer, num_codebooks, batch_size)
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
            if isinstance(part, _StreamingTransformer):
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


# -- loading ------------------------------------------------------------------------------------------

_EXPECTED = (
    "expected a transformers-layout Mimi (config.json + model.safetensors, like kyutai/mimi), "
    f"a Kyutai checkpoint file ({KYUTAI_MIMI_FILENAME}), or a dir / Hugging Face repo id holding one of them"
)


def load_mimi_model(source: str | Path, config: MimiConfig | None = None) -> MimiModel:
    """Resolve `source` (see `StreamingMimi.from_pretrained`) and load it as a transformers `MimiModel`."""
    path = Path(source).expanduser()
    if path.is_file():
        return _load_kyutai_file(path, config)
    if path.is_dir():
        return _load_dir(path, config)
    if str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise FileNotFoundError(f"Mimi source {str(source)!r} does not exist; {_EXPECTED}")
    return _load_dir(_download(str(source)), config)


def _download(repo_id: str) -> Path:
    """Fetch only the Mimi files of a Hub repo; works offline from the local cache.

    A Kyutai repo (kyutai/moshiko-pytorch-bf16) keeps the 15 GB Moshi LM in its model.safetensors,
    so model.safetensors is fetched only once config.json says the repo is a transformers Mimi.
    """
    from huggingface_hub import snapshot_download

    tried = ["config.json", "tokenizer-*.safetensors"]
    try:
        snapshot = Path(snapshot_download(repo_id, allow_patterns=tried))
        if not any(snapshot.glob("tokenizer-*.safetensors")) and _config_model_type(snapshot) == "mimi":
            tried.append("model.safetensors")
            snapshot = Path(snapshot_download(repo_id, allow_patterns=tried))
        return snapshot
    except Exception as exc:  # network, auth, missing repo, empty cache offline: all end the same way
        raise FileNotFoundError(
            f"Mimi source {repo_id!r} is not a local path, and fetching it as a Hugging Face repo "
            f"(files {', '.join(tried)}, from the Hub or the local cache) failed: "
            f"{type(exc).__name__}: {str(exc).rstrip('.')}; {_EXPECTED}"
        ) from exc


def _config_model_type(directory: Path) -> str | None:
    try:
        return json.loads((directory / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _load_dir(directory: Path, config: MimiConfig | None) -> MimiModel:
    # a Kyutai repo holds the Mimi file next to the LM's own model.safetensors and config.json
    if (directory / KYUTAI_MIMI_FILENAME).is_file():
        return _load_kyutai_file(directory / KYUTAI_MIMI_FILENAME, config)
    kyutai_files = sorted(directory.glob("tokenizer-*.safetensors"))
    if len(kyutai_files) == 1:
        return _load_kyutai_file(kyutai_files[0], config)
    weights = directory / "model.safetensors"
    if weights.is_file() and _is_kyutai_file(weights):
        return _load_kyutai_file(weights, config)
    if weights.is_file() and (directory / "config.json").is_file():
        model_type = _config_model_type(directory)
        if model_type != "mimi":
            raise ValueError(
                f"{directory / 'config.json'} is for model_type {model_type!r}, not 'mimi'; {_EXPECTED}"
            )
        return _load_transformers_dir(directory)
    found = ", ".join(sorted(p.name for p in directory.iterdir())[:10]) or "nothing"
    raise FileNotFoundError(f"no Mimi checkpoint in {directory} (found: {found}); {_EXPECTED}")


def _is_kyutai_file(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            return is_kyutai_mimi_state_dict(handle.keys())
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"could not read {path} as safetensors: {exc}; {_EXPECTED}") from exc


def _load_transformers_dir(directory: Path) -> MimiModel:
    try:
        model, info = MimiModel.from_pretrained(str(directory), output_loading_info=True, dtype=torch.float32)
    except Exception as exc:
        raise ValueError(f"could not load {directory} as a transformers Mimi: {exc}. {_EXPECTED}") from exc
    problems = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if problems or info.get("error_msgs"):
        raise ValueError(
            f"{directory / 'model.safetensors'} does not match its config.json: {problems or info}"
        )
    return model.eval()


def _load_kyutai_file(path: Path, config: MimiConfig | None) -> MimiModel:
    from safetensors.torch import load_file

    if path.suffix not in (".safetensors", ".sft"):
        raise ValueError(f"{path} is not a safetensors file; {_EXPECTED}")
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise ValueError(f"could not read {path} as safetensors: {exc}. {_EXPECTED}") from exc
    if not is_kyutai_mimi_state_dict(state):
        raise ValueError(f"{path} does not hold Kyutai Mimi weights (no encoder.model.* keys); {_EXPECTED}")
    config = config or mimi_config_for_kyutai()
    converted = convert_kyutai_mimi_state_dict(state, config)
    model = MimiModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
        for k, v in converted.items()
        if k in expected and v.shape != expected[k].shape
    ]
    unexpected = sorted(set(converted) - set(expected))
    if missing or wrong or unexpected:
        raise ValueError(
            f"{path} does not fit the Mimi config given (pass config= for a non-default Mimi): "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, wrong shapes {wrong[:5]}, "
            f"extra {unexpected[:5]}"
        )
    model.load_state_dict({k: v.float() for k, v in converted.items()}, strict=True)
    return model.eval()
