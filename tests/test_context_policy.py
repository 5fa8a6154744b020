"""Long conversations keep their persona: the prompt pinned at the start of the sliding window.

tests/data/personaplex_tiny remembers 200 frames (16 s). With the `pin` context policy a prompt's
keys stay in the cache while the conversation slides past them; with `slide` (what the reference
implementations do) the ring overwrites them, oldest first. What a user would notice: the same
answers as before until the window is full, and after that a model that still attends to the
persona it was given, where the sliding one has forgotten it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch
from moshi_fixtures import random_moshi, tiny_kyutai_kwargs

from assistant.backends.moshi import MoshiEngine
from assistant.engine import SlotOptions
from assistant.moshi.lm import MoshiStreamingLM, PromptTail, Sampling
from assistant.moshi.random_models import random_loaded
from assistant.moshi.sink import sink_attention

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).parent / "data" / "personaplex_tiny"
ROLE = json.loads((DATA / "reference.json").read_text())["role"]
PROMPT = SlotOptions(instructions=ROLE, voice="TINYF0.wav")
WINDOW = 200  # the checkpoint's context
K = 8


def engine(policy: str | None, batch_size: int = 1, **options) -> MoshiEngine:
    return MoshiEngine.from_pretrained(
        str(DATA),
        batch_size=batch_size,
        device="cpu",
        temperature=0.0,
        text_temperature=0.0,
        context_policy=policy,
        **{"compile": False, **options},
    )


def user_frames() -> np.ndarray:
    """The checkpoint's user.wav as float32 (frames, 1920)."""
    audio, _ = soundfile.read(str(DATA / "user.wav"), dtype="float32")
    n = -(-len(audio) // 1920)
    padded = np.zeros(n * 1920, dtype=np.float32)
    padded[: len(audio)] = audio
    return padded.reshape(n, 1920)


def attention_weights(lm: MoshiStreamingLM) -> tuple[list[torch.Tensor], list]:
    """Hooks that keep each temporal layer's attention weights (B, H, 1, window) of the next steps."""
    kept: list[torch.Tensor] = []
    hooks = [
        layer.self_attn.register_forward_hook(lambda _m, _args, out: kept.append(out[1]))
        for layer in lm.layers
    ]
    return kept, hooks


def greedy(batch: int) -> Sampling:
    zeros, ones = torch.zeros(batch), torch.ones(batch, dtype=torch.long)
    return Sampling(zeros, ones, zeros, ones, torch.zeros(batch, 1 + K))


@pytest.fixture(scope="module")
def long_run():
    """The same greedy conversation under both policies, past three windows: the model's tokens at
    each step, the prompt's keys before and after, the attention of the last step. The LM is stepped
    on random user codes (the codec would only make it slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `one_torch_thread`, which a module's fixture runs before
    engines = {policy: engine(policy) for policy in ("pin", "slide")}
    for eng in engines.values():
        eng.open(0, PROMPT)
        eng.finish_prompts()
    n = int(engines["pin"].lm.offsets[0])
    before = {p: [k[0, :, :n].clone() for k in eng.lm.kv.keys] for p, eng in engines.items()}
    steps = 3 * WINDOW
    user = torch.randint(0, 64, (steps, 1, K), generator=torch.Generator().manual_seed(0))
    said: dict[str, list[list[int]]] = {p: [] for p in engines}
    for t in range(steps):
        if t == steps - 1:
            weights, hooks = attention_weights(engines["pin"].lm)
        for policy, eng in engines.items():
            out = eng.lm.step(user[t], greedy(1))
            said[policy].append([int(out.text[0]), *out.audio[0].tolist()])
    for hook in hooks:
        hook.remove()
    torch.set_num_threads(threads)
    return SimpleNamespace(engines=engines, prompt=n, before=before, said=said, weights=weights, steps=steps)


def test_until_the_window_is_full_pin_says_exactly_what_slide_says(long_run):
    n = long_run.prompt
    assert 40 < n < WINDOW
    first_full = WINDOW - n  # the step whose position is the window's first overwrite under slide
    pinned, slid = long_run.said["pin"], long_run.said["slide"]
    assert pinned[:first_full] == slid[:first_full]
    assert len({tuple(tokens) for tokens in pinned[:first_full]}) > 10  # a conversation, not a constant
    # Past it they part: the pinned model still hears its prompt, the sliding one has lost its start.
    later = [t for t in range(first_full, long_run.steps) if pinned[t] != slid[t]]
    assert len(later) > long_run.steps // 4


def test_past_three_windows_the_prompt_is_still_in_the_cache_and_attended(long_run):
    n, pin, slide = long_run.prompt, long_run.engines["pin"], long_run.engines["slide"]
    assert int(pin.lm.offsets[0]) == n + long_run.steps > 3 * WINDOW
    for kept, now in zip(long_run.before["pin"], pin.lm.kv.keys, strict=True):
        assert torch.equal(now[0, :, :n], kept)  # the prompt's keys, bit for bit
    for lost, now in zip(long_run.before["slide"], slide.lm.kv.keys, strict=True):
        assert not torch.equal(now[0, :, :n], lost)  # overwritten by the conversation
    for weights in long_run.weights:  # (1, H, 1, window), each layer's last step
        on_prompt = weights[0, :, 0, :n].sum(dim=-1)
        assert (on_prompt > 0.01).all(), on_prompt
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones_like(weights.sum(dim=-1)))


@pytest.mark.parametrize("policy", ["pin", "slide"])
def test_the_context_fill_counts_the_prompt_and_what_followed(policy):
    window = 100  # a shorter window than the checkpoint's, to fill it in a few steps
    eng = engine(policy, context=window)
    eng.open(0, PROMPT)
    assert eng.context_fill(0) == 0.0  # the prompt is not in yet
    eng.finish_prompts()
    n = eng.prompter.length(ROLE, "TINYF0.wav")
    assert eng.context_fill(0) == pytest.approx(n / window)
    steps = window - n + 2
    fills = [eng.step(user_frames()[:1]) and eng.context_fill(0) for _ in range(steps)]
    assert fills == pytest.approx([min(n + k, window) / window for k in range(1, steps + 1)])
    assert fills[window - n - 2] < 1.0 == fills[window - n - 1]  # full once n + k positions fill it
    eng.update(0, SlotOptions(instructions="Talk about the sea.", voice="TINYF0.wav"))
    assert eng.context_fill(0) == 0.0  # the model starts over from the new prompt
    eng.finish_prompts()
    assert eng.context_fill(0) == pytest.approx(
        eng.prompter.length("Talk about the sea.", "TINYF0.wav") / window
    )
    eng.close(0)
    assert eng.context_fill(0) is None


def test_a_model_without_prompts_fills_with_the_conversation_only():
    eng = MoshiEngine.from_loaded(random_loaded("tiny", torch.device("cpu"), torch.float32), compile=False)
    assert eng.describe()["context_policy"] == "pin" and not eng.lm.pin_prompts  # nothing to pin
    eng.open(0, SlotOptions(seed=1))
    for _ in range(5):
        eng.step(np.zeros((1, 1920), np.float32))
    assert eng.context_fill(0) == pytest.approx(5 / eng.lm.context)
    with pytest.raises(ValueError, match="context policy must be one of pin, slide"):
        engine("keep")


# -- the attention ---------------------------------------------------------------------------------


def rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, hd) rotary-embedded at positions (B, T), as transformers' Moshi does."""
    from transformers.models.moshi.modeling_moshi import apply_rotary_pos_emb

    angles = positions[:, :, None].float() * inv_freq
    emb = torch.cat([angles, angles], dim=-1)
    rotated, _ = apply_rotary_pos_emb(x, x, emb.cos(), emb.sin())
    return rotated


def test_pinned_keys_are_scored_from_the_window_end_and_the_others_from_the_true_position():
    """Against attention written out with every key rotated where the model is meant to see it:
    conversation keys at their own positions with the query at p, prompt keys at 0..n-1 with the
    query at min(p, W - 1); the cache holds them as prefill and steps wrote them."""
    torch.manual_seed(0)
    B, H, W, hd, n = 3, 4, 12, 16, 5
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    module = SimpleNamespace(rotary_emb=SimpleNamespace(inv_freq=inv_freq))
    p = torch.tensor([[40], [W - 3], [W + 7]])  # far past the window, before it, just past it
    pinned = torch.tensor([n, n, 0])  # the last row has no prompt
    q0, k0, v = torch.randn(B, H, 1, hd), torch.randn(B, H, W, hd), torch.randn(B, H, W, hd)
    # slot s holds position s (pinned, or not yet wrapped) or the latest position that wrapped onto it
    slots = torch.arange(W)[None].expand(B, W)
    ring = W - pinned[:, None]
    age = (p - slots - pinned[:, None]) % ring  # steps since the slot's key was written
    held = torch.where((slots < pinned[:, None]) | (p < W), slots, p - age)
    keys = rope(k0, held, inv_freq)
    filled = held <= p
    is_pinned = slots < pinned[:, None]
    mask = torch.zeros(B, 2 * W).masked_fill_(
        ~torch.cat([filled & ~is_pinned, filled & is_pinned], 1), torch.finfo(torch.float32).min
    )
    out, weights = sink_attention(
        module, rope(q0, p, inv_freq), keys, v, mask[:, None, None], 0.25, position_ids=p, fallback=None
    )
    virtual = p.clamp(max=W - 1)
    assert (virtual - held.masked_fill(~is_pinned, 0) <= W - 1).all()  # within the trained context
    scores = (
        torch.where(
            is_pinned[:, None, None],
            rope(q0, virtual, inv_freq) @ keys.transpose(2, 3),
            rope(q0, p, inv_freq) @ keys.transpose(2, 3),
        )
        * 0.25
        + torch.where(filled, 0.0, float("-inf"))[:, None, None]
    )
    expected = torch.softmax(scores, dim=-1)
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, (expected @ v).transpose(1, 2), atol=1e-6, rtol=1e-5)
    assert weights[0, :, :, :n].sum() > 0 and weights[2, :, :, :n].sum() > 0  # row 2: its ring wrapped


