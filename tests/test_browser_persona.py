"""The page's persona box and voice picker, in Chromium, against a server whose model takes prompts.

The server runs the tiny PersonaPlex checkpoint of tests/data (random weights: it does not converse,
but it takes a role and a voice) and records its sessions, so the test reads what the session got.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from browser_utils import AUDIO_DIR, CHROMIUM, chromium_args, chromium_missing_reason, fake_mic_wav
from server_utils import start_personaplex_server, start_server

_missing = chromium_missing_reason()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(180),
    pytest.mark.skipif(_missing is not None, reason=f"browser tests need Chromium: {_missing}"),
]
PERSONA = "You are a pirate who loves films."


def recorded_options(record_dir: Path, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in record_dir.glob("*.jsonl"):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record.get("event") == "session.ready":
                    return record["options"]
        time.sleep(0.1)
    raise AssertionError(f"no session was recorded in {record_dir}")


def test_persona_and_voice_chosen_on_the_page_reach_the_session(tmp_path):
    from playwright.sync_api import sync_playwright

    mic = fake_mic_wav(AUDIO_DIR / "q1.wav", tmp_path / "mic.wav", lead_silence_s=0.5, tail_silence_s=2.0)
    record_dir = tmp_path / "record"
    with (
        start_personaplex_server(
            "--record",
            str(record_dir),
        ) as address,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(mic), headless=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(address.http_url + "/")
            persona = page.get_by_test_id("persona")
            persona.wait_for(state="visible", timeout=10_000)
            options = page.locator("#voice option").all_inner_texts()
            assert options == ["Model default (TINYF0)", "TINYF0", "TINYF0.wav"]
            page.fill("#instructions", PERSONA)
            page.select_option("#voice", "TINYF0.pt")
            page.get_by_test_id("start-button").click()
            got = recorded_options(record_dir)
            assert got["instructions"] == PERSONA and got["voice"] == "TINYF0.pt"
            page.get_by_test_id("start-button").click()  # stop
            # the choice is kept for the next visit
            page.reload()
            persona.wait_for(state="visible", timeout=10_000)
            assert page.input_value("#instructions") == PERSONA
            assert page.input_value("#voice") == "TINYF0.pt"
            assert not errors, errors
        finally:
            browser.close()


def test_the_persona_box_stays_hidden_when_the_model_takes_no_prompt(tmp_path):
    from playwright.sync_api import sync_playwright

    mic = fake_mic_wav(AUDIO_DIR / "q1.wav", tmp_path / "mic.wav")
    with start_server("--backend", "scripted") as address, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(mic), headless=True)
        try:
            page = browser.new_page()
            page.goto(address.http_url + "/")
            page.wait_for_function("() => window.assistantClient !== undefined")
            page.wait_for_timeout(500)  # the voices request has answered
            assert page.get_by_test_id("persona").is_hidden()
            assert page.evaluate("window.assistantClient.promptOptions()") == {}
        finally:
            browser.close()
