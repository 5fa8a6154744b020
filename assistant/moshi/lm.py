"""One streaming step of Moshi per 80 ms frame, driving transformers' Moshi modules directly.

Per step and per row (slot): write the user's codes into the delayed token ring, read this
step's 17 input tokens (text, 8 assistant, 8 user codebooks; initial tokens while a stream has
not reached its delay), run one position of the temporal transformer against a per-row ring
KV cache (bounded, static shapes: the sliding window of `context` frames), sample the text
token, then run the depth transformer over the 8 codebooks with its own small cache, and
return the un-delayed frame (text + 8 assistant codes) once one is complete.

Rows are independent: each has its own position counter, ring and cache rows, so a slot can be
reset at any step without touching the others.

With `pin_prompts`, a row's prompt stays in the cache for the whole conversation (an attention
sink, see `assistant.moshi.sink`): the ring slides the conversation past it instead of over it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from assistant.moshi.sampling import sample_tokens
from assistant.moshi.sink import use_sink_attention

UNGENERATED = -2  # ring value never read: a stream's initial token is used until it has real ones


class RingKVCache:
    """Per-layer key/value ring buffers (B, H_kv, window, head_dim) with per-row write positions.

    Duck-types the `update(key, value, layer_idx)` call transformers' MoshiAttention makes.
    sink: rows may pin their first positions (`pin`): the ring then wraps in the slots after them,
    and the step's mask is the two-part one `assistant.moshi.sink.sink_attention` reads.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        window: int,
        head_dim: int,
        device,
        dtype,
        sink: bool = False,
    ):
        shape = (batch_size, num_kv_heads, window, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.window = window
        self.sink = sink
        self.filled = torch.zeros(batch_size, window, dtype=torch.bool, device=device)
        self.pinned = torch.zeros(batch_size, dtype=torch.long, device=device)  # slots 0..pinned-1 kept
        self._slots = torch.arange(window, device=device)
        self._rows = torch.arange(batch_size, device=device)
        self._write = torch.zeros(batch_size, dtype=torch.long, device=device)

    def begin_step(self, positions: torch.Tensor, dtype) -> torch.Tensor:
        """Choose this step's ring slot per row; return the additive attention mask (B, 1, 1, window),
        or with `sink` (B, 1, 1, 2 x window): the unpinned slots, then the pinned ones."""
        # position p < window lands in slot p whatever is pinned; later ones wrap after the pinned slots
        self._write = self.pinned + (positions - self.pinned) % (self.window - self.pinned)
        self.filled[self._rows, self._write] = True
        seen = self.filled
        if self.sink:
            pinned = self._slots[None, :] < self.pinned[:, None]
            seen = torch.cat([self.filled & ~pinned, self.filled & pinned], dim=1)
        mask = torch.zeros(seen.shape, device=seen.device, dtype=dtype)
        mask.masked_fill_(~seen, torch.finfo(dtype).min)
        return mask[:, None, None, :]

    def pin(self, row: int, n: int) -> None:
        """Keep row `row`'s first n positions (its prompt, already written) for good."""
        if not self.sink:
            raise ValueError("this cache slides everything out; build it with sink=True to pin a prompt")
        if not 0 <= n < self.window:
            raise ValueError(f"{n} pinned frames leave no room in the {self.window}-frame context")
        self.pinned[row] = n

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.keys[layer_idx][self._rows, :, self._write] = key_states[:, :, 0]
        self.values[layer_idx][self._rows, :, self._write] = value_states[:, :, 0]
        return self.keys[layer_idx], self.values[layer_idx]

    def reset_rows(self, rows: torch.Tensor) -> None:
        self.filled[rows] = False
        self.pinned[rows] = 0
        for k, v in zip(self.keys, self.values, strict=True):
            k[rows] = 0
            v[rows] = 0

    def move_row(self, src: int, dst: int) -> None:
        """Copy row `src`'s cache into row `dst` (compaction when a slot closes)."""
        self.filled[dst] = self.filled[src]
        self.pinned[dst] = self.pinned[src]
        for k, v in zip(self.keys, self.values, strict=True):
            k[dst] = k[src]
            v[dst] = v[src]

    def first_rows(self, n: int) -> RingKVCache:
        """A cache over rows [0, n) sharing this one's storage: writes through it land here."""
        return self.rows(0, n)

    def rows(self, start: int, stop: int) -> RingKVCache:
        """A cache over rows [start, stop) sharing this one's storage."""
        view = copy.copy(self)
        view.keys = [k[start:stop] for k in self.keys]
        view.values = [v[start:stop] for v in self.values]
        view.filled = self.filled[start:stop]
        view.pinned = self.pinned[start:stop]
        view._rows = self._rows[: stop - start]
        view._write = self._write[start:stop]
        return view

    def load_row(self, row: int, prefix: PrefillCache) -> None:
        """Make row `row` hold exactly the prompt positions 0..n-1 computed in `prefix`."""
        n = prefix.length
        if n > self.window:
            raise ValueError(f"a prompt of {n} frames does not fit the {self.window}-frame context")
        self.reset_rows(torch.tensor([row], device=self.filled.device))
        self.filled[row, :n] = True
        for layer, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            k[row, :, :n] = prefix.keys[layer][0, :, :n]
            v[row, :, :n] = prefix.values[layer][0, :, :n]


class DepthCache:
    """Key/value cache of the depth transformer for one frame: codebook steps 0..K-1, all rows alike."""

    def __init__(
        self, num_layers: int, batch_size: int, num_kv_heads: int, steps: int, head_dim: int, device, dtype
    ):
        shape = (batch_size, num_kv_heads, steps, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.step = 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.keys[layer_idx][:, :, self.step] = key_states[:, :, 0]
        self.values[layer_idx][:, :, self.step] = value_states[:, :, 0]
        return self.keys[layer_idx][:, :, : self.step + 1], self.values[layer_idx][:, :, : self.step + 1]


class PrefillCache:
    """Key/value cache of one conversation's prompt, grown a chunk of positions at a time.

    The prompt's every stream is known in advance, so the temporal transformer can take many
    positions in one forward pass (causal within the chunk, attending to all earlier positions)
    instead of one step per frame. The result is loaded into an engine row with
    `MoshiStreamingLM.load_prompt`, or kept as the shared prefix of a voice and copied.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, capacity: int, head_dim: int, device, dtype):
        shape = (1, num_kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.capacity = capacity
        self.length = 0  # positions held
        self._chunk = 0  # positions of the chunk being written

    def copy(self, capacity: int | None = None) -> PrefillCache:
        """An independent copy (room for `capacity` positions), e.g. a voice prefix for a new slot."""
        capacity = max(capacity or self.capacity, self.length)
        layers, (_, heads, _, head_dim) = len(self.keys), self.keys[0].shape
        other = PrefillCache(layers, heads, capacity, head_dim, self.keys[0].device, self.keys[0].dtype)
        for mine, theirs in ((self.keys, other.keys), (self.values, other.values)):
            for a, b in zip(mine, theirs, strict=True):
                b[:, :, : self.length] = a[:, :, : self.length]
        other.length = self.length
        return other

    def begin_chunk(self, n: int, dtype) -> torch.Tensor:
        """Room for n more positions; the additive mask (1, 1, n, length + n) of a causal chunk."""
        if self.length + n > self.capacity:
            raise ValueError(f"prompt longer than its cache ({self.length + n} > {self.capacity} frames)")
        self._chunk = n
        total = self.length + n
        query = torch.arange(self.length, total, device=self.keys[0].device)[:, None]
        key = torch.arange(total, device=self.keys[0].device)[None, :]
        mask = torch.zeros(n, total, device=self.keys[0].device, dtype=dtype)
        mask.masked_fill_(key > query, torch.finfo(dtype).min)
        return mask[None, None]

    def end_chunk(self) -> None:
        self.length += self._chunk
        self._chunk = 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        stop = self.length + self._chunk
        self.keys[layer_idx][:, :, self.length : stop] = key_states
        self.values[layer_idx][:, :, self.length : stop] = value_states
        return self.keys[layer_idx][:, :, :stop], self.values[layer_idx][:, :, :stop]


@dataclass
class PromptTail:
    """Where a prompt ends: the temporal transformer's last output, and what the next position holds.

    hidden: (1, 1, D) normed output at the prompt's last position; text_logits: (1, V).
    carry: long (1 + 2K,), the tokens already decided for the first position after the prompt
    (the delayed streams of the prompt's last frame); -1 where the model chooses.
    length: positions in the prompt.
    """

    hidden: torch.Tensor
    text_logits: torch.Tensor
    carry: torch.Tensor
    length: int


@dataclass
class Sampling:
    """Per-row sampling settings as tensors on the model's device. Temperature 0 = greedy."""

    text_temperature: torch.Tensor  # float (B,)
    text_top_k: torch.Tensor  # long (B,)
    audio_temperature: torch.Tensor  # float (B,)
    audio_top_k: torch.Tensor  # long (B,)
    uniform: torch.Tensor  # float (B, 1 + K): this frame's draws, text first
    text_kmax: int | None = None  # max of text_top_k, known on the host (saves a device sync)
    audio_kmax: int | None = None


@dataclass
class LMStep:
    """What one step produced.

    text: long (B,) and audio: long (B, K), the un-delayed frame (meaningful where `ready`).
    ready: bool (B,), False for a row's first max_delay steps (no complete frame yet).
    text_logits: float (B, text_vocab) of this step. sampled_text / sampled_audio: this step's raw tokens.
    inputs: long (B, 17), the tokens fed to the temporal transformer this step.
    """

    text: torch.Tensor
    audio: torch.Tensor
    ready: torch.Tensor
    text_logits: torch.Tensor
    sampled_text: torch.Tensor
    sampled_audio: torch.Tensor
    inputs: torch.Tensor
    timings_ms: dict[str, float]


class MoshiStreamingLM:
    """Streaming state + step for a MoshiForConditionalGeneration over `batch_size` independent rows.

    pin_prompts: a prompt loaded into a row (`load_prompt`) stays in its cache for good while the
    conversation slides past it; otherwise the window slides over the prompt like over anything.
    """

    def __init__(
        self, model, batch_size: int, delays=None, context: int | None = None, pin_prompts: bool = False
    ):
        config = model.config
        self.model = model
        self.batch_size = batch_size
        self.num_codebooks = K = config.num_codebooks
        self.delays = list(delays) if delays is not None else [0, 0] + [1] * (K - 1) + [0] + [1] * (K - 1)
        if len(self.delays) != 1 + 2 * K:
            raise ValueError(
                f"delays must have {1 + 2 * K} entries (text + 2 x {K} codebooks), got {self.delays}"
            )
        self.max_delay = max(self.delays)
        self.text_card = config.vocab_size
        self.card = config.audio_vocab_size
        self.context = int(context or config.sliding_window or config.max_position_embeddings)
        param = next(model.decoder.parameters())
        self.device, self.dtype = param.device, param.dtype

        self.text_embed = model.decoder.model.embed_tokens
        self.audio_embeds = model.embed_tokens
        self.layers = model.decoder.model.layers
        self.out_norm = model.decoder.model.norm
        self.text_head = model.decoder.lm_head
        self.depth = model.depth_decoder

        B, dev = batch_size, self.device
        self._delays_t = torch.tensor(self.delays, device=dev)
        self._ring_len = self.max_delay + 2
        self.tokens = torch.full((B, 1 + 2 * K, self._ring_len), UNGENERATED, dtype=torch.long, device=dev)
        self.offsets = torch.zeros(B, dtype=torch.long, device=dev)
        self._initial = torch.tensor([self.text_card] + [self.card] * (2 * K), device=dev)
        self.kv = RingKVCache(
            config.num_hidden_layers,
            B,
            config.num_key_value_heads,
            self.context,
            config.head_dim,
            dev,
            self.dtype,
            sink=pin_prompts,
        )
        self.pin_prompts = pin_prompts
        if pin_prompts:
            use_sink_attention(model)
        dep = self.depth.config
        self._depth_shape = (dep.num_hidden_layers, B, dep.num_key_value_heads, K, dep.head_dim)
        self._codebook_idx = [torch.tensor([k], device=dev) for k in range(K)]
        self._rows = torch.arange(B, device=dev)

    # -- state ---------------------------------------------------------------------------------
    def reset(self, rows) -> None:
        """Forget everything of `rows` (int, list or tensor): tokens, positions, KV cache."""
        rows = torch.as_tensor(rows, device=self.device).reshape(-1)
        self.tokens[rows] = UNGENERATED
        self.offsets[rows] = 0
        self.kv.reset_rows(rows)

    def move_row(self, src: int, dst: int) -> None:
        """Copy everything of row `src` (tokens, position, KV cache) into row `dst`; `src` is left as is."""
        self.tokens[dst] = self.tokens[src]
        self.offsets[dst] = self.offsets[src]
        self.kv.move_row(src, dst)

    def first_rows(self, n: int) -> MoshiStreamingLM:
        """The same LM over rows [0, n) only, sharing this one's state tensors (views, not copies).

        Stepping it advances exactly those rows here, with shapes fixed by n: what a batch bucket
        needs (static shapes for CUDA graphs, no gather of the KV cache per step).
        """
        if not 1 <= n <= self.batch_size:
            raise ValueError(f"rows must be in 1..{self.batch_size}, got {n}")
        view = copy.copy(self)
        view.batch_size = n
        view.tokens = self.tokens[:n]
        view.offsets = self.offsets[:n]
        view.kv = self.kv.first_rows(n)
        view._rows = self._rows[:n]
        view._depth_shape = (self._depth_shape[0], n, *self._depth_shape[2:])
        return view

    def rows(self, start: int, stop: int) -> MoshiStreamingLM:
        """The same LM over rows [start, stop), sharing this one's state tensors."""
        view = copy.copy(self)
        view.batch_size = stop - start
        view.tokens = self.tokens[start:stop]
        view.offsets = self.offsets[start:stop]
        view.kv = self.kv.rows(start, stop)
        view._rows = self._rows[: stop - start]
        view._depth_shape = (self._depth_shape[0], stop - start, *self._depth_shape[2:])
        return view

    # -- prompts ---------------------------------------------------------------------------------
    def new_prefill_cache(self, capacity: int) -> PrefillCache:
        config = self.model.config
        return PrefillCache(
            config.num_hidden_layers,
            config.num_key_value_heads,
            capacity,
            config.head_dim,
            self.device,
            self.dtype,
        )

    def embed_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """Input embeddings (N, D) of N positions' 17 input tokens (N, 1 + 2K)."""
        inputs = inputs.to(self.device, torch.long)
        embeds = self.text_embed(inputs[:, 0])
        for k in range(2 * self.num_codebooks):
            embeds = embeds + self.audio_embeds[k](inputs[:, 1 + k])
        return embeds

    @torch.no_grad()
    def prefill(self, cache: PrefillCache, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the temporal transformer over the next N prompt positions (embeds (N, D)) in one pass.

        Returns the normed hidden state (1, 1, D) and text logits (1, V) of the last position.
        """
        hidden = embeds.to(self.device, self.dtype)[None]
        n = hidden.shape[1]
        start = cache.length
        mask = cache.begin_chunk(n, hidden.dtype)
        positions = torch.arange(start, start + n, device=self.device)[None]
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_ids=positions, cache=cache)
        cache.end_chunk()
        hidden = self.out_norm(hidden[:, -1:])
        return hidden, self.text_head(hidden)[:, 0].float()

    @torch.no_grad()
    def prefill_stepwise(self, row: int, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same as `prefill`, one position per step through the live per-frame path of `row`.

        Slow (one forward per frame); kept as the reference the one-pass prefill is checked against,
        and for prompts longer than a chunk can hold. The row must have been reset first.
        """
        view = self.rows(row, row + 1)
        hidden = text_logits = None
        for embed in embeds.to(self.device, self.dtype):
            hidden, text_logits = view._temporal_embeds(embed[None, :])
            view.offsets += 1
        return hidden, text_logits

    @torch.no_grad()
    def load_prompt(
        self, row: int, cache: PrefillCache | None, tail: PromptTail, sampling: Sampling
    ) -> LMStep:
        """Start row `row`'s conversation right after its prompt.

        cache: the prompt's keys and values from `prefill` (None when `prefill_stepwise` already
        wrote them into the row). Samples the first position after the prompt from the prompt's
        last output (text free, the delayed streams forced to `tail.carry`) exactly as a step
        would, so the next `step` continues as if the prompt had been stepped frame by frame.
        """
        K, dev = self.num_codebooks, self.device
        if cache is not None:
            self.kv.load_row(row, cache)
        if self.pin_prompts:
            self.kv.pin(row, tail.length)
        self.tokens[row] = UNGENERATED
        view = self.rows(row, row + 1)
        carry = tail.carry.to(dev, torch.long)[None]  # (1, 17)
        free = carry < 0
        force_text = carry[:, 0].clamp(min=0)
        text = sample_tokens(
            tail.text_logits,
            sampling.text_temperature,
            sampling.text_top_k,
            sampling.text_kmax or int(sampling.text_top_k.max()),
            sampling.uniform[:, 0],
        )
        text = torch.where(free[:, 0], text, force_text)
        cache_d = DepthCache(*view._depth_shape, dev, self.dtype)
        kmax = sampling.audio_kmax or int(sampling.audio_top_k.max())
        previous, audio = text, []
        for k in range(K):
            logits = view._depth_step(k, previous, tail.hidden, cache_d)
            token = sample_tokens(
                logits, sampling.audio_temperature, sampling.audio_top_k, kmax, sampling.uniform[:, 1 + k]
            )
            token = torch.where(free[:, 1 + k], token, carry[:, 1 + k])
            audio.append(token)
            previous = token
        audio = torch.stack(audio, dim=1)
        position = tail.length % self._ring_len
        self.tokens[row, :, position] = torch.where(free[0], self.tokens[row, :, position], carry[0])
        self.tokens[row, 0, position] = text[0]
        self.tokens[row, 1 : 1 + K, position] = audio[0]
        self.offsets[row] = tail.length
        return LMStep(
            text=text,
            audio=audio,
            ready=torch.ones(1, dtype=torch.bool, device=dev),
            text_logits=tail.text_logits,
            sampled_text=text,
            sampled_audio=audio,
            inputs=carry,
            timings_ms={},
        )

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(
        self,
        user_codes: torch.Tensor,
        sampling: Sampling,
        *,
        force_mask: torch.Tensor | None = None,
        force_text: torch.Tensor | None = None,
        force_audio: torch.Tensor | None = None,
        profile: bool = False,
    ) -> LMStep:
        """Advance every row by one frame.

        user_codes: long (B, K), the user's Mimi codes for this frame.
        force_mask: bool (B,); where True, the sampled text / audio tokens are replaced by
        force_text (B,) / force_audio (B, K) (silence forcing, teacher forcing in tests).
        """
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        hidden, text_logits, inputs = self.step_temporal(user_codes)
        if profile:
            _sync(self.device)
            timings["temporal_ms"] = (time.perf_counter() - t0) * 1000
        t1 = time.perf_counter()
        out = self.step_depth(hidden, text_logits, inputs, sampling, force_mask, force_text, force_audio)
        if profile:
            _sync(self.device)
            timings["depth_ms"] = (time.perf_counter() - t1) * 1000
        out.timings_ms = timings
        return out

    def step_temporal(self, user_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """First half of `step`: take in the user's codes, run the temporal transformer one position.

        Returns the normed hidden state (B, 1, D), text logits (B, V) and the 17 input tokens (B, 17).
        """
        K, dev = self.num_codebooks, self.device
        user_codes = user_codes.to(dev, torch.long)
        # The user's frame s is written at step s, each codebook at its delay.
        user_delays = self._delays_t[1 + K :]
        write = (self.offsets[:, None] + user_delays[None, :]) % self._ring_len
        self.tokens[self._rows[:, None], (1 + K) + torch.arange(K, device=dev)[None, :], write] = user_codes
        position = self.offsets % self._ring_len
        current = self.tokens[self._rows, :, position]  # (B, 17)
        is_init = self.offsets[:, None] <= self._delays_t[None, :]
        inputs = torch.where(is_init, self._initial[None, :], current)
        hidden, text_logits = self._temporal(inputs)
        return hidden, text_logits, inputs

    def step_depth(
        self,
        hidden: torch.Tensor,
        text_logits: torch.Tensor,
        inputs: torch.Tensor,
        sampling: Sampling,
        force_mask: torch.Tensor | None = None,
        force_text: torch.Tensor | None = None,
        force_audio: torch.Tensor | None = None,
    ) -> LMStep:
        """Second half of `step`: sample text, run the depth transformer, advance, un-delay the frame."""
        K, dev = self.num_codebooks, self.device
        text_kmax = sampling.text_kmax or int(sampling.text_top_k.max())
        text = sample_tokens(
            text_logits, sampling.text_temperature, sampling.text_top_k, text_kmax, sampling.uniform[:, 0]
        )
        if force_mask is not None:
            text = torch.where(force_mask, force_text.to(dev), text)
        audio = self._depth(hidden, text, sampling, force_mask, force_audio)

        self.offsets += 1
        position = self.offsets % self._ring_len
        self.tokens[self._rows, 0, position] = text
        self.tokens[self._rows[:, None], 1 + torch.arange(K, device=dev)[None, :], position[:, None]] = audio
        # Un-delay: stream k of the frame completed now was generated delays[k] steps ago.
        read = (self.offsets[:, None] - self.max_delay + self._delays_t[None, : 1 + K]) % self._ring_len
        frame = self.tokens[self._rows[:, None], torch.arange(1 + K, device=dev)[None, :], read]
        ready = self.offsets > self.max_delay
        return LMStep(
            text=frame[:, 0],
            audio=frame[:, 1:],
            ready=ready,
            text_logits=text_logits,
            sampled_text=text,
            sampled_audio=audio,
            inputs=inputs,
            timings_ms={},
        )

    def _temporal(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One position of the temporal transformer. Returns normed hidden (B, 1, D), text logits (B, V)."""
        K = self.num_codebooks
        embeds = self.text_embed(inputs[:, 0])
        for k in range(2 * K):
            embeds = embeds + self.audio_embeds[k](inputs[:, 1 + k])
        return self._temporal_embeds(embeds)

    def _temporal_embeds(self, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`_temporal` from input embeddings (B, D) instead of tokens."""
        hidden = embeds[:, None, :]
        mask = self.kv.begin_step(self.offsets, hidden.dtype)
        positions = self.offsets[:, None]
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_ids=positions, cache=self.kv)
        hidden = self.out_norm(hidden)
        return hidden, self.text_head(hidden)[:, 0].float()

    def _depth_step(
        self, k: int, previous: torch.Tensor, hidden: torch.Tensor, cache: DepthCache
    ) -> torch.Tensor:
        """Codebook k's logits (B, card): input is the previous token (text for k = 0) + its projection."""
        depth, idx = self.depth, self._codebook_idx[k]
        embed = depth.text_embed_tokens(previous) if k == 0 else depth.embed_tokens[k - 1](previous)
        x = embed[:, None, :] + depth.input_projections(hidden, idx)
        cache.step = k
        for layer in depth.layers:
            x = layer(x, cache=cache, codebook_idx=idx)
        return depth.lm_heads(x, idx)[:, 0].float()

    def _depth(
        self,
        hidden: torch.Tensor,
        text: torch.Tensor,
        sampling: Sampling,
        force_mask: torch.Tensor | None,
        force_audio: torch.Tensor | None,
    ) -> torch.Tensor:
        """The depth transformer's K codebook steps, each fed the token chosen at the step before."""
        cache = DepthCache(*self._depth_shape, self.device, self.dtype)
        kmax = sampling.audio_kmax or int(sampling.audio_top_k.max())
        previous = text
        out = []
        for k in range(self.num_codebooks):
            logits = self._depth_step(k, previous, hidden, cache)
            token = sample_tokens(
                logits, sampling.audio_temperature, sampling.audio_top_k, kmax, sampling.uniform[:, 1 + k]
            )
            if force_mask is not None:
                token = torch.where(force_mask, force_audio[:, k].to(self.device), token)
            out.append(token)
            previous = token
        return torch.stack(out, dim=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
