"""The streaming Moshi step against transformers' full forward and Kyutai's reference implementation."""

from __future__ import annotations

import pytest
import torch
from moshi_fixtures import (
    depth_logits,
    kyutai_state_dict_from_transformers,
    lm_state_dict,
    random_moshi,
    tiny_kyutai_kwargs,
)

from assistant.moshi.lm import MoshiStreamingLM, Sampling

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K = 8  # codebooks per stream


def greedy(batch: int) -> Sampling:
    zeros = torch.zeros(batch)
    ones = torch.ones(batch, dtype=torch.long)
    return Sampling(zeros, ones, zeros, ones, torch.zeros(batch, 1 + K))


def run_forced(lm: MoshiStreamingLM, steps: int, seed: int = 0):
    """Step with random user codes and random forced assistant tokens; return inputs, logits, hidden."""
    gen = torch.Generator().manual_seed(seed)
    batch = lm.batch_size
    inputs, logits = [], []
    for _ in range(steps):
        user = torch.randint(0, lm.card, (batch, K), generator=gen)
        text = torch.randint(4, lm.text_card, (batch,), generator=gen)
        audio = torch.randint(0, lm.card, (batch, K), generator=gen)
        out = lm.step(
            user,
            greedy(batch),
            force_mask=torch.ones(batch, dtype=torch.bool),
            force_text=text,
            force_audio=audio,
        )
        inputs.append(out.inputs)
        logits.append(out.text_logits)
    return torch.stack(inputs, dim=2), torch.stack(logits, dim=1)


def full_forward(model, inputs: torch.Tensor, window: int | None = None):
    """transformers' MoshiForConditionalGeneration over the whole (B, 17, T) token sequence.

    With `window`, each position attends to itself and the window - 1 positions before it.
    """
    T = inputs.shape[2]
    mask = None
    if window is not None:
        delta = torch.arange(T)[:, None] - torch.arange(T)[None, :]
        mask = ((delta >= 0) & (delta < window))[None, None].expand(inputs.shape[0], 1, T, T)
    with torch.no_grad():
        return model(
            input_ids=inputs[:, 0],
            moshi_audio_codes=inputs[:, 1 : 1 + K],
            user_audio_codes=inputs[:, 1 + K :],
            attention_mask=mask,
        )


def test_step_by_step_equals_full_forward():
    model = random_moshi(tiny_kyutai_kwargs())
    lm = MoshiStreamingLM(model, batch_size=2)
    inputs, logits = run_forced(lm, steps=14)
    reference = full_forward(model, inputs).logits
    assert torch.allclose(logits, reference, atol=1e-4), (logits - reference).abs().max()
    # The initial tokens stand in until each stream reaches its delay.
    assert (inputs[:, 0, 0] == lm.text_card).all()
    assert (inputs[:, 1:, 0] == lm.card).all()
    assert (inputs[:, 2 : 1 + K, 1] == lm.card).all() and (inputs[:, 2 + K :, 1] == lm.card).all()
    assert (inputs[:, :, 2] < lm.card).all()


def test_depth_steps_equal_causal_full_depth_forward():
    model = random_moshi(tiny_kyutai_kwargs())
    lm = MoshiStreamingLM(model, batch_size=3)
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 1, model.config.hidden_size, generator=gen)
    tokens = torch.cat(
        [torch.randint(0, 48, (3, 1), generator=gen), torch.randint(0, 64, (3, K), generator=gen)], 1
    )
    mine = depth_logits(lm, hidden, tokens)
    with torch.no_grad():  # sdpa with no mask is causal over the 8 positions
        reference = model.depth_decoder(input_ids=tokens[:, :K], last_hidden_state=hidden).logits
    assert torch.allclose(mine, reference, atol=1e-4), (mine - reference).abs().max()


def test_sliding_window_matches_windowed_forward_and_memory_is_bounded():
    window = 6
    model = random_moshi(tiny_kyutai_kwargs(context=window))
    lm = MoshiStreamingLM(model, batch_size=1)
    inputs, logits = run_forced(lm, steps=4 * window, seed=3)
    reference = full_forward(model, inputs, window=window).logits
    assert torch.allclose(logits, reference, atol=1e-4), (logits - reference).abs().max()
    # Without the window the last step would differ: the test can tell the two apart.
    unwindowed = full_forward(model, inputs).logits[:, -1]
    assert not torch.allclose(logits[:, -1], unwindowed, atol=1e-3)
    assert all(k.shape[2] == window for k in lm.kv.keys)


def test_reset_row_forgets_history():
    model = random_moshi(tiny_kyutai_kwargs())
    lm = MoshiStreamingLM(model, batch_size=1)
    _, first = run_forced(lm, steps=5, seed=7)
    lm.reset(0)
    _, again = run_forced(lm, steps=5, seed=7)
    assert torch.equal(first, again)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # moshi's own torch.jit use
def test_greedy_equals_kyutai_reference_past_the_context():
    lm_module = pytest.importorskip(
        "moshi.models.lm",
        reason="Kyutai's moshi package is not installed (pip install --no-deps moshi==0.2.13 einops)",
    )
    kwargs = tiny_kyutai_kwargs(context=8)
    model = random_moshi(kwargs, seed=5)
    kyutai = lm_module.LMModel(device="cpu", dtype=torch.float32, **kwargs)
    kyutai.load_state_dict(
        kyutai_state_dict_from_transformers(lm_state_dict(model), model.config), strict=True
    )
    kyutai.eval()
    batch, steps = 2, 24
    gen = torch.Generator().manual_seed(11)
    user = torch.randint(0, kwargs["card"], (steps, batch, K), generator=gen)
    reference = lm_module.LMGen(kyutai, use_sampling=False, temp=0.0, temp_text=0.0, check=True)
    theirs = []
    with torch.no_grad(), reference.streaming(batch):
        for t in range(steps):
            out = reference.step(user[t][:, :, None])
            theirs.append(None if out is None else out[:, :, 0])
    lm = MoshiStreamingLM(model, batch_size=batch)
    for t in range(steps):
        out = lm.step(user[t], greedy(batch))
        if theirs[t] is None:
            assert not out.ready.any()
        else:
            assert out.ready.all()
            assert torch.equal(torch.cat([out.text[:, None], out.audio], dim=1), theirs[t]), t
    assert sum(x is not None for x in theirs) == steps - 1
