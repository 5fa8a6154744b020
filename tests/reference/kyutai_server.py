"""Run Kyutai's own `moshi.server` on a checkpoint `write_kyutai_checkpoint` wrote, on the CPU, greedy.

    python tests/reference/kyutai_server.py MODEL_DIR PORT

Three things its command line cannot say are set here, in this process only: its warm-up's
`torch.cuda.synchronize()` does nothing (there is no CUDA), the model loads in float32 (the server
offers bfloat16 and float16 only), and the config it reads names the tiny Mimi's config by file and
decodes greedily (`lm_gen_config`). Everything it does with a connection is its own.
"""

from __future__ import annotations

import json
import runpy
import sys
import tempfile
from pathlib import Path

import torch
from moshi.models import loaders

from assistant.moshi.checkpoint import KYUTAI_MIMI_NAME, KYUTAI_MOSHI_NAME, KYUTAI_TOKENIZER_NAME


def main(model_dir: Path, port: int) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    config["mimi_config_name"] = f"file://{model_dir / config['mimi_config_name']}"
    config["lm_gen_config"] = {"use_sampling": False, "temp": 0.0, "temp_text": 0.0}
    config_path = Path(tempfile.mkdtemp(prefix="kyutai-server-")) / "config.json"
    config_path.write_text(json.dumps(config))

    torch.cuda.synchronize = lambda *args, **kwargs: None
    get_moshi = loaders.CheckpointInfo.get_moshi
    loaders.CheckpointInfo.get_moshi = lambda self, *args, **kwargs: get_moshi(
        self, *args, **{**kwargs, "dtype": torch.float32}
    )
    sys.argv = [
        "moshi.server", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--static", "none",
        "--config-path", str(config_path),
        "--moshi-weight", str(model_dir / KYUTAI_MOSHI_NAME),
        "--mimi-weight", str(model_dir / KYUTAI_MIMI_NAME),
        "--tokenizer", str(model_dir / KYUTAI_TOKENIZER_NAME),
    ]  # fmt: skip
    runpy.run_module("moshi.server", run_name="__main__")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), int(sys.argv[2]))
