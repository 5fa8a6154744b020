"""`assistant eval duplex --backend scripted` end to end: scenarios, output.wav, tiny.en ASR, scores,
the HTML report in a real browser, and the same scenarios through a live server.

The scripted backend answers every silence of 0.5 s with its recorded reply and stops the moment
the user speaks, so its scores are known: it takes the floor at a long pause but not a short one,
answers every turn and interruption about 0.6 s after it ends, and never holds the floor through
a backchannel or a background speaker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from browser_utils import CHROMIUM, chromium_missing_reason
from server_utils import start_server

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(180)
CHROMIUM_MISSING = chromium_missing_reason()


def eval_duplex(out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    cmd = [sys.executable, "-m", "assistant", "eval", "duplex", "--out", str(out), "--asr", "tiny.en"]
    cmd += ["--json", str(out / "results.json"), *args]
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads((out / "results.json").read_text())["kinds"]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("duplex")
    proc, kinds = eval_duplex(out, "--backend", "scripted", "--report", str(out / "report"))
    return out, proc, kinds


def decisions(kinds: dict) -> dict:
    """Per sample: did it take the turn. (Whether it held the floor through an overlap turns on
    tens of ms of timing, which a live server on a busy box does not reproduce exactly.)"""
    return {
        (kind, sample_id): s["tor"]
        for kind, task in kinds.items()
        for sample_id, s in task["per_sample"].items()
    }


def test_scripted_backend_scores_as_its_turn_taking_predicts(in_process):
    out, proc, kinds = in_process
    assert set(kinds) == {"pause", "turn", "backchannel", "interrupt", "background"}
    assert all(task["samples"] == 2 and not task["errors"] for task in kinds.values())
    pause = kinds["pause"]["per_sample"]
    # A 1.0 s pause: its reply is cut off at once by the user going on; 2.5 s: it took over.
    assert (pause["0"]["tor"], pause["1"]["tor"]) == (0, 1)
    for kind in ("turn", "interrupt"):
        assert kinds[kind]["tor"] == 1.0
        assert 0.45 < kinds[kind]["latency_s"] < 1.0, kinds[kind]
    for kind in ("backchannel", "background"):
        assert kinds[kind]["tor"] is None and kinds[kind]["held_floor"] == 0.0  # it always stops
        assert 0.1 < kinds[kind]["stop_latency_s"] < 0.7, kinds[kind]
    assert kinds["interrupt"]["held_floor"] == 0.0
    for wav in out.glob("*/*/output.wav"):
        sample = out / "scenarios" / wav.parent.parent.name / wav.parent.name
        assert abs(sf.info(str(wav)).duration - sf.info(str(sample / "input.wav")).duration) < 1e-3
    assert "turn (smooth_turn_taking)" in proc.stdout


def test_a_second_run_resumes_from_the_files_and_scores_the_same(in_process):
    out, _, kinds = in_process
    proc, again = eval_duplex(out, "--backend", "scripted")
    assert "output.wav: 0 made, 10 already there" in proc.stdout
    assert "output.json: 0 made, 10 already there" in proc.stdout
    assert again == kinds


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM_MISSING is not None, reason=f"needs Chromium: {CHROMIUM_MISSING}")
def test_the_report_reads_on_a_desktop_and_a_phone_with_every_timeline_and_player(in_process):
    from playwright.sync_api import sync_playwright

    report = in_process[0] / "report" / "index.html"
    seen = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            for name, width, height in (("desktop", 1280, 900), ("phone", 390, 844)):
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(report.as_uri())
                page.wait_for_function(
                    "[...document.querySelectorAll('audio')].every(a => a.readyState >= 1)", timeout=10_000
                )
                seen[name] = page.evaluate(
                    """() => ({
                    page: document.documentElement.scrollWidth,
                    body: document.body.clientWidth,
                    charts: [...document.querySelectorAll('.chart img')].map(i =>
                        [i.complete, i.naturalWidth, i.clientWidth, i.parentElement.clientWidth]),
                    players: [...document.querySelectorAll('.sample')].map(s =>
                        [...s.querySelectorAll('audio')].map(a => [a.getAttribute('src'), a.duration])),
                    metrics: [...document.querySelectorAll('[data-testid=metrics] li')].map(li => li.innerText),
                    published: document.querySelector('[data-testid=published]').innerText,
                    text: document.body.innerText,
                })"""
                )
                page.close()
        finally:
            browser.close()
    desktop, phone = seen["desktop"], seen["phone"]
    assert len(desktop["charts"]) == 10 and all(c[0] and c[1] > 300 for c in desktop["charts"])
    # The charts take the page's width on a desktop (no fixed size), and scroll in their own box on a phone.
    assert all(c[2] >= 0.98 * c[3] and c[3] > 900 for c in desktop["charts"]), desktop["charts"]
    assert phone["page"] <= 390, "nothing makes the phone's page scroll sideways"
    assert all(c[2] >= 600 for c in phone["charts"]), "a chart keeps a readable size, scrolling sideways"
    # A player for what the user said and one for what the assistant answered, files beside the page.
    for players in desktop["players"]:
        (said, said_s), (answered, answered_s) = players
        assert said.endswith("-input.wav") and answered.endswith("-output.wav")
        assert (report.parent / said).is_file() and said_s > 1 and abs(answered_s - said_s) < 0.01
    assert len(desktop["metrics"]) == 6
    assert all(("↓" in line or "↑" in line) and len(line.split()) > 6 for line in desktop["metrics"])
    assert "Moshi" in desktop["published"] and "0.985" in desktop["published"]
    assert "arXiv:2503.04721" in desktop["text"] and "not computed here" in desktop["text"]
    assert "interrupt (user_interruption) / 1" in desktop["text"]
    assert "output.json made by: tiny.en" in desktop["text"], "the ASR model by its name, not a folder"


def test_the_summary_explains_its_columns(in_process):
    _, proc, _ = in_process
    out = proc.stdout
    for column in ("TOR ↓↑", "latency s ↓", "stop latency s ↓", "held floor ↓"):
        assert f"{column}:" in out, f"{column} is explained under the table"
    assert "scenarios: 10 made" in out, "a line per stage, the scenario set's too"


def test_a_live_server_makes_the_same_takeover_decisions(in_process, tmp_path):
    out, _, kinds = in_process
    with start_server("--backend", "scripted") as server:
        _, live = eval_duplex(
            tmp_path, "--server", server.ws_url, "--scenarios", str(out / "scenarios"), "--batch", "10"
        )
    assert decisions(live) == decisions(kinds)
    assert 0.45 < live["turn"]["latency_s"] < 1.3  # real time adds the frame clock's phase and the network
