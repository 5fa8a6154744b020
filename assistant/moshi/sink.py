"""Attention to a prompt pinned at the start of the sliding window (an attention sink).

A PersonaPlex prompt (voice, role text) is the first n positions of a conversation. With a plain
ring cache it slides out once the window of W frames is full; pinned, its keys stay in ring slots
0..n-1 while the conversation wraps around in slots n..W-1. RoPE makes a score depend on the
query's position minus the key's, so the positions need care: conversation keys are seen from
the query's true position p, as always (their distances are at most W - n - 1); the pinned keys
are seen from a virtual position min(p, W - 1). Once the window is full the prompt keeps the
distances it had at that moment (W - 1 - i for prompt position i), older than every conversation
key and within the W the model was trained on; until then the virtual position is the true one.

Turning the query rather than the cached keys leaves the cache as the prefill wrote it and costs
one small rotation per step: both queries multiply the keys in one matmul, so K and V are read once.
`RingKVCache` asks for this by handing the attention a mask twice as wide as its keys,
(B, 1, L, 2W): the first W columns for the keys as seen from the true position, the last W for
the pinned ones as seen from the virtual position. `use_sink_attention` installs the function on a
model's temporal transformer; any other mask goes to the attention the model had before.
"""

from __future__ import annotations

from functools import partial

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.moshi.modeling_moshi import eager_attention_forward

_SUFFIX = "+attention_sink"


def use_sink_attention(model) -> None:
    """Route the temporal transformer's attention of `model` (a MoshiForConditionalGeneration)
    through `sink_attention`, keeping its current attention for every ordinary mask."""
    current = model.config._attn_implementation or "eager"
    if current.endswith(_SUFFIX):
        return
    fallback = ALL_ATTENTION_FUNCTIONS.get_interface(current, eager_attention_forward)
    name = current + _SUFFIX
    AttentionInterface.register(name, partial(sink_attention, fallback=fallback))
    model.config._attn_implementation = {"": name}  # "": this config only, not the depth transformer's


def sink_attention(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    position_ids: torch.Tensor | None = None,
    *,
    fallback,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of query (B, H, L, hd) at `position_ids` (B, L) over key / value (B, H_kv, W, hd).

    With a mask of 2W columns (see the module docstring) the pinned keys are scored by the query
    turned back to its virtual position; returns (output (B, L, H, hd), weights (B, H, L, W)).
    Any other mask: `fallback`, the model's own attention.
    """
    window = key.shape[-2]
    if attention_mask is None or attention_mask.shape[-1] != 2 * window:
        return fallback(
            module,
            query,
            key,
            value,
            attention_mask,
            scaling=scaling,
            dropout=dropout,
            position_ids=position_ids,
            **kwargs,
        )
    B, H, L, hd = query.shape
    kv_heads = key.shape[1]
    groups = H // kv_heads
    virtual = _rotate(query, position_ids.clamp(max=window - 1) - position_ids, module.rotary_emb.inv_freq)
    both = torch.cat([query, virtual], dim=2) * scaling  # (B, H, 2L, hd): true positions, then virtual
    # heads sharing a key/value head are stacked along the query axis: no copy of K or V. K times
    # the queries, not the queries times K transposed: a tall product, several times faster on CPU
    scores = torch.matmul(key, both.reshape(B, kv_heads, groups * 2 * L, hd).transpose(2, 3))
    scores = scores.transpose(2, 3).reshape(B, H, 2, L, window).transpose(2, 3).reshape(B, H, L, 2 * window)
    weights = torch.softmax(scores.add_(attention_mask), dim=-1, dtype=torch.float32).to(query.dtype)
    weights = weights.view(B, H, L, 2, window).sum(dim=3)  # a slot is in one half only: the other is 0
    out = torch.matmul(weights.reshape(B, kv_heads, groups * L, window), value)
    return out.view(B, H, L, hd).transpose(1, 2).contiguous(), weights


def _rotate(x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, hd), rotary-embedded at some positions, re-embedded `delta` (B, L) positions on.

    RoPE rotations compose, so this is x embedded at position + delta; a delta of 0 gives x exactly.
    """
    angles = delta[:, None, :, None] * inv_freq  # float (B, 1, L, hd / 2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)  # the halves `rotate_half` pairs up
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
