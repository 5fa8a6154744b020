"""Mimi's split residual vector quantizer for one latent per row (encode: nearest centroids, decode: sums)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.mimi.modeling_mimi import MimiSplitResidualVectorQuantizer

from audio.mimi.kernels import PackedLinear


class Quantizer:
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
                    [PackedLinear(-2 * e, (e * e).sum(-1), rows_hint=batch_size) for e in embeds],
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
