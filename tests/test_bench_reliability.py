"""`assistant bench reliability` on small counts: the figures it reports hold on this server."""

from __future__ import annotations

import json

import pytest


@pytest.mark.timeout(180)
def test_bench_reliability_small_run(capsys):
    from assistant.cli import main

    assert main(["bench", "reliability", "--fuzz", "150", "--churn", "60", "--workers", "6", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert set(figures["fuzz"]) >= {"/ws", "/v1/realtime"}
    for path, fuzz in figures["fuzz"].items():
        assert fuzz["tracebacks"] == 0 and fuzz["healthz_after"] == 200, (path, fuzz)
        assert fuzz["messages"] >= 150
    churn = figures["churn"]
    assert churn["cycles"] == 60 and churn["refused"] == 0 and churn["leaked_slots"] == 0
    assert figures["tracebacks_total"] == 0
    assert figures["healthy_client"]["frames"] > 50
    assert 0 <= figures["kill_9"]["lost_s"] <= 1.0
    drain = figures["drain"]
    assert drain["healthz_while_draining"] == "503 draining"
    assert drain["new_session"].startswith("1013")
    assert drain["live_session_ended"] == "server_shutdown"
