"""`assistant bench reliability` on small counts: the figures it reports hold on this server."""

from __future__ import annotations

import json

import pytest

SMALL_PROBES = [
    *("--disk-seconds", "2", "--odd-texts", "5", "--storm-seconds", "3"),
    *("--long-session-s", "18", "--static-mb", "4", "--static-fetches", "2"),
    *("--holders", "24", "--holders-seconds", "4"),
]


@pytest.mark.timeout(420)
def test_bench_reliability_small_run(capsys):
    from assistant.cli import main

    argv = ["bench", "reliability", "--fuzz", "150", "--churn", "30", "--rounds", "2", "--warm-up", "20"]
    assert main([*argv, "--workers", "6", *SMALL_PROBES, "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert set(figures["fuzz"]) >= {"/ws", "/v1/realtime"}
    for path, fuzz in figures["fuzz"].items():
        assert fuzz["tracebacks"] == 0 and fuzz["healthz_after"] == 200, (path, fuzz)
        assert fuzz["messages"] >= 150
    churn = figures["churn"]
    assert churn["cycles"] == 60 and churn["refused"] == 0 and churn["leaked_slots"] == 0
    assert churn["warm_up_cycles"] == 20 and len(churn["rss_mb_rounds"]) == 2
    # The server's own memory reports (SIGUSR1) were read at every point.
    memory = figures["memory"]
    assert list(memory["objects"]) == [
        "start",
        "after fuzz",
        "after warm-up",
        "after round 1",
        "after round 2",
    ]
    assert all(n > 0 for n in memory["objects"].values())
    assert 0 < churn["retained_mb_after"] <= churn["rss_mb_after"] + 1
    assert all(isinstance(ms, int) for ms in memory["took_ms"].values())
    assert isinstance(figures["healthy_client"]["max_gap_ms_by_phase"], dict)
    assert figures["tracebacks_total"] == 0
    assert figures["healthy_client"]["frames"] > 50
    assert 0 <= figures["kill_9"]["lost_s"] <= 1.0
    drain = figures["drain"]
    assert drain["healthz_while_draining"] == "503 draining"
    assert drain["new_session"].startswith("1013")
    assert drain["live_session_ended"] == "server_shutdown"
    static = figures["big_static_file"]
    assert static["answers"] == ["200 4 MiB"] and static["revalidated"] == 304
    disk = figures["full_disk"]
    if "skipped" not in disk:  # a tmpfs as root, a read-only directory otherwise
        assert disk["sessions"] == 8 and disk["ended_other_than_asked"] == [] and disk["tracebacks"] == 0
        assert disk["healthz"] == "200 ok" and disk["recording"] == "failing" and disk["warnings"] >= 8
    holders = figures["idle_holders"]
    assert holders["readyz_not_200"] == 0 and holders["tracebacks"] == 0
    assert holders["idle_slots_while_holding"] == holders["idle_slots_after_timeout"] == 0
    assert holders["holders_open_after_timeout"] == 0 and holders["closes"].get("1000 start_timeout", 0) > 0
    let_in, tried = map(int, holders["real_users"].split("/"))
    assert tried > 0 and let_in == tried
    prompted = figures["prompted_model"]
    odd, storm, long = prompted["odd text"], prompted["prompt storm"], prompted["long session"]
    assert odd["tracebacks"] == storm["tracebacks"] == long["tracebacks"] == 0
    assert not [answer for answer in odd["answers"] if "internal" in answer or "server_error" in answer]
    assert odd["answers"]["error invalid_value"] > 0 and odd["answers"]["accepted"] > 0
    assert 0 < storm["accepted"] <= storm["clients"] * (storm["seconds"] + 1) and storm["rate_limited"] > 0
    assert long["still_live"] and long["errors"] == [] and long["usage_ratio_first_last"][-1] > 0


def test_memory_figures_name_the_line_that_grew(tmp_path):
    import tracemalloc

    from bench.reliability import memory_figures

    tracemalloc.start()
    try:
        paths = []
        kept = []
        for i in range(2):
            path = tmp_path / f"{i}.tracemalloc"
            tracemalloc.take_snapshot().dump(str(path))
            paths.append(str(path))
            kept.append(bytearray(2_000_000))  # the growth between the two snapshots
    finally:
        tracemalloc.stop()
    reports = {
        "a": {"objects": 10, "rss_mb": 50.0, "rss_mb_trimmed": 40.0, "snapshot": paths[0]},
        "b": {"objects": 12, "rss_mb": 52.0, "rss_mb_trimmed": 41.0, "snapshot": paths[1]},
    }
    figures = memory_figures(reports)
    assert figures["objects"] == {"a": 10, "b": 12}
    top = figures["grown"]["a -> b"][0]
    assert top["line"].endswith("test_bench_reliability.py:" + str(_line_of("kept.append(bytearray")))
    assert top["kib"] >= 1900
    assert kept


def _line_of(text: str) -> int:
    from pathlib import Path

    lines = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line and "_line_of" not in line)


def test_rounds_must_be_at_least_one(capsys):
    from assistant.cli import main

    with pytest.raises(SystemExit) as info:
        main(["bench", "reliability", "--rounds", "0"])
    assert info.value.code == 2 and "must be 1 or more" in capsys.readouterr().err


def test_gaps_are_put_in_the_phase_they_began_in():
    from bench.loopback import gaps_by_phase

    phases = [("idle", 100.0), ("fuzz /ws", 110.0), ("memory reports", 120.0), ("idle", 120.5)]
    gaps = [[110.1, 150.0], [115.0, 300.0], [120.4, 200.0], [130.0, 130.0], [120.6, 250.0]]
    # 120.6 - 0.25 = 120.35: began during the memory report.
    assert gaps_by_phase(gaps, phases) == {"idle": 150.0, "fuzz /ws": 300.0, "memory reports": 250.0}
