"""The streaming step of a vision model: Moshi's step with each row's image in every temporal layer.

Every row holds its own image keys and values (B, H, N, head_dim) and two numbers: whether it
has an image (`has_image`) and the step from which the image counts (`image_start`, Kyutai's
`xa_start`: frames since the row's conversation began). A row's image is in force at a step when
it has one and its position has reached `image_start`; for the other rows the cross-attention's
update is discarded (`torch.where`, so their output is exactly plain Moshi's, as when the
reference skips the cross-attention). Shapes never depend on which rows have images, so a batch
bucket's CUDA graph serves any mix; eagerly, a batch with no image in it skips the work.

All state is written in place (the graphs read these very tensors), and row views
(`first_rows`, `rows`) narrow it like the rest of the LM's state.
"""

from __future__ import annotations

import numpy as np
import torch

from assistant.moshi.lm import MoshiStreamingLM


class VisionStreamingLM(MoshiStreamingLM):
    """MoshiStreamingLM plus per-row image K/V and the gated cross-attention of `vision`."""

    def __init__(
        self,
        model,
        vision,
        batch_size: int,
        delays=None,
        context: int | None = None,
        cross_attend_always: bool = False,
    ):
        """cross_attend_always: compute the cross-attention even when no row has an image (a step
        that is compiled or captured once must hold it for every later mix of rows)."""
        super().__init__(model, batch_size, delays=delays, context=context)
        self.vision = vision
        cross = vision.cross
        shape = (batch_size, cross.num_heads, vision.num_tokens, cross.head_dim)
        self.image_keys = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.image_values = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.has_image = torch.zeros(batch_size, dtype=torch.bool, device=self.device)
        self.image_start = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self._host_images = np.zeros(batch_size, dtype=bool)  # has_image, readable without a device sync
        self.cross_attend_always = cross_attend_always

    # -- images ----------------------------------------------------------------------------------
    def set_image(self, row: int, keys: torch.Tensor, values: torch.Tensor, start: int) -> None:
        """Row `row`'s image is now keys / values (1, H, N, hd), in force from the step whose
        position is >= start (already reached: from its next step)."""
        self.image_keys[row].copy_(keys[0])
        self.image_values[row].copy_(values[0])
        self.image_start[row] = int(start)
        self.has_image[row] = True
        self._host_images[row] = True

    def clear_image(self, row: int) -> None:
        """Row `row` has no image from its next step on (plain Moshi again)."""
        self.has_image[row] = False
        self._host_images[row] = False

    def row_has_image(self, row: int) -> bool:
        return bool(self._host_images[row])

    # -- state -----------------------------------------------------------------------------------
    def reset(self, rows) -> None:
        super().reset(rows)
        rows = torch.as_tensor(rows, device=self.device).reshape(-1)
        self.image_keys[rows] = 0
        self.image_values[rows] = 0
        self.has_image[rows] = False
        self.image_start[rows] = 0
        self._host_images[rows.cpu().numpy()] = False

    def move_row(self, src: int, dst: int) -> None:
        super().move_row(src, dst)
        self.image_keys[dst] = self.image_keys[src]
        self.image_values[dst] = self.image_values[src]
        self.has_image[dst] = self.has_image[src]
        self.image_start[dst] = self.image_start[src]
        self._host_images[dst] = self._host_images[src]

    def rows(self, start: int, stop: int) -> VisionStreamingLM:
        view = super().rows(start, stop)
        return self._narrowed(view, start, stop)

    def first_rows(self, n: int) -> VisionStreamingLM:
        view = super().first_rows(n)
        return self._narrowed(view, 0, n)

    def _narrowed(self, view: VisionStreamingLM, start: int, stop: int) -> VisionStreamingLM:
        view.image_keys = self.image_keys[start:stop]
        view.image_values = self.image_values[start:stop]
        view.has_image = self.has_image[start:stop]
        view.image_start = self.image_start[start:stop]
        view._host_images = self._host_images[start:stop]
        return view

    # -- the step --------------------------------------------------------------------------------
    def _temporal_embeds(self, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Moshi's temporal position with each row's gated cross-attention after its self-attention."""
        hidden = embeds[:, None, :]
        mask = self.kv.begin_step(self.offsets, hidden.dtype)
        positions = self.offsets[:, None]
        attend = self.cross_attend_always or torch.compiler.is_compiling() or bool(self._host_images.any())
        in_force = (self.has_image & (self.offsets >= self.image_start))[:, None, None]
        cross = self.vision.cross
        for index, layer in enumerate(self.layers):
            attended, _ = layer.self_attn(
                hidden_states=layer.input_layernorm(hidden),
                attention_mask=mask,
                position_ids=positions,
                cache=self.kv,
            )
            hidden = hidden + attended
            if attend:
                update = cross(index, hidden, self.image_keys, self.image_values)
                hidden = torch.where(in_force, hidden + update, hidden)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        hidden = self.out_norm(hidden)
        return hidden, self.text_head(hidden)[:, 0].float()


def streaming_lm(
    loaded, batch_size: int, context: int | None = None, static: bool = False, pin_prompts: bool = False
) -> MoshiStreamingLM:
    """The streaming LM for `loaded`: with per-row images when it has a vision side.

    static: the step will be compiled or captured (the cross-attention is then always computed).
    pin_prompts: keep each row's prompt in its cache for good (`MoshiStreamingLM`); a vision model
    takes no prompt, so it has nothing to pin.
    """
    if loaded.vision is None:
        return MoshiStreamingLM(
            loaded.model, batch_size, delays=loaded.delays, context=context, pin_prompts=pin_prompts
        )
    if pin_prompts:
        raise ValueError("a vision model takes no prompt: there is nothing to pin in its context")
    return VisionStreamingLM(
        loaded.model,
        loaded.vision,
        batch_size,
        delays=loaded.delays,
        context=context,
        cross_attend_always=static,
    )
