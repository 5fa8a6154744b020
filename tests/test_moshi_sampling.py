"""Token sampling: greedy at temperature 0, top-k respected, probabilities follow the softmax."""

from __future__ import annotations

import pytest
import torch

from assistant.moshi.sampling import sample_tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def draw(logits, temperature, top_k, uniform):
    rows = logits.shape[0]
    return sample_tokens(
        logits, torch.full((rows,), temperature), torch.full((rows,), top_k, dtype=torch.long), top_k, uniform
    )


def test_temperature_zero_is_argmax_whatever_the_draw():
    logits = torch.randn(5, 30, generator=torch.Generator().manual_seed(0))
    for u in (0.0, 0.5, 0.999):
        assert torch.equal(draw(logits, 0.0, 30, torch.full((5,), u)), logits.argmax(-1))


def test_top_k_limits_choices_and_frequencies_follow_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, 3.0]])
    n = 20_000
    uniform = (torch.arange(n) + 0.5) / n  # an even grid: frequencies equal the probabilities up to 1/n
    tokens = draw(logits.expand(n, -1), 0.8, 3, uniform)
    allowed = logits[0].topk(3).indices
    assert set(tokens.tolist()) == set(allowed.tolist())
    expected = torch.softmax(logits[0, allowed] / 0.8, dim=0)
    observed = torch.stack([(tokens == i).float().mean() for i in allowed])
    assert torch.allclose(observed, expected, atol=2e-3)


def test_rows_use_their_own_settings():
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0]] * 3)
    temperature = torch.tensor([0.0, 1.0, 1.0])
    top_k = torch.tensor([4, 1, 4])
    uniform = torch.tensor([0.99, 0.99, 0.999])
    tokens = sample_tokens(logits, temperature, top_k, 4, uniform)
    assert tokens[0] == 2 and tokens[1] == 2  # greedy row; top-1 row
    assert tokens[2] != 2  # the last 0.1 % of the mass of a full-vocabulary draw is not the best token
