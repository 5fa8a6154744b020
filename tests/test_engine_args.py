"""Every command that builds an engine takes the same engine options (assistant/engine_args.py), and
every command's --help shows each option's default."""

from __future__ import annotations

import argparse

import pytest

from assistant import cli
from assistant.engine_args import DEFAULT_MODEL, engine_kwargs

ENGINE_COMMANDS = [
    ["serve"],
    ["respond"],
    ["talk"],
    ["eval", "fdb"],
    ["eval", "duplex"],
    ["bench", "server"],
    ["bench", "engine"],
    ["bench", "prefill"],
]
ENGINE_OPTIONS = (
    "--backend",
    "--model",
    "--device",
    "--dtype",
    "--compile",
    "--quantize",
    "--context-policy",
)
REQUIRED = {"respond": ["--input", "in.wav", "--output", "out.wav"], "fdb": ["data", "--task", "backchannel"]}


def command_parser(words: list[str]) -> argparse.ArgumentParser:
    parser = cli.build_parser(words)
    for word in words:
        (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = subparsers.choices[word]
    return parser


def engine_actions(words: list[str]) -> dict[str, argparse.Action]:
    actions = {a.option_strings[0]: a for a in command_parser(words)._actions if a.option_strings}
    return {name: actions[name] for name in ENGINE_OPTIONS if name in actions}


def without_default(text: str) -> str:
    return text[: text.rindex(" (default: ")]


def test_every_engine_command_declares_the_same_options():
    reference = engine_actions(["serve"])
    for words in ENGINE_COMMANDS:
        actions = engine_actions(words)
        expected = ENGINE_OPTIONS if words[0] != "bench" or words[1] == "server" else ENGINE_OPTIONS[1:]
        assert tuple(actions) == expected, words
        for name, action in actions.items():
            ref = reference[name]
            assert action.option_strings == ref.option_strings and action.type == ref.type, (words, name)
            if name == "--backend":  # serve adds `auto`, and says what it does
                assert set(action.choices) <= set(ref.choices) and action.help.startswith(
                    without_default(action.help)
                )
            elif name == "--model":  # a benchmark names its random-weight default
                assert without_default(action.help) == without_default(ref.help), words
            else:
                assert (action.help, action.default, action.choices) == (ref.help, ref.default, ref.choices)


@pytest.mark.parametrize("words", ENGINE_COMMANDS, ids=" ".join)
@pytest.mark.parametrize(
    ("given", "spelled"), [("bf16", "bfloat16"), ("FP16", "float16"), ("float32", "float32")]
)
def test_dtype_has_one_spelling_and_takes_the_short_one_as_an_alias(words, given, spelled):
    parser = command_parser(words)
    assert parser.parse_args([*REQUIRED.get(words[-1], []), "--dtype", given]).dtype == spelled


def test_an_unknown_dtype_is_refused_naming_the_spellings(capsys):
    with pytest.raises(SystemExit):
        command_parser(["serve"]).parse_args(["--dtype", "int4"])
    assert "use one of bfloat16, float16, float32" in capsys.readouterr().err


def test_the_default_model_is_the_same_for_every_command_that_serves_a_user(monkeypatch):
    monkeypatch.delenv("ASSISTANT_MODEL", raising=False)
    for words in ENGINE_COMMANDS[:5]:
        # serve defaults to auto, which picks a checkpoint itself; asked for moshi, its default is the same.
        moshi = ["--backend", "moshi"] if words == ["serve"] else []
        args = command_parser(words).parse_args([*REQUIRED.get(words[-1], []), *moshi])
        assert engine_kwargs(args)["model"] == DEFAULT_MODEL, words
    monkeypatch.setenv("ASSISTANT_MODEL", "/models/mine")
    assert (
        engine_kwargs(command_parser(["respond"]).parse_args(REQUIRED["respond"]))["model"] == "/models/mine"
    )
    # A benchmark's default is random weights of the architecture, whatever the environment says.
    assert engine_kwargs(command_parser(["bench", "engine"]).parse_args([]))["model"] == "tiny"


@pytest.mark.parametrize("words", ENGINE_COMMANDS, ids=" ".join)
def test_context_policy_reaches_the_engine_and_defaults_to_the_engines_pin(words):
    parser = command_parser(words)
    # serve defaults to auto and bench server to silence: asked for moshi, the option reaches it
    moshi = ["--backend", "moshi"] if words in (["serve"], ["bench", "server"]) else []
    required = REQUIRED.get(words[-1], []) + moshi
    assert engine_kwargs(parser.parse_args(required))["context_policy"] is None  # the engine's default
    assert (
        engine_kwargs(parser.parse_args([*required, "--context-policy", "slide"]))["context_policy"]
        == "slide"
    )
    with pytest.raises(SystemExit):
        parser.parse_args([*required, "--context-policy", "keep"])


def test_a_moshi_option_given_to_another_backend_is_refused():
    args = command_parser(["respond"]).parse_args(["--input", "a", "--output", "b", "--backend", "scripted"])
    assert engine_kwargs(args) == {}
    args.device = "cuda"
    with pytest.raises(
        ValueError, match=r"only --backend moshi takes --device \(this is --backend scripted\)"
    ):
        engine_kwargs(args)


def all_commands() -> list[list[str]]:
    words = [[name] for name in cli.COMMANDS if name != "eval"] + [["eval", "fdb"], ["eval", "duplex"]]
    return words + [["bench", name] for name in cli.BENCHMARKS]


@pytest.mark.parametrize("words", all_commands(), ids=" ".join)
def test_help_shows_every_default(words):
    """An option with a default (anything but unset or off) says it in --help."""
    missing = [
        action.option_strings[0]
        for action in command_parser(words)._actions
        if action.option_strings
        and action.default not in (None, False, argparse.SUPPRESS)
        and "default" not in (action.help or "")
    ]
    assert not missing, f"assistant {' '.join(words)} --help hides the default of {missing}"
