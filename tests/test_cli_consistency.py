"""The command line as a new user meets it: the same default as `make run`, errors that say what
to do (offline without the model, a port in use), counts in good English, models named as the
user named them, and output that can be piped into `head`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from server_utils import http_get, start_server

from assistant.cli import build_parser
from bench.prefill import ready_text
from server.config import config_from_args

REPO = Path(__file__).resolve().parents[1]


def assistant(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "assistant", *args]
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def offline_env(tmp_path: Path) -> dict[str, str]:
    """No network and an empty Hugging Face cache."""
    return {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "ASSISTANT_MODEL": ""}


def test_serve_without_a_backend_runs_auto_like_make_run(monkeypatch):
    monkeypatch.delenv("ASSISTANT_MODEL", raising=False)
    config = config_from_args(build_parser(["serve"]).parse_args(["serve"]))
    assert config.auto_banner is not None and "--backend auto chose" in config.auto_banner
    help_text = assistant("serve", "--help").stdout
    assert "(default: auto)" in " ".join(help_text.split())
    run = next(line for line in (REPO / "Makefile").read_text().splitlines() if "assistant serve" in line)
    assert "--backend" not in run, "make run adds nothing: serve's own default is the same"


def test_offline_without_the_model_says_what_to_do_not_what_the_hub_said(tmp_path):
    result = assistant(
        "serve", "--backend", "moshi", "--model", "kyutai/moshiko-pytorch-bf16", env=offline_env(tmp_path)
    )
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "assistant models download moshiko" in message and "--backend scripted" in message
    assert "not in the Hugging Face cache" in message
    for hub_text in ("HF_HUB_OFFLINE=0", "outgoing traffic", "snapshot folder", "Traceback"):
        assert hub_text not in message, message


def test_a_port_in_use_is_named_with_the_option_that_moves_it():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = assistant("serve", "--backend", "scripted", "--captions", "off", "--port", str(port))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr and "--port N" in result.stderr
    assert "Errno" not in result.stderr and "Traceback" not in result.stderr


def test_one_session_is_one_session():
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    with start_server("--max-sessions", "1") as server:
        assert any(line.endswith(", 1 session max") for line in server.output), server.output

        async def second_is_refused() -> str:
            async with connect(server.ws_url) as first:
                await first.send(json.dumps({"type": "session.start", "sample_rate": 24000}))
                await first.recv()
                async with connect(server.ws_url) as second:
                    try:
                        await second.recv()
                    except ConnectionClosed as exc:
                        return exc.rcvd.reason
            return ""

        reason = asyncio.run(second_is_refused())
    assert reason == "server full: its one session is taken; try later"


def test_the_captions_model_is_named_as_the_user_named_it():
    with start_server("--captions", "auto", "--caption-threads", "3") as server:
        _, _, body = http_get(server, "/healthz")
    assert json.loads(body)["captions"]["model"] == "tiny.en", "the name, never a folder on the server"
    assert json.loads(body)["captions"]["threads"] == 3


def test_models_json_piped_into_head_ends_quietly():
    cmd = f"{sys.executable} -m assistant models --json | head -1; exit ${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout == "[\n"
    assert result.stderr == "" and result.returncode == 0, result.stderr


def test_bench_prefill_says_which_sessions_were_not_ready_instead_of_none():
    assert (
        ready_text([3, None, 4, None], 100)
        == ", ready after 3, 4 ticks, 2 not ready within the run's 100 ticks"
    )
    assert ready_text([None], 50) == ", 1 not ready within the run's 50 ticks"
    assert ready_text([], 50) == ""
