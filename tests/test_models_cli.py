"""`assistant models` (list, --json, download) against an empty or a fake Hugging Face cache, and
`--backend auto`: its choice on every kind of machine, and on this one end to end through
`assistant serve`. Nothing here reaches the network: HF_HUB_OFFLINE=1 and a fresh HF_HOME."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from server_utils import REPO, http_get, start_server

from assistant.auto import GET_THE_MODEL, banner, choose, choose_backend
from assistant.moshi.registry import CHECKPOINTS, cache_status, find

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"
MOSHIKO = find("moshiko")
PERSONAPLEX = find("personaplex")


def offline_env(hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    return {**env, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}


def assistant(hf_home: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "assistant", *argv],
        cwd=REPO,
        env=offline_env(hf_home),
        capture_output=True,
        text=True,
        timeout=60,
    )


def fake_cached(hub: Path, repo_id: str, files) -> Path:
    """Lay out `files` of `repo_id` the way huggingface_hub caches them; returns the snapshot dir."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).write_bytes(b"weights")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return snapshot


def table_rows(stdout: str) -> dict[str, list[str]]:
    """name -> the cells of its row (the CACHED cell may be followed by the path)."""
    names = {c.name for c in CHECKPOINTS}
    return {cells[0]: cells for cells in map(str.split, stdout.splitlines()) if cells and cells[0] in names}


# -- listing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [("models",), ("models", "list")])
def test_listing_an_empty_cache_offline_shows_every_model_not_cached(tmp_path, argv):
    result = assistant(tmp_path, *argv)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert set(rows) == {c.name for c in CHECKPOINTS}
    assert all(row[-1] == "no" for row in rows.values()), result.stdout
    assert (
        "nvidia/personaplex-7b-v1" in rows["personaplex"] and "kyutai/moshiko-pytorch-bf16" in rows["moshiko"]
    )
    assert str(tmp_path / "hub") in result.stdout  # says which cache it looked in


def test_a_fully_cached_checkpoint_is_listed_with_its_path_and_a_partial_one_is_not(tmp_path):
    snapshot = fake_cached(tmp_path / "hub", MOSHIKO.repo_id, MOSHIKO.files)
    fake_cached(tmp_path / "hub", PERSONAPLEX.repo_id, [f for f in PERSONAPLEX.files if f != "voices.tgz"])
    result = assistant(tmp_path, "models")
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert rows["moshiko"][-2:] == ["yes", str(snapshot)]
    assert rows["personaplex"][-1] == "partial"
    assert rows["moshika"][-1] == "no"


def test_json_listing_parses_and_says_what_each_checkpoint_is(tmp_path):
    snapshot = fake_cached(tmp_path / "hub", PERSONAPLEX.repo_id, PERSONAPLEX.files)
    result = assistant(tmp_path, "models", "--json")
    assert result.returncode == 0, result.stderr
    models = {m["name"]: m for m in json.loads(result.stdout)}
    assert list(models) == [c.name for c in CHECKPOINTS]
    plex, moshiko = models["personaplex"], models["moshiko"]
    assert plex["cached"] is True and plex["path"] == str(snapshot) and plex["missing_files"] == []
    assert plex["takes_prompts"] is True and plex["layout"] == "personaplex" and "voices.tgz" in plex["files"]
    assert moshiko["cached"] is False and moshiko["path"] is None and moshiko["takes_prompts"] is False
    assert moshiko["licence"] == "CC-BY 4.0" and 15 < moshiko["approx_size_gb"] < 17


def test_the_cache_check_never_opens_a_connection(tmp_path, monkeypatch):
    snapshot = fake_cached(tmp_path, MOSHIKO.repo_id, MOSHIKO.files)

    def refuse(*args, **kwargs):
        raise AssertionError("the cache check tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert cache_status(MOSHIKO, cache_dir=tmp_path).path == snapshot
    assert cache_status(MOSHIKO, cache_dir=tmp_path).cached
    assert not cache_status(PERSONAPLEX, cache_dir=tmp_path).cached


# -- downloading -------------------------------------------------------------------------------


def test_downloading_an_unknown_name_fails_and_lists_the_known_ones(tmp_path):
    result = assistant(tmp_path, "models", "download", "moshi-13b")
    assert result.returncode == 1
    assert "unknown model 'moshi-13b'" in result.stderr
    assert all(c.name in result.stderr for c in CHECKPOINTS)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["personaplex", "kyutai/moshiko-pytorch-bf16"])
