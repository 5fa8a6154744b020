"""MoshiVis's image side: the SigLIP encoder and projection, the gated cross-attention, its norms.

An image becomes tokens (1, N, D) once: SigLIP's last hidden state (after its post-layernorm) ->
a linear projection to the LM's width -> an RMS norm. One cross-attention is shared by every
temporal layer, so the tokens' keys and values (one set per image, about 16 MB at 7B in bf16) are
projected once and every layer and step reuses them. In each temporal layer, between the
self-attention and the feed-forward block, a row with an image in force adds

    y = out(softmax(q(norm_cross(x)) K^T / sqrt(head_dim)) V);   x += y * sigmoid(W2 relu(W1 y) - 4)

(no RoPE, no mask; the gate reads the cross-attention's own output, per layer and channel).

Norms are computed as Kyutai's PyTorch MoshiVis (`kyuteye_pt`) builds them (`KyuteyeRMSNorm`):
x * (alpha * rsqrt(s + eps)) in float32, where s is the mean of squares in the temporal
transformer (its norms, `norm_cross`, the output norm; eps 1e-8) but torch's unbiased variance in
the depth transformer (eps 1e-8) and after the image projection (eps 1e-5, in the input's dtype).
`use_kyuteye_norms` swaps a vision model's norms for these; plain Moshi keeps its own.
The image path (pixels to keys and values) runs in float32 whatever the LM's dtype.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

GATE_SHIFT = 4.0  # sigmoid(. - 4): the gate starts almost closed


class KyuteyeRMSNorm(nn.Module):
    """y = x * (weight * rsqrt(s + eps)), s the mean of squares or (use_variance) torch's unbiased
    variance over the last dimension.

    compute_dtype: the dtype the statistics and product are computed in (float32 for the LM's
    norms; None: the input's, as the image projection's norm does).
    """

    def __init__(
        self, dim: int, eps: float, *, use_variance: bool, compute_dtype: torch.dtype | None = torch.float32
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.use_variance = use_variance
        self.compute_dtype = compute_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)
        spread = x.var(dim=-1, keepdim=True) if self.use_variance else torch.mean(x**2, dim=-1, keepdim=True)
        var = self.eps + spread
        return (x * (self.weight.to(var.dtype) * torch.rsqrt(var))).to(in_dtype)

    def extra_repr(self) -> str:
        kind = "unbiased variance" if self.use_variance else "mean of squares"
        return f"{tuple(self.weight.shape)}, eps={self.eps}, {kind}"


def use_kyuteye_norms(model: nn.Module) -> int:
    """Replace every transformers MoshiRMSNorm of a MoshiForConditionalGeneration by the
    KyuteyeRMSNorm MoshiVis has there (same weight and eps): mean of squares in the temporal
    transformer, unbiased variance in the depth transformer. Returns how many were replaced."""
    from transformers.models.moshi.modeling_moshi import MoshiRMSNorm

    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, MoshiRMSNorm)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        norm = KyuteyeRMSNorm(
            module.weight.shape[0], module.eps, use_variance=name.startswith("depth_decoder.")
        )
        norm.weight = module.weight
        setattr(parent, child, norm)
    return len(targets)


class ImageEncoder(nn.Module):
    """SigLIP (transformers' SiglipVisionModel, no head) -> proj_xa -> norm_xa: tokens (1, N, D)."""

    def __init__(self, siglip_config, lm_dim: int):
        from transformers import SiglipVisionModel

        super().__init__()
        self.siglip = SiglipVisionModel(siglip_config)
        self.proj = nn.Linear(siglip_config.hidden_size, lm_dim)
        self.norm = KyuteyeRMSNorm(lm_dim, eps=1e-5, use_variance=True, compute_dtype=None)

    @property
    def image_size(self) -> int:
        return int(self.siglip.config.image_size)

    @property
    def num_tokens(self) -> int:
        return (self.image_size // int(self.siglip.config.patch_size)) ** 2

    @property
    def num_stages(self) -> int:
        """How many times `stages` yields: embeddings, each encoder layer, the projection."""
        return len(self.siglip.encoder.layers) + 2

    @torch.no_grad()
    def stages(self, pixels: torch.Tensor) -> Iterator[torch.Tensor | None]:
        """Encode pixels (1, 3, S, S) one stage at a time: yields None after each stage but the
        last, which yields the tokens (1, N, D) in float32. Lets a caller spread one encode over
        several frame ticks."""
        param = self.proj.weight
        hidden = self.siglip.embeddings(pixels.to(param.device, torch.float32), interpolate_pos_encoding=True)
        yield None
        for layer in self.siglip.encoder.layers:
            hidden = layer(hidden, None)
            yield None
        hidden = self.siglip.post_layernorm(hidden)
        yield self.norm(self.proj(hidden))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """All stages at once: pixels (1, 3, S, S) -> tokens (1, N, D), float32."""
        for out in self.stages(pixels):
            if out is not None:
                return out
        raise AssertionError("the last stage yields the tokens")


class ImageCrossAttention(nn.Module):
    """The shared cross-attention (q, k, v, out projections) and each temporal layer's norm and gate."""

    def __init__(self, dim: int, num_heads: int, num_layers: int):
        super().__init__()
        if dim % num_heads or dim % 8:
            raise ValueError(f"width {dim} must divide by num_heads={num_heads} and by 8")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.norms = nn.ModuleList(
            KyuteyeRMSNorm(dim, eps=1e-8, use_variance=False) for _ in range(num_layers)
        )
        self.gate_in = nn.ModuleList(nn.Linear(dim, dim // 8, bias=False) for _ in range(num_layers))
        self.gate_out = nn.ModuleList(nn.Linear(dim // 8, dim, bias=False) for _ in range(num_layers))

    @torch.no_grad()
    def keys_values(self, tokens: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """An image's keys and values (1, H, N, head_dim) each, projected in float32, stored in `dtype`."""
        tokens = tokens.float()
        n = tokens.shape[1]

        def heads(weight: torch.Tensor) -> torch.Tensor:
            x = nn.functional.linear(tokens, weight.float())
            return x.view(1, n, self.num_heads, self.head_dim).transpose(1, 2).to(dtype).contiguous()

        return heads(self.k.weight), heads(self.v.weight)

    def forward(self, layer: int, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Layer `layer`'s gated update (B, T, D) for hidden states x (B, T, D) and image K/V (B, H, N, hd)."""
        B, T, _ = x.shape
        q = self.q(self.norms[layer](x)).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        attended = nn.functional.scaled_dot_product_attention(q, keys, values)
        y = self.out(attended.transpose(1, 2).reshape(B, T, self.dim))
        gate = torch.sigmoid(self.gate_out[layer](torch.relu(self.gate_in[layer](y))) - GATE_SHIFT)
        return y * gate


class MoshiVision(nn.Module):
    """A vision checkpoint's extra parts: `encoder` (float32) and `cross` (the LM's dtype)."""

    def __init__(self, encoder: ImageEncoder, cross: ImageCrossAttention):
        super().__init__()
        self.encoder = encoder
        self.cross = cross

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    @property
    def num_tokens(self) -> int:
        return self.encoder.num_tokens
