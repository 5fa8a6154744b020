"""The page's controls in a real browser, checked where a user would notice: what the server heard
while muted, what reached the speakers at each volume, which devices are offered, the session
timer, the history after Stop, the line saying what the page talks to, and the keyboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from browser_utils import (
    AUDIO_DIR,
    chromium_missing_reason,
    fake_mic_wav,
    launched_chromium,
    playback_tap,
    tapped_audio,
)
from listening_utils import recorded_session, window_correlations
from server_utils import start_server
from test_browser import CONVERSATION_WAV, Page, browser, mic_wav  # noqa: F401

_missing = chromium_missing_reason()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(_missing is not None, reason=f"browser tests need Chromium: {_missing}"),
    pytest.mark.skipif(not CONVERSATION_WAV.exists(), reason=f"test speech {CONVERSATION_WAV} is absent"),
]
DEMO_LINE = "Demo mode: no speech model on this server (see README: Models)"
WAITING_FOR_PAUSE = "Listening – waiting for you to pause"
# Remembers when the microphone opened: the fake microphone's file starts playing then.
MIC_CLOCK = """
(() => {
  const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    const stream = await open(constraints);
    window.__micOpenedAt ??= performance.now();
    return stream;
  };
})();
"""
TAPPED_SAMPLES = "window.__tap.chunks.reduce((n, c) => n + c.length, 0)"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    record = tmp_path_factory.mktemp("record")
    with start_server("--backend", "scripted", "--record", str(record)) as address:
        address.record_dir = record
        yield address


def _healthz(route, body: dict) -> None:
    route.fulfill(status=200, content_type="application/json", body=json.dumps(body))


def test_the_page_says_what_it_talks_to_and_when_it_waits_for_a_pause(server, browser):  # noqa: F811
    tab = Page(browser, f"{server.http_url}/")
    line = tab.page.get_by_test_id("server-info")
    line.wait_for(state="visible", timeout=5_000)
    assert line.inner_text().strip() == DEMO_LINE

    # While the question plays, the state says the assistant waits for the user to pause; then it answers.
    tab.button.click()
    tab.wait("document.querySelector('[data-testid=state]').dataset.state === 'userSpeaking'", 15)
    assert tab.page.get_by_test_id("state").inner_text().strip() == WAITING_FOR_PAUSE
    tab.wait("assistantClient.state === 'speaking'", 15)
    states = tab.js("window.__seen.states")
    assert states.index("listening") < states.index("userSpeaking") < states.index("speaking"), states
    tab.button.click()
    tab.wait("assistantClient.state === 'idle'", 5)
    assert tab.console_errors == []

    # A server with a model names it and its backend; one that hides its figures shows no line.
    model = {"status": "ok", "ready": True, "backend": "moshi", "model": "kyutai/moshiko-pytorch-bf16"}
    tab.page.route("**/healthz", lambda route: _healthz(route, model))
    tab.page.reload()
    line.wait_for(state="visible", timeout=5_000)
    assert line.inner_text().strip() == "Model: kyutai/moshiko-pytorch-bf16 · moshi backend"
    tab.page.unroute("**/healthz")
    tab.page.route("**/healthz", lambda route: _healthz(route, {"status": "ok", "ready": True}))
    tab.page.reload()
    tab.page.wait_for_timeout(1000)
    assert not line.is_visible()


@pytest.fixture(scope="module")
def two_questions_mic(tmp_path_factory) -> Path:
    """q1 at 0.5 s, q2 at 7.7 s (3 s after q1 ends), then silence."""
    folder = tmp_path_factory.mktemp("mic")
    q1, rate = sf.read(AUDIO_DIR / "q1.wav", dtype="float32")
    q2, _ = sf.read(AUDIO_DIR / "q2.wav", dtype="float32")
    both = np.concatenate(
        [q1, np.zeros(3 * rate, dtype=np.float32), q2, np.zeros(8 * rate, dtype=np.float32)]
    )
    sf.write(folder / "q1-q2.wav", both, rate, subtype="PCM_16")
    return fake_mic_wav(folder / "q1-q2.wav", folder / "q1-q2-44k.wav", lead_silence_s=0.5)


def test_muted_the_server_hears_silence_and_the_session_stays_then_it_hears_speech(server, two_questions_mic):
    q1, rate = sf.read(AUDIO_DIR / "q1.wav", dtype="float32")
    q2, _ = sf.read(AUDIO_DIR / "q2.wav", dtype="float32")
    with launched_chromium(two_questions_mic) as chromium:
        tab = Page(chromium, f"{server.http_url}/", init_script=MIC_CLOCK)
        mute = tab.page.get_by_role("button", name="Mute microphone")
        mute.click()  # before Start: the conversation starts muted
        assert mute.get_attribute("aria-pressed") == "true"
        tab.button.click()
        tab.wait("assistantClient.stats.readyAt !== null", 15)
        # q1 plays into the muted microphone (0.5-4.7 s after it opened); unmute a second after.
        tab.wait("performance.now() - window.__micOpenedAt > 5700", 15)
        stats = tab.js("assistantClient.stats")
        assert tab.js("assistantClient.live") and stats["framesSent"] > 150, stats  # silence went out
        assert tab.js("window.__seen.micMax") == 0  # the meter stayed flat
        assert "speaking" not in tab.js("window.__seen.states")  # nothing heard, nothing answered
        mute.click()
        assert mute.get_attribute("aria-pressed") == "false"
        unmuted_s = tab.js("(performance.now() - assistantClient.stats.readyAt) / 1000")
        # q2 starts 2 s later; the scripted assistant answers it.
        tab.wait("assistantClient.state === 'speaking'", 15)
        assert tab.js("window.__seen.micMax") > 20
        session_id = tab.js("assistantClient.sessionId")
        tab.button.click()
        tab.wait("assistantClient.state === 'idle'", 5)
        assert tab.console_errors == []

    heard, _, record_rate = recorded_session(server.record_dir, session_id)
    muted_part = heard[: int((unmuted_s - 0.3) * record_rate)]
    assert len(muted_part) > 4 * record_rate
    assert np.sqrt(np.mean(muted_part**2)) < 1e-3  # silence (q1 played then), not the question
    assert not np.any(window_correlations(heard, record_rate, q1, rate) > 0.9)  # q1 never got through
    assert np.mean(window_correlations(heard, record_rate, q2, rate) > 0.9) >= 0.8


def test_volume_scales_what_reaches_the_speakers_and_is_remembered(server, browser):  # noqa: F811
    tab = Page(browser, f"{server.http_url}/", init_script=playback_tap())
    volume = tab.page.get_by_role("slider", name="Volume")
    volume.focus()
    tab.page.keyboard.press("Home")  # 0 %, from the keyboard
    assert volume.input_value() == "0"
    tab.button.click()
    tab.wait("assistantClient.state === 'speaking'", 20)
    # The fake microphone's file goes on to talk over the reply, sooner when a busy machine started
    # the reply late: muted, nothing interrupts the 2.6 s measured below.
    tab.page.get_by_role("button", name="Mute microphone").click()
    tab.page.wait_for_timeout(300)
    silent_from = tab.js(TAPPED_SAMPLES)
    tab.page.wait_for_timeout(1000)
    silent_to = tab.js(TAPPED_SAMPLES)
    volume.focus()
    tab.page.keyboard.press("End")  # 100 %
    tab.page.wait_for_timeout(300)
    loud_from = tab.js(TAPPED_SAMPLES)
    tab.page.wait_for_timeout(1000)
    assert tab.js("assistantClient.state") == "speaking", "the reply ended too soon to compare"
    played, _ = tapped_audio(tab.page)
    tab.button.click()
    tab.wait("assistantClient.state === 'idle'", 5)

    def rms(part: np.ndarray) -> float:
        return float(np.sqrt(np.mean(part**2)))

    quiet, loud = rms(played[silent_from:silent_to]), rms(played[loud_from:])
    print(f"\nvolume 0 %: rms {quiet:.5f}; 100 %: rms {loud:.4f}")
    assert quiet < 1e-4 and loud > 0.02, (quiet, loud)
    tab.page.reload()
    assert tab.page.get_by_role("slider", name="Volume").input_value() == "100"
    assert tab.console_errors == []


def test_device_pickers_list_the_devices_and_switch_them_live(server, browser):  # noqa: F811
    tab = Page(browser, f"{server.http_url}/")
    microphones = tab.page.get_by_role("combobox", name="Microphone")
    speakers = tab.page.get_by_role("combobox", name="Speaker")
    assert microphones.is_visible() and speakers.is_visible()  # Chromium has setSinkId
    tab.button.click()
    tab.wait("assistantClient.stats.framesSent > 10", 15)
    # Once the microphone is allowed, the devices are listed by name (Chromium's fake ones here).
    tab.wait("document.querySelector('#microphone').options.length > 1", 5)
    names = microphones.locator("option").all_inner_texts()
    assert names[0] == "System default microphone" and "Fake Audio Input 1" in names, names
    microphones.select_option(label="Fake Audio Input 1")
    chosen = microphones.input_value()
    tab.wait(f"assistantClient.micSettings().deviceId === {json.dumps(chosen)}", 5)
    sent = tab.js("assistantClient.stats.framesSent")
    tab.page.wait_for_timeout(600)
    assert tab.js("assistantClient.stats.framesSent") > sent + 20  # the conversation went on
    assert tab.js("assistantClient.live")

    outputs = speakers.locator("option").all_inner_texts()
    assert "Fake Audio Output 1" in outputs, outputs
    speakers.select_option(label="Fake Audio Output 1")
    sink = speakers.input_value()
    tab.wait(f"assistantClient.run.graph.context.sinkId === {json.dumps(sink)}", 5)
    tab.button.click()
    tab.wait("assistantClient.state === 'idle'", 5)
    # Remembered for the next visit.
    tab.page.reload()
    saved = tab.js("JSON.parse(localStorage.getItem('duplex-assistant.settings'))")
    assert saved["micId"] == chosen and saved["speakerId"] == sink
    assert tab.console_errors == []

    # A browser that cannot choose the output device shows no speaker picker at all.
    tab = Page(browser, f"{server.http_url}/", init_script="delete AudioContext.prototype.setSinkId;")
    assert tab.page.get_by_role("combobox", name="Microphone").is_visible()
    assert not tab.page.get_by_test_id("speaker-field").is_visible()


def _clock_s(text: str) -> int:
    minutes, seconds = re.search(r"(\d+):(\d\d)", text).groups()
    return int(minutes) * 60 + int(seconds)


def test_timer_runs_and_the_history_outlives_stop_until_clear(server, browser):  # noqa: F811
    tab = Page(browser, f"{server.http_url}/")
    page = tab.page
    # Before any conversation: words, not placeholder dashes.
    timer = page.get_by_test_id("timer")
    assert not timer.is_visible()
    assert page.get_by_test_id("wire").inner_text().split("\n")[-1].strip() == "not connected"
    assert page.get_by_test_id("buffer").inner_text() == "not connected"
    assert page.get_by_test_id("latency").inner_text() == "none yet"
    assert "–" not in page.locator("main").inner_text()
    clear = page.get_by_role("button", name="Clear")
    assert clear.is_disabled()

    tab.button.click()
    tab.wait("assistantClient.stats.readyAt !== null", 15)
    timer.wait_for(state="visible", timeout=2_000)
    first = _clock_s(timer.inner_text())
    page.wait_for_timeout(2200)
    assert _clock_s(timer.inner_text()) >= first + 2
    tab.wait("document.querySelectorAll('[data-testid=captions] .turn').length >= 1", 20)
    tab.button.click()
    tab.wait("assistantClient.state === 'idle'", 5)
    # The page redraws on its next animation frame, which a busy machine can hold up a little.
    tab.wait("document.querySelector('[data-testid=timer]').textContent.startsWith('lasted ')", 2)
    ended = timer.inner_text()
    page.wait_for_timeout(1100)
    assert timer.inner_text() == ended  # stopped with the conversation
    turns = page.locator("[data-testid=captions] .turn")
    kept = turns.count()
    assert kept >= 1 and clear.is_enabled()

    # A new conversation adds to the history instead of replacing it.
    tab.button.click()
    tab.wait("assistantClient.stats.readyAt !== null", 15)
    assert turns.count() >= kept
    tab.button.click()
    tab.wait("assistantClient.state === 'idle'", 5)
    assert turns.count() >= kept

    clear.click()
    assert turns.count() == 0
    assert page.get_by_text("Captions appear here").is_visible()
    assert clear.is_disabled()
    assert tab.js("document.activeElement.id") == "captions"  # the keyboard lands on the log
    assert tab.console_errors == []


def test_controls_have_names_roles_and_a_keyboard_order(server, browser):  # noqa: F811
    tab = Page(browser, f"{server.http_url}/")
    page = tab.page
    for role, name in [
        ("button", "Start conversation"),
        ("button", "Mute microphone"),
        ("slider", "Volume"),
        ("combobox", "Microphone"),
        ("combobox", "Speaker"),
        ("button", "Clear"),
        ("log", None),
        ("status", None),
    ]:
        assert page.get_by_role(role, name=name).count() >= 1, (role, name)
    assert page.get_by_test_id("state").get_attribute("aria-live") == "polite"
    assert page.get_by_test_id("timer").get_attribute("role") == "timer"
    # Tab goes Start -> Mute -> Volume; Space toggles mute.
    page.get_by_role("button", name="Start conversation").focus()
    order = []
    for _ in range(2):
        page.keyboard.press("Tab")
        order.append(tab.js("document.activeElement.id"))
    assert order == ["mute", "volume"], order
    page.get_by_role("button", name="Mute microphone").focus()
    page.keyboard.press("Space")
    assert page.get_by_role("button", name="Mute microphone").get_attribute("aria-pressed") == "true"
    assert page.get_by_text("(muted)").is_visible()
