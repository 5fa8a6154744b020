"""`assistant serve` options: moshi's --compile / --quantize reach the engine; the deployment
options (drain, keepalive, --protect-metrics) come from flags or ASSISTANT_* variables and are checked."""

from __future__ import annotations

import argparse

import pytest

from server.app import add_arguments, config_from_args


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_moshi_compile_quantize_and_context_policy_reach_the_engine_options():
    config = config_from_args(
        _args(
            "--backend",
            "moshi",
            "--model",
            "tiny",
            "--no-compile",
            "--quantize",
            "int8",
            "--context-policy",
            "slide",
        )
    )
    assert config.engine_options == {"compile": False, "quantize": "int8", "context_policy": "slide"}
    # Unset flags defer to the engine's own defaults (env vars, then on with CUDA; pin).
    config = config_from_args(_args("--backend", "moshi", "--model", "tiny"))
    assert config.engine_options == {"compile": None, "quantize": None, "context_policy": None}


@pytest.mark.parametrize(
    "flag",
    [
        ("--compile",),
        ("--quantize", "int8"),
        ("--model", "tiny"),
        ("--device", "cpu"),
        ("--dtype", "fp32"),
        ("--context-policy", "slide"),
    ],
)
def test_moshi_only_flags_are_refused_for_other_backends(flag):
    with pytest.raises(ValueError, match=f"only --backend moshi takes {flag[0]}"):
        config_from_args(_args("--backend", "scripted", *flag))


def test_unknown_quantize_mode_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        _args("--backend", "moshi", "--quantize", "int4")
    assert "invalid choice" in capsys.readouterr().err


def test_deployment_options_come_from_the_environment(monkeypatch):
    """A container or a Kubernetes pod configures `serve` with ASSISTANT_* variables; flags still win."""
    env = {
        "ASSISTANT_HOST": "0.0.0.0",
        "ASSISTANT_PORT": "9000",
        "ASSISTANT_MODEL": "tiny",
        "ASSISTANT_MAX_SESSIONS": "8",
        "ASSISTANT_DRAIN_SECONDS": "120",
        "ASSISTANT_AGENT_PORT": "9001",
        "ASSISTANT_PROTECT_METRICS": "1",
        "ASSISTANT_AUTH_TOKEN": "s3cret",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = config_from_args(_args("--backend", "moshi"))
    assert (config.host, config.port, config.model, config.max_sessions) == ("0.0.0.0", 9000, "tiny", 8)
    assert (config.drain_grace_s, config.agent_port, config.protect_metrics) == (120.0, 9001, True)
    config = config_from_args(_args("--backend", "scripted", "--port", "9100", "--no-protect-metrics"))
    assert config.port == 9100 and config.protect_metrics is False


def test_protect_metrics_needs_a_token_and_a_clear_switch(monkeypatch):
    monkeypatch.delenv("ASSISTANT_AUTH_TOKEN", raising=False)
    with pytest.raises(ValueError, match="needs --auth-token"):
        config_from_args(_args("--backend", "scripted", "--protect-metrics"))
    monkeypatch.setenv("ASSISTANT_PROTECT_METRICS", "yes")
    with pytest.raises(ValueError, match="ASSISTANT_PROTECT_METRICS must be 0 or 1"):
        config_from_args(_args("--backend", "scripted", "--auth-token", "t"))
    # Off unless asked for: monitoring reads /metrics without a token.
    monkeypatch.delenv("ASSISTANT_PROTECT_METRICS")
    assert config_from_args(_args("--backend", "scripted", "--auth-token", "t")).protect_metrics is False


@pytest.mark.parametrize("flag", [("--drain-seconds", "-1"), ("--ping-interval", "0")], ids=["drain", "ping"])
def test_drain_and_keepalive_bounds_are_checked(flag):
    with pytest.raises(ValueError, match=flag[0]):
        config_from_args(_args("--backend", "scripted", *flag))


def test_the_sampling_temperature_of_sessions_that_set_none():
    config = config_from_args(_args("--backend", "moshi", "--model", "tiny", "--temperature", "0"))
    assert (config.temperature, config.text_temperature) == (0.0, 0.0)  # greedy: text too
    config = config_from_args(_args("--temperature", "0", "--text-temperature", "0.5"))
    assert (config.temperature, config.text_temperature) == (0.0, 0.5)
    assert config_from_args(_args()).temperature is None  # the model's own
    with pytest.raises(ValueError, match="--text-temperature must be between 0 and 5"):
        config_from_args(_args("--text-temperature", "9"))


def test_captions_read_on_one_thread_beside_a_model_on_the_cpu_and_on_more_without_one(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert config_from_args(_args("--backend", "moshi", "--device", "cpu")).caption_threads == 1
    assert config_from_args(_args("--backend", "moshi", "--device", "cuda:0")).caption_threads == 4
    assert config_from_args(_args("--backend", "scripted")).caption_threads == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert config_from_args(_args("--backend", "scripted")).caption_threads == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # a core left for the event loop
    assert config_from_args(_args("--backend", "scripted")).caption_threads == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert config_from_args(_args("--backend", "scripted")).caption_threads == 1
    assert (
        config_from_args(
            _args("--backend", "moshi", "--device", "cpu", "--caption-threads", "2")
        ).caption_threads
        == 2
    )
    with pytest.raises(ValueError, match="--caption-threads must be >= 1"):
        config_from_args(_args("--backend", "scripted", "--caption-threads", "0"))
