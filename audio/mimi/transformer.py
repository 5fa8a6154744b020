"""Mimi's transformer run one chunk at a time per row, with a ring-buffer KV cache of `sliding_window` steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.mimi.modeling_mimi import MimiTransformerModel

from audio.mimi.kernels import PackedLinear
from audio.mimi.layers import Rows


class StreamingTransformer:
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
            self.qkv.append(PackedLinear(qkv, rows_hint=rows))
            self.o_proj.append(PackedLinear(attn.o_proj.weight, rows_hint=rows))
            self.fc1.append(PackedLinear(layer.mlp.fc1.weight, layer.mlp.fc1.bias, rows_hint=rows))
            self.fc2.append(PackedLinear(layer.mlp.fc2.weight, layer.mlp.fc2.bias, rows_hint=rows))

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
