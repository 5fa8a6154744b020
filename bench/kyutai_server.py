"""Kyutai's own `moshi.server` (the `moshi` package) on a CPU, greedy, with a checkpoint of Kyutai's
layout: the reference server of `assistant bench latency --reference-server`.

    python tests/reference/write_tiny_checkpoint.py /tmp/tiny    # a tiny random Moshi, Kyutai's layout
    python -m bench.kyutai_server --checkpoint /tmp/tiny --port 8998

It needs Kyutai's `moshi` package (`pip install moshi==0.2.13`; it is not a dependency of ours).
Our server loads the same directory (`--model /tmp/tiny`), so both compute the same answers.
Three things are changed from outside; nothing is edited in the installed package:
- `torch.cuda.synchronize` (called once after the warm-up) does nothing, so the server starts on a
  machine without CUDA;
- the checkpoint is read from the directory's files (config.json, mimi_config.json, the weights and
  the tokenizer) instead of the Hugging Face Hub, and the LM stays in float32 as ours runs on a CPU
  (the server's own choice is bfloat16 or float16);
- generation is greedy (`use_sampling=False`), so two runs of the same input give the same output.
Everything else (the lock, the frame loop, Opus, the handshake) is Kyutai's code as installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a directory in Kyutai's layout")
    parser.add_argument("--port", type=int, default=8998)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    from moshi.models import loaders

    directory = args.checkpoint.resolve()
    from_hf_repo = loaders.CheckpointInfo.from_hf_repo

    def local_checkpoint(*_args, **_kwargs):
        info = from_hf_repo(
            None,
            moshi_weights=directory / "model.safetensors",
            mimi_weights=directory / loaders.MIMI_NAME,
            tokenizer=directory / loaders.TEXT_TOKENIZER_NAME,
            config_path=directory / "config.json",
            mimi_config_path=directory / "mimi_config.json",
        )
        info.lm_gen_config = {**info.lm_gen_config, "use_sampling": False}
        get_moshi = info.get_moshi
        info.get_moshi = lambda device="cpu", dtype=None, **kw: get_moshi(
            device=device, dtype=torch.float32, **kw
        )
        return info

    torch.cuda.synchronize = lambda *a, **k: None
    loaders.CheckpointInfo.from_hf_repo = staticmethod(local_checkpoint)
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
