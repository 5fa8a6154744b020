"""Write a tiny random Moshi in Kyutai's checkpoint layout, for `assistant bench latency` side by side
with Kyutai's own server: both then load the same weights (ours with `--model DIR`, Kyutai's through
`python -m bench.kyutai_server --checkpoint DIR`), so they compute the same answers.

    python tests/reference/write_tiny_checkpoint.py DIR

The LM has the sizes of `--model tiny` (256 wide, 4 layers; its depth transformer 128 wide) with
the tests' small Mimi, and the tests' random weights (tests/moshi_fixtures.py), which make every
part matter: a change in the input changes the answer in the very step that hears it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' fixtures

from moshi_fixtures import random_moshi, tiny_kyutai_kwargs, train_tiny_spm, write_kyutai_checkpoint  # noqa: E402

TINY = {
    "dim": 256,
    "num_heads": 4,
    "num_layers": 4,
    "card": 2048,
    "context": 3000,
    "depformer_dim": 128,
    "depformer_dim_feedforward": int(4.125 * 128),
    "depformer_num_heads": 4,
}


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    directory = Path(sys.argv[1])
    kwargs = tiny_kyutai_kwargs(**TINY)
    write_kyutai_checkpoint(directory, random_moshi(kwargs), kwargs, train_tiny_spm(directory / "spm"))
    print(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
