"""int8 weight-only quantization of Moshi (`--quantize int8`): memory, logit drift, the engine option."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from moshi_fixtures import depth_logits
from torch import nn
from transformers.models.moshi.modeling_moshi import MoshiFlexibleLinear

from assistant.backends.moshi import MoshiEngine
from assistant.engine import SlotOptions
from assistant.moshi.lm import MoshiStreamingLM, Sampling
from assistant.moshi.quantize import Int8FlexibleLinear, Int8Linear, quantize_moshi, weight_bytes
from assistant.moshi.random_models import random_loaded
from audio.frames import FRAME_SAMPLES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_int8_linear_is_close_and_four_times_smaller():
    torch.manual_seed(0)
    linear = nn.Linear(512, 256, bias=False)
    q = Int8Linear(linear)
    x = torch.randn(3, 1, 512)
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.shape == (256, 512)
    assert _relative(q(x), linear(x)) < 0.01
    assert weight_bytes(q) < 0.26 * weight_bytes(linear)
    with pytest.raises(ValueError, match="bias"):
        Int8Linear(nn.Linear(4, 4))


def test_int8_flexible_linear_uses_each_codebooks_own_weights():
    torch.manual_seed(1)
    flexible = MoshiFlexibleLinear(64, 32, num_layers=4)
    q = Int8FlexibleLinear(flexible)
    x = torch.randn(5, 1, 64)
    for k in range(4):
        idx = torch.tensor([k])
        assert _relative(q(x, idx), flexible(x, idx)) < 0.01
    # Codebook 2's input through codebook 3's weights is a different thing: the index is honoured.
    assert _relative(q(x, torch.tensor([3])), flexible(x, torch.tensor([2]))) > 0.5
    seq = torch.randn(5, 4, 64)
    assert _relative(q(seq), flexible(seq)) < 0.01


def _teacher_forced_logits(model, steps: int = 6, batch: int = 2):
    """Text and depth logits over `steps` frames with fixed inputs, so both models see the same tokens."""
    lm = MoshiStreamingLM(model, batch)
    K = lm.num_codebooks
    gen = torch.Generator().manual_seed(0)
    greedy = Sampling(
        torch.zeros(batch),
        torch.ones(batch, dtype=torch.long),
        torch.zeros(batch),
        torch.ones(batch, dtype=torch.long),
        torch.zeros(batch, 1 + K),
        1,
        1,
    )
    texts, depths = [], []
    with torch.no_grad():
        for _ in range(steps):
            user = torch.randint(0, lm.card, (batch, K), generator=gen)
            text = torch.randint(0, lm.text_card, (batch,), generator=gen)
            audio = torch.randint(0, lm.card, (batch, K), generator=gen)
            hidden, text_logits, inputs = lm.step_temporal(user)
            depths.append(depth_logits(lm, hidden, torch.cat([text[:, None], audio], 1)))
            texts.append(text_logits)
            lm.step_depth(
                hidden, text_logits, inputs, greedy, torch.ones(batch, dtype=torch.bool), text, audio
            )
    return torch.stack(texts), torch.stack(depths)


def test_quantized_moshi_is_smaller_and_its_logits_stay_close():
    model = random_loaded("tiny", torch.device("cpu"), torch.float32).model
    quantized = copy.deepcopy(model)
    swapped = quantize_moshi(quantized, "int8")
    config = model.config
    # 4 attention projections + 2 MLP linears per layer, temporal and depth, plus the depth input projections
    assert swapped == 6 * (config.num_hidden_layers + config.depth_decoder_config.num_hidden_layers) + 1
    for layer in (*quantized.decoder.model.layers, *quantized.depth_decoder.layers):
        assert not any(isinstance(m, nn.Linear | MoshiFlexibleLinear) for m in layer.modules())
    assert isinstance(quantized.decoder.lm_head, nn.Linear)  # the text head stays in full precision
    assert quantize_moshi(quantized) == 0  # already done: nothing happens twice
    assert weight_bytes(quantized) < 0.8 * weight_bytes(model)

    ref_text, ref_depth = _teacher_forced_logits(model)
    q_text, q_depth = _teacher_forced_logits(quantized)
    for ref, q in ((ref_text, q_text), (ref_depth, q_depth)):
        assert _relative(q, ref) < 0.05
        assert (q.argmax(-1) == ref.argmax(-1)).float().mean() > 0.8
    assert not torch.equal(q_text, ref_text)  # it really runs the int8 weights


def test_engine_quantize_option_and_env(monkeypatch):
    loaded = random_loaded("tiny", torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="quantize must be one of none, int8"):
        MoshiEngine.from_loaded(loaded, batch_size=1, quantize="int4")
    monkeypatch.setenv("ASSISTANT_QUANTIZE", "int8")
    engine = MoshiEngine.from_loaded(loaded, batch_size=1, compile=False)
    assert engine.describe()["quantize"] == "int8"
    assert isinstance(loaded.model.decoder.model.layers[0].mlp.fc1, Int8Linear)
    engine.open(0, SlotOptions(seed=1))
    rng = np.random.default_rng(0)
    outs = [engine.step((0.1 * rng.standard_normal((1, FRAME_SAMPLES))).astype(np.float32)) for _ in range(4)]
    assert np.abs(np.stack([o.pcm_out[0] for o in outs[1:]])).max() > 1e-3


def test_bench_engine_reports_int8_weights_and_capacity(capsys):
    from assistant.cli import main

    assert (
        main(
            [
                "bench",
                "engine",
                "--model",
                "tiny",
                "--device",
                "cpu",
                "--batch",
                "1,2",
                "--frames",
                "2",
                "--warmup",
                "1",
                "--quantize",
                "int8",
                "--no-compile",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "quantize=int8" in out and "step=eager" in out
    rows = [line.split("|") for line in out.splitlines() if line.strip().startswith(("1 |", "2 |"))]
    assert len(rows) == 2 and all(float(row[-2]) > 0 for row in rows)  # tokens/s
    assert "largest batch in real time (p99 step < 80 ms):" in out
    assert "largest batch in real time with 20% margin (p99 step < 64 ms):" in out


def test_half_precision_int8_linear_matches_the_dequantized_weights():
    """bf16 activations take torch's fused int8 matmul where the device has it; same result as dequantizing."""
    torch.manual_seed(2)
    linear = nn.Linear(256, 128, bias=False).to(torch.bfloat16)
    q = Int8Linear(linear)
    x = torch.randn(3, 1, 256, dtype=torch.bfloat16)
    dequantized = torch.nn.functional.linear(x.float(), q.weight_int8.float() * q.scale.float()[:, None])
    assert q(x).shape == (3, 1, 128) and q(x).dtype == torch.bfloat16
    assert _relative(q(x).float(), dequantized) < 0.01
    assert _relative(q(x).float(), linear(x).float()) < 0.02