def test_downloading_without_network_is_one_clear_error_and_exit_1(tmp_path, name):
    result = assistant(tmp_path, "models", "download", name)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("assistant models: cannot reach the Hugging Face hub"), result.stderr
    assert find(name).repo_id in last


# -- --backend auto ----------------------------------------------------------------------------


def test_auto_without_a_gpu_chooses_scripted_and_says_a_gpu_is_needed():
    choice = choose(None, [PERSONAPLEX])
    assert (choice.backend, choice.model) == ("scripted", None)
    assert "no CUDA GPU" in choice.reason and GET_THE_MODEL in choice.reason


def test_auto_with_a_gpu_but_an_empty_cache_chooses_scripted_and_names_the_download():
    choice = choose(80.0, [], cache_dir="/cache/hub")
    assert choice.backend == "scripted"
    assert "no checkpoint in the Hugging Face cache (/cache/hub)" in choice.reason
    assert GET_THE_MODEL in choice.reason


def test_auto_with_a_gpu_an_empty_cache_and_the_hub_reachable_downloads_the_best_it_may():
    choice = choose(80.0, [], cache_dir="/cache/hub", downloadable=[MOSHIKO])
    assert choice[:2] == ("moshi", "kyutai/moshiko-pytorch-bf16")
    assert "downloading moshiko" in choice.reason and "16 GB" in choice.reason
    # something cached wins over anything the hub would give
    assert choose(80.0, [find("moshika")], downloadable=[PERSONAPLEX])[:2] == (
        "moshi",
        "kyutai/moshika-pytorch-bf16",
    )


def test_hub_probe_is_false_offline_or_without_network(monkeypatch):
    import socket

    from assistant.auto import hub_serves

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_serves(MOSHIKO) is False
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert hub_serves(MOSHIKO, timeout_s=1.0) is False


def test_auto_with_a_gpu_too_small_for_the_7b_chooses_scripted():
    choice = choose(12.0, [PERSONAPLEX])
    assert choice.backend == "scripted" and "12 GB" in choice.reason and "--quantize int8" in choice.reason


def test_auto_with_a_gpu_serves_personaplex_first_then_moshiko():
    assert choose(80.0, [MOSHIKO, PERSONAPLEX])[:2] == ("moshi", "nvidia/personaplex-7b-v1")
    assert choose(24.0, [find("moshika"), MOSHIKO])[:2] == ("moshi", "kyutai/moshiko-pytorch-bf16")
    assert choose(24.0, [], model="/ckpt/mine")[:2] == ("moshi", "/ckpt/mine")


def test_auto_on_this_machine_chooses_scripted_with_a_banner_that_says_why():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    choice = choose_backend()
    assert choice.backend == "scripted"
    text = banner(choice)
    assert "chose the scripted backend" in text and "no CUDA GPU found" in text and GET_THE_MODEL in text


def test_auto_leaves_moshi_only_flags_unused_when_it_picks_scripted():
    import argparse

    import torch

    from server.app import add_arguments, config_from_args

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--backend", "auto", "--quantize", "int8"]))
    assert (config.backend, config.model) == ("scripted", None)
    assert "compile" not in config.engine_options and "no CUDA GPU" in config.auto_banner


def test_serve_backend_auto_without_gpu_or_weights_serves_scripted_with_the_banner(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with start_server("--backend", "auto", env=offline_env(tmp_path)) as server:
        health = json.loads(http_get(server, "/healthz")[2])
        output = "\n".join(server.output)  # the server's stderr and stdout
    assert health["backend"] == "scripted"
    assert "--backend auto chose the scripted backend" in output and "no CUDA GPU found" in output
    assert GET_THE_MODEL in output
