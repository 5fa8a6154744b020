"""`assistant serve` options that reach the engine: moshi's --compile / --quantize."""

from __future__ import annotations

import argparse

import pytest

from server.app import add_arguments, config_from_args


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_moshi_compile_and_quantize_reach_the_engine_options():
    config = config_from_args(
        _args("--backend", "moshi", "--model", "tiny", "--no-compile", "--quantize", "int8")
    )
    assert config.engine_options == {"compile": False, "quantize": "int8"}
    # Unset flags defer to the engine's own defaults (env vars, then on with CUDA).
    config = config_from_args(_args("--backend", "moshi", "--model", "tiny"))
    assert config.engine_options == {"compile": None, "quantize": None}


@pytest.mark.parametrize("flag", [("--compile",), ("--quantize", "int8")])
def test_moshi_only_flags_are_refused_for_other_backends(flag):
    with pytest.raises(ValueError, match="only apply to --backend moshi"):
        config_from_args(_args("--backend", "scripted", *flag))


def test_unknown_quantize_mode_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        _args("--backend", "moshi", "--quantize", "int4")
    assert "invalid choice" in capsys.readouterr().err
