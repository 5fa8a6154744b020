"""Kyutai's own `moshi.server` (the `moshi` package) on a CPU with the tiny random Moshi, greedy: the
reference server of `assistant bench latency --reference-server`.

    python -m bench.kyutai_server --port 8998

It needs Kyutai's `moshi` package (`pip install moshi==0.2.13`; it is not a dependency of ours).

The same architecture as `--model tiny` here (the LM's sizes of assistant/moshi/random_models.py and
its small Mimi), with Kyutai's own random initialisation: step times compare, weights do not matter.
Three things are changed from outside, nothing is edited in the installed package:
- `torch.cuda.synchronize` (called once after the warm-up) does nothing, so the server starts on a
  machine without CUDA;
- the checkpoint lookup returns the tiny model (float32) instead of downloading the 7B;
- generation is greedy (`use_sampling=False`), so two runs of the same input give the same output.
Everything else (the lock, the frame loop, Opus, the handshake) is Kyutai's code as installed.
"""

from __future__ import annotations

import argparse
import sys

import torch

from assistant.moshi.kyutai import KYUTAI_7B_KWARGS
from assistant.moshi.random_models import TINY_KWARGS

MIMI_CONFIG = {  # Kyutai's Mimi layout with the sizes of the tiny model's Mimi
    "sample_rate": 24000,
    "channels": 1,
    "frame_rate": 12.5,
    "seanet": {
        "dimension": 64,
        "channels": 1,
        "causal": True,
        "n_filters": 8,
        "n_residual_layers": 1,
        "activation": "ELU",
        "compress": 2,
        "dilation_base": 2,
        "disable_norm_outer_blocks": 0,
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 3,
        "norm": "none",
        "pad_mode": "constant",
        "ratios": [8, 6, 5, 4],
        "true_skip": True,
    },
    "quantizer": {"dimension": 32, "n_q": 8, "bins": 2048, "input_dimension": 64, "output_dimension": 64},
    "transformer": {
        "d_model": 64,
        "num_heads": 4,
        "num_layers": 2,
        "causal": True,
        "layer_scale": 0.01,
        "context": 250,
        "conv_layout": True,
        "max_period": 10000,
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "dim_feedforward": 128,
        "input_dimension": 64,
        "output_dimensions": [64],
    },
}


class PieceNames:
    """The text tokenizer's one use in the server: a token's piece."""

    def id_to_piece(self, token: int) -> str:
        return f"\u2581w{token}"


class TinyCheckpoint:
    """What `moshi.server.main` asks of `CheckpointInfo`, for the tiny random model."""

    model_type = "moshi"
    lm_gen_config = {"use_sampling": False}

    def get_mimi(self, device="cpu"):
        from moshi.models import loaders

        mimi = loaders.get_mimi(None, mimi_config=MIMI_CONFIG, device=device, num_codebooks=8)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # untrained codebooks are all equal: every frame would encode the same
            for module in mimi.modules():
                if hasattr(module, "embedding_sum") and hasattr(module, "cluster_usage"):
                    # small: the untrained encoder's latents are small, and far centroids would all lose to one
                    centroids = torch.randn(module.embedding_sum.shape, generator=generator) * 0.01
                    module.embedding_sum.copy_(centroids)
                    module.cluster_usage.fill_(1.0)
                    module._embedding = None
        return mimi

    def get_moshi(self, device="cpu", dtype=None, **_):
        from moshi.models import loaders

        kwargs = dict(KYUTAI_7B_KWARGS, **TINY_KWARGS)
        kwargs["depformer_dim_feedforward"] = int(kwargs["hidden_scale"] * kwargs["depformer_dim"])
        return loaders.get_moshi_lm(None, lm_kwargs=kwargs, device=device, dtype=torch.float32)

    def get_text_tokenizer(self):
        return PieceNames()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8998)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    from moshi.models import loaders

    torch.cuda.synchronize = lambda *a, **k: None
    loaders.CheckpointInfo.from_hf_repo = staticmethod(lambda *a, **k: TinyCheckpoint())
    sys.argv = [
        "moshi.server",
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--device",
        "cpu",
        "--static",
        "none",
    ]
    import moshi.server  # noqa: F401  (the module runs its main() when imported)

    return 0


if __name__ == "__main__":
    sys.exit(main())
