"""Streaming versions of Mimi's SEANet layers (causal convolutions, transposed convolutions, resnet blocks).

Each keeps its state in plain tensors, one row per batch slot, so one slot can be reset while the
others go on:
- causal convolutions keep the last `kernel - stride` input samples (the left padding they would see offline);
- transposed convolutions keep the overlapping tail of their last output, added to the next one.
A stateful part is called as `part(x, rows)` and reset with `part.reset(row)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.mimi.modeling_mimi import MimiConv1d, MimiConvTranspose1d, MimiResnetBlock

from audio.mimi.kernels import MATMUL_MAX_STEPS, PackedLinear, conv1d_as_matmul

Rows = torch.Tensor | None  # indices of the batch rows a call feeds; None = every row


class StreamingConv1d:
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
            PackedLinear(self.weight.reshape(cout, cin * kernel), self.bias, rows_hint=2 * batch_size)
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
        if self.matmul is not None and steps <= MATMUL_MAX_STEPS:
            return conv1d_as_matmul(x, self.matmul, self.weight.shape[-1], self.stride, self.dilation)
        return F.conv1d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class StreamingConvTranspose1d:
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
            PackedLinear(self.weight.reshape(cin, -1).t(), rows_hint=2 * batch_size)
            if self.groups == 1
            else None
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
        if self.matmul is not None and steps <= MATMUL_MAX_STEPS:
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
            StreamingConv1d(block.shortcut, batch_size, device, dtype)
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
        return StreamingConv1d(layer, batch_size, device, dtype)
    if isinstance(layer, MimiConvTranspose1d):
        return StreamingConvTranspose1d(layer, batch_size, device, dtype)
    if isinstance(layer, MimiResnetBlock):
        return _StreamingResnetBlock(layer, batch_size, device, dtype)
    if isinstance(layer, nn.ELU):
        return layer  # stateless
    raise NotImplementedError(f"no streaming version of {type(layer).__name__}")


class StreamingStack:
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
