"""CPU matmul kernels for the streaming Mimi: weights packed for oneDNN, convolutions as im2col + one matmul.

Streaming feeds every layer only a few rows per call, so the layers are bound by reading their
weights; these keep the weights in the memory order CPU matmuls stream fastest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Below this many output steps a convolution's weights dwarf its activations: one matmul over
# im2col columns streams the weights once, about 3x faster than torch's conv1d on CPU (measured).
MATMUL_MAX_STEPS = 32


def conv1d_as_matmul(
    x: torch.Tensor, matmul: PackedLinear, kernel: int, stride: int, dilation: int
) -> torch.Tensor:
    """F.conv1d(x, weight, bias, stride, 0, dilation) for groups=1, as im2col + one matmul.

    matmul: `PackedLinear` of the weight as (Cout, Cin * kernel)."""
    cin = x.shape[1]
    cols = x.unfold(-1, (kernel - 1) * dilation + 1, stride)  # (b, Cin, T, span)
    if dilation > 1:
        cols = cols[..., ::dilation]
    cols = cols.transpose(1, 2).reshape(x.shape[0], cols.shape[2], cin * kernel)
    return matmul(cols).transpose(1, 2)


def _packs_for_onednn(weight: torch.Tensor) -> bool:
    return (
        weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
    )


class PackedLinear:
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
        self.transposed = (
            not self.packed and weight.device.type == "cpu" and weight.shape[0] > weight.shape[1]
        )
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