def test_an_ordinary_mask_goes_to_the_models_own_attention():
    def fallback(module, query, key, value, mask, **kwargs):
        return "fallback", kwargs["scaling"]

    q, k = torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 6, 4)
    assert sink_attention(None, q, k, k, torch.zeros(1, 1, 1, 6), 0.5, fallback=fallback) == ("fallback", 0.5)


# -- rows of one batch -------------------------------------------------------------------------------


def test_rows_with_and_without_prompts_at_different_positions_step_as_they_would_alone():
    """Pinned rows next to an unpinned one, joining at different steps, through three windows:
    each row's logits are the ones it gets alone in a batch of one."""
    window = 16
    model = random_moshi(tiny_kyutai_kwargs(context=window), seed=2)
    gen = torch.Generator().manual_seed(4)
    prompts = {0: torch.randn(5, model.config.hidden_size, generator=gen), 2: None}
    prompts[2] = torch.randn(9, model.config.hidden_size, generator=gen)
    joins = {0: 0, 1: 0, 2: 7}  # row 1 has no prompt
    steps = 3 * window + 10
    user = torch.randint(0, 64, (steps, 3, K), generator=gen)
    forced_text = torch.randint(4, 48, (steps, 3), generator=gen)
    forced_audio = torch.randint(0, 64, (steps, 3, K), generator=gen)

    def run(lm: MoshiStreamingLM, rows: list[int]) -> dict[int, list[torch.Tensor]]:
        logits: dict[int, list[torch.Tensor]] = {r: [] for r in rows}
        for t in range(steps):
            for i, r in enumerate(rows):
                if t == joins[r]:
                    lm.reset(i)
                    if prompts.get(r) is not None:
                        cache = lm.new_prefill_cache(prompts[r].shape[0])
                        hidden, text_logits = lm.prefill(cache, prompts[r])
                        # the prompt decided the delayed streams of the position after it
                        carry = torch.where(torch.tensor(lm.delays) > 0, 7, -1)
                        tail = PromptTail(hidden, text_logits, carry, prompts[r].shape[0])
                        lm.load_prompt(i, cache, tail, greedy(1))
            idx = torch.tensor(rows)
            out = lm.step(
                user[t, idx],
                greedy(len(rows)),
                force_mask=torch.ones(len(rows), dtype=torch.bool),
                force_text=forced_text[t, idx],
                force_audio=forced_audio[t, idx],
            )
            for i, r in enumerate(rows):
                if t >= joins[r]:
                    logits[r].append(out.text_logits[i])
        return logits

    batched = run(MoshiStreamingLM(model, 3, pin_prompts=True), [0, 1, 2])
    for r in range(3):
        alone = run(MoshiStreamingLM(model, 1, pin_prompts=True), [r])[r]
        torch.testing.assert_close(torch.stack(batched[r]), torch.stack(alone), atol=1e-5, rtol=1e-5)
    unpinned = run(MoshiStreamingLM(model, 3), [0, 1, 2])
    torch.testing.assert_close(torch.stack(unpinned[1]), torch.stack(batched[1]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(torch.stack(unpinned[0]), torch.stack(batched[0]), atol=1e-3)


def test_the_compiled_step_pins_the_prompt_too(monkeypatch):
    """torch.compile(fullgraph=True) of the frame step with a pinned prompt past the window (backend
    "eager": the tracing, not codegen): no graph break, and the same conversation as eagerly."""
    from torch._dynamo.utils import counters

    window, steps = 100, 40  # the 86-frame prompt fills this window in 14 steps
    user = user_frames()
    eager = engine("pin", context=window)
    eager.open(0, PROMPT)
    eager.finish_prompts()
    monkeypatch.setenv("ASSISTANT_COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    compiled = engine("pin", compile=True, context=window)
    assert compiled.describe()["step_mode"] == "torch-compile"
    compiled.open(0, PROMPT)
    compiled.finish_prompts()
    graphs = []
    for t in range(steps):
        a, b = eager.step(user[t % len(user)][None]), compiled.step(user[t % len(user)][None])
        assert a.text == b.text, t
        np.testing.assert_allclose(a.pcm_out, b.pcm_out, rtol=0, atol=2e-5)
        graphs.append(counters["stats"]["unique_graphs"])
    assert not counters["graph_break"]
    assert graphs[-1] == graphs[0]  # nothing compiled again as the window fills and the pin takes over
