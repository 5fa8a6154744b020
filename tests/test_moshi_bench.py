"""`assistant bench engine` runs and prints the per-part table (a smoke test: never about speed)."""

from __future__ import annotations

import pytest

from assistant.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bench_engine_prints_each_part_for_each_batch(capsys):
    assert (
        main(
            [
                "bench",
                "engine",
                "--model",
                "tiny",
                "--batch",
                "1,2",
                "--device",
                "cpu",
                "--frames",
                "2",
                "--warmup",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for part in ("codec_encode", "temporal", "depth", "codec_decode", "total"):
        assert part in out
    rows = [line for line in out.splitlines() if line.strip().startswith(("1 |", "2 |"))]
    assert len(rows) == 2 and all(line.count("/") == 5 for line in rows)


def test_bench_engine_rejects_bad_batch_list(capsys):
    assert main(["bench", "engine", "--batch", "1,x"]) == 2
    assert "--batch" in capsys.readouterr().out


def test_bench_engine_runs_a_checkpoint_dir(tmp_path, capsys):
    from moshi_fixtures import random_moshi, tiny_kyutai_kwargs, train_tiny_spm, write_kyutai_checkpoint

    kwargs = tiny_kyutai_kwargs()
    directory = write_kyutai_checkpoint(
        tmp_path / "kyutai", random_moshi(kwargs), kwargs, train_tiny_spm(tmp_path)
    )
    assert (
        main(
            [
                "bench",
                "engine",
                "--model",
                str(directory),
                "--batch",
                "2",
                "--device",
                "cpu",
                "--frames",
                "2",
                "--warmup",
                "0",
            ]
        )
        == 0
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("2 |")]
    assert len(rows) == 1 and "nan" not in rows[0]


def test_bench_engine_alternates_the_context_policies_a_row_each(capsys):
    args = ["bench", "engine", "--model", "tiny-personaplex", "--batch", "1", "--device", "cpu"]
    assert main([*args, "--frames", "2", "--warmup", "1", "--alternate-policies"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip().startswith("1 |")]
    assert [row.rsplit("|", 1)[1].strip() for row in rows] == ["pin", "slide"]
    assert "context_policy=pin,slide" in out
