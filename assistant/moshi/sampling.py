"""Token sampling with per-row temperature and top-k, driven by uniform draws made per slot.

Each slot owns a torch.Generator; a step draws all its uniforms for the frame (1 text + 8 audio)
from that generator, so a slot's tokens depend only on its own seed, never on its neighbours.
"""

from __future__ import annotations

import torch


def sample_tokens(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, kmax: int, uniform: torch.Tensor
) -> torch.Tensor:
    """Pick one token per row.

    logits: float (B, V). temperature: float (B,), 0 = greedy. top_k: long (B,), 1..V.
    kmax: max(top_k) as a Python int (static top-k width). uniform: float (B,) in [0, 1).
    Returns long (B,).
    """
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    kmax = max(1, min(int(kmax), logits.shape[-1]))
    values, indices = logits.topk(kmax, dim=-1)  # sorted, best first
    scaled = values / temperature.clamp_min(1e-5)[:, None]
    beyond_k = torch.arange(kmax, device=logits.device)[None, :] >= top_k[:, None]
    probs = torch.softmax(scaled.masked_fill(beyond_k, float("-inf")), dim=-1)
    cdf = probs.cumsum(dim=-1)
    # Inverse-CDF draw: the first index whose cumulative mass exceeds u.
    pick = (cdf < uniform[:, None] * cdf[:, -1:]).sum(dim=-1).clamp_max(kmax - 1)
    sampled = indices.gather(1, pick[:, None])[:, 0]
    return torch.where(temperature > 0, sampled, greedy)
