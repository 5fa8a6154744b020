"""The web page in a real browser: headless Chromium, a WAV file as the microphone, `assistant serve`.

The fake microphone plays tests/data/speech/conversation.wav (a question, 3 s of silence for the
reply, an interruption) once, so a test hears the scripted reply and cuts it off, in real time.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from browser_utils import AUDIO_DIR, CHROMIUM, chromium_args, chromium_missing_reason, fake_mic_wav
from server_utils import start_server

REPO = Path(__file__).resolve().parents[1]
TOKEN = "browser-test-token"
CONVERSATION_WAV = AUDIO_DIR / "conversation.wav"
# What the scripted backend says (assistant/data/reply.txt beside its reply.wav).
REPLY_TEXT = (REPO / "assistant" / "data" / "reply.txt").read_text().strip()

_missing = chromium_missing_reason()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(_missing is not None, reason=f"browser tests need Chromium: {_missing}"),
]

# Recorded in the page from its first moment: every state the indicator showed, and the
# loudest each level meter got, so short-lived states are not missed between polls.
RECORDER = """
window.__seen = {states: [], micMax: 0, assistantMax: 0};
document.addEventListener("DOMContentLoaded", () => {
  const state = document.querySelector('[data-testid="state"]');
  const mic = document.querySelector('[data-testid="mic-meter"]');
  const assistant = document.querySelector('[data-testid="assistant-meter"]');
  new MutationObserver(() => {
    const seen = window.__seen;
    if (seen.states.at(-1) !== state.dataset.state) seen.states.push(state.dataset.state);
    seen.micMax = Math.max(seen.micMax, Number(mic.getAttribute("aria-valuenow")));
    seen.assistantMax = Math.max(seen.assistantMax, Number(assistant.getAttribute("aria-valuenow")));
  }).observe(document.body, {subtree: true, attributes: true, attributeFilter: ["data-state", "aria-valuenow"]});
});
"""


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory) -> Path:
    return fake_mic_wav(
        CONVERSATION_WAV, tmp_path_factory.mktemp("mic") / "conversation-44k.wav", lead_silence_s=0.5
    )


@pytest.fixture(scope="module")
def server():
    """One scripted server for the conversation and the refusals: a token, and room for one session."""
    with start_server("--backend", "scripted", "--max-sessions", "1", "--auth-token", TOKEN) as address:
        yield address


@pytest.fixture
def browser(mic_wav):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), args=chromium_args(mic_wav), headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


class Page:
    """A browser tab on the demo page that keeps what the console and the page reported."""

    def __init__(self, browser, url: str, init_script: str = ""):
        self.page = browser.new_page()
        self.console_errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))
        self.page.add_init_script(RECORDER + init_script)
        self.page.goto(url)
        self.button = self.page.get_by_test_id("start-button")

    def js(self, expression: str):
        return self.page.evaluate(expression)

    def wait(self, expression: str, timeout_s: float) -> None:
        self.page.wait_for_function(expression, timeout=timeout_s * 1000)

    def state(self) -> str:
        return self.page.get_by_test_id("state").get_attribute("data-state")

    def error(self) -> tuple[str, str]:
        box = self.page.get_by_test_id("error")
        box.wait_for(state="visible", timeout=15_000)
        return box.get_attribute("data-code"), box.inner_text()


def live_sessions(server) -> int:
    with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=5) as response:
        return json.load(response)["live_sessions"]


def test_conversation_reply_captions_latency_and_interruption(server, browser, tmp_path):
    tab = Page(browser, f"{server.http_url}/?token={TOKEN}")
    page = tab.page
    # The token moved from the address bar into the (persisted) settings.
    assert "token" not in page.url
    assert page.get_by_label("Server token").input_value() == TOKEN

    # Keyboard only: the labelled button starts the conversation.
    start = page.get_by_role("button", name="Start conversation")
    start.focus()
    page.keyboard.press("Enter")
    tab.wait("assistantClient.state === 'listening'", 15)
    assert tab.button.inner_text().strip() == "Stop"
    # Headphones (the default): the microphone is left unprocessed.
    mic = tab.js("assistantClient.micSettings()")
    assert mic["echoCancellation"] is False and mic["noiseSuppression"] is False, mic

    # The question is heard, the scripted reply plays and the indicator says so.
    tab.wait("document.querySelector('[data-testid=state]').dataset.state === 'speaking'", 20)
    assert page.get_by_test_id("state").inner_text().strip() == "Assistant speaking"
    page.wait_for_timeout(600)
    page.screenshot(path=str(tmp_path / "mid-conversation.png"), full_page=True)
    assert (tmp_path / "mid-conversation.png").stat().st_size > 10_000

    # The interruption: the server's playback.clear empties the playout buffer at once.
    tab.wait("assistantClient.stats.clearLatenciesMs.length >= 1", 15)
    stats = tab.js("assistantClient.stats")
    assert stats["clears"] >= 1
    assert stats["clearLatenciesMs"][0] < 300, stats["clearLatenciesMs"]
    tab.wait("window.__seen.states.includes('interrupted')", 5)
    # The second reply (after the interruption) plays out in full.
    tab.wait("document.querySelector('[data-testid=captions]').innerText.includes('I am listening.')", 20)

    stats = tab.js("assistantClient.stats")
    rate = tab.js("assistantClient.sampleRate")
    # The microphone goes out in 20 ms chunks (50 a second) from session.ready on.
    live_s = tab.js(
        "(performance.now() - assistantClient.stateHistory.find(s => s.state === 'listening').t) / 1000"
    )
    assert 0.7 * 50 * live_s < stats["framesSent"] < 1.3 * 50 * live_s, (stats["framesSent"], live_s)
    assert stats["framesReceived"] > 50
    # The playout clock ran all along (the server streams silence between replies too), and the
    # assistant's meter moved: the reply was audible, not just received.
    assert stats["samplesPlayed"] > 0.7 * live_s * rate, (stats["samplesPlayed"], live_s)
    seen = tab.js("window.__seen")
    states = iter(seen["states"])
    assert all(s in states for s in ("connecting", "listening", "speaking", "interrupted")), seen["states"]
    assert seen["micMax"] > 20 and seen["assistantMax"] > 20, seen

    # Captions: the cut-off reply is marked and holds only a beginning of the script; the full
    # reply follows.
    turns = page.locator("[data-testid=captions] .turn--assistant")
    assert turns.count() >= 2
    cut_turn = turns.nth(0)
    assert "interrupted" in cut_turn.locator(".turn-who").inner_text()
    cut_shown = " ".join(cut_turn.locator(".turn-text").inner_text().split())
    assert cut_shown and REPLY_TEXT.startswith(cut_shown) and len(cut_shown) < len(REPLY_TEXT)
    assert " ".join(turns.last.inner_text().split()).endswith(REPLY_TEXT)

    # The page reports its playhead: the server's view of what was heard trails what it sent
    # by about the playout buffer (without reports the two would be equal).
    server_stats = tab.js("assistantClient.serverStats")
    assert 0 < server_stats["sent_ms"] - server_stats["played_ms"] < 1500, server_stats

    latency = page.get_by_test_id("latency").inner_text()
    assert latency.isdigit() and 0 < int(latency) < 5000, latency
    assert page.get_by_test_id("buffer").inner_text().isdigit()

    print(
        f"\nbrowser conversation: playback.clear -> empty buffer {stats['clearLatenciesMs'][0]:.1f} ms, "
        f"last reply latency {latency} ms (server response gap {stats['responseGapMs']} ms, "
        f"page playout {stats['replyWaitMs']:.0f} ms), "
        f"underruns {stats['underruns']}, played {stats['samplesPlayed'] / rate:.1f} s, "
        f"sent {stats['framesSent']} chunks, received {stats['framesReceived']} frames"
    )

    # Stop: the button returns to Start and the server's slot is freed.
    tab.button.click()
    tab.wait("assistantClient.state === 'idle'", 5)
    assert tab.button.inner_text().strip() == "Start conversation"
    page.wait_for_timeout(500)
    assert live_sessions(server) == 0
    assert tab.console_errors == []


def test_captions_order_user_turns_and_mark_cut_text(server, browser):
    tab = Page(browser, f"{server.http_url}/")
    # Server events as the page receives them; the user's caption comes after the reply began.
    events = [
        {"type": "input.speech_started", "at_ms": 400},
        {"type": "assistant.speech_started", "at_ms": 2100},
        {"type": "assistant.text", "text": "Sure,", "at_ms": 2100},
        {"type": "assistant.text", "text": " happy to", "at_ms": 2300},
        {"type": "user.transcript", "text": " Tell me a story. ", "start_ms": 400, "end_ms": 1800},
        {"type": "assistant.text", "text": " help you", "at_ms": 2500},
        {"type": "input.speech_started", "at_ms": 3000},
        {"type": "barge_in", "at_ms": 3000, "cut_text": "help you"},
        {"type": "assistant.text", "text": " Okay.", "at_ms": 4000},
    ]
    tab.page.evaluate(
        "events => events.forEach(e => assistantClient.dispatchEvent(new CustomEvent('event', {detail: e})))",
        events,
    )
    turns = tab.page.locator("[data-testid=captions] .turn")
    assert [turns.nth(i).get_attribute("data-who") for i in range(turns.count())] == [
        "user",
        "assistant",
        "assistant",
    ]
    assert turns.nth(0).locator(".turn-text").inner_text() == "Tell me a story."
    first = turns.nth(1)
    assert first.locator(".turn-text").inner_text() == "Sure, happy to help you"
    assert first.locator("del.cut").inner_text() == "help you"
    assert "interrupted" in first.locator(".turn-who").inner_text()
    assert turns.nth(2).locator(".turn-text").inner_text() == "Okay."
    assert tab.console_errors == []


def _only_refusal_noise(errors: list[str]) -> list[str]:
    """Console lines other than the browser's own report of a refused handshake or probe."""
    return [e for e in errors if "WebSocket connection to" not in e and "status of 401" not in e]


def test_refusals_wrong_token_server_full_and_denied_microphone(server, browser):
    from websockets.sync.client import connect

    # Wrong token: the handshake gets HTTP 401, which the page tells apart from "unreachable".
    tab = Page(browser, f"{server.http_url}/?token=wrong-{TOKEN}")
    tab.button.click()
    code, text = tab.error()
    assert code == "auth" and "token" in text
    assert tab.page.evaluate("document.activeElement.id") == "token"  # straight to the fix
    assert tab.button.inner_text().strip() == "Start conversation"
    assert tab.state() == "idle"
    assert _only_refusal_noise(tab.console_errors) == []

    # Server full: another client holds the only session; the page says so (close code 1013).
    with connect(f"{server.ws_url}?token={TOKEN}") as holder:
        holder.send(json.dumps({"type": "session.start", "sample_rate": 24000}))
        assert json.loads(holder.recv(timeout=10))["type"] == "session.ready"
        tab = Page(browser, f"{server.http_url}/?token={TOKEN}")
        tab.button.click()
        code, text = tab.error()
        assert code == "full" and "full" in text
        assert tab.button.inner_text().strip() == "Start conversation"
        holder.send(json.dumps({"type": "session.end"}))
        for _ in holder:  # read what is queued until the server closes, so the close is prompt
            pass
    assert tab.console_errors == []

    # Microphone denied (what the browser reports when the user blocks it): no socket is opened.
    deny = """navigator.mediaDevices.getUserMedia = () =>
      Promise.reject(new DOMException("Permission denied", "NotAllowedError"));"""
    tab = Page(browser, f"{server.http_url}/?token={TOKEN}", init_script=deny)
    tab.button.click()
    code, text = tab.error()
    assert code == "mic_denied" and "Microphone" in text and "Allow" in text
    assert tab.button.inner_text().strip() == "Start conversation"
    assert tab.console_errors == []


def _ended_reason(record_dir: Path, session_id: str) -> str | None:
    events = (record_dir / f"{session_id}.jsonl").read_text().splitlines()
    ended = [json.loads(line) for line in events if '"session.ended"' in line]
    return ended[-1]["reason"] if ended else None


def test_closing_the_tab_ends_the_session_then_server_stop_and_unreachable(browser, tmp_path):
    record_dir = tmp_path / "sessions"
    with start_server("--backend", "scripted", "--record", str(record_dir), "--verbose") as address:
        # Settings persist across a reload and reach the microphone and the session.
        tab = Page(browser, f"{address.http_url}/")
        tab.page.get_by_label("Speakers").check()
        tab.page.get_by_label("When you talk over the assistant").select_option("vad")
        tab.page.reload()
        assert tab.page.get_by_label("Speakers").is_checked()
        assert tab.page.get_by_label("When you talk over the assistant").input_value() == "vad"
        tab.button.click()
        tab.wait("assistantClient.state === 'listening'", 15)
        assert tab.js("assistantClient.serverOptions.barge_in") == "vad"
        mic = tab.js("assistantClient.micSettings()")
        assert mic["echoCancellation"] is True and mic["autoGainControl"] is True, mic
        # A live change is sent as session.update and confirmed by the server.
        tab.page.get_by_label("When you talk over the assistant").select_option("model")
        tab.wait("assistantClient.serverOptions.barge_in === 'model'", 5)

        # Closing the tab says goodbye (session.end on pagehide) instead of just dropping the socket.
        session_id = tab.js("assistantClient.sessionId")
        tab.page.close(run_before_unload=True)
        deadline = time.monotonic() + 5
        while live_sessions(address) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live_sessions(address) == 0
        closed = [line for line in address.output if " closed: " in line]  # --verbose logs them
        assert _ended_reason(record_dir, session_id) == "client_ended", closed

        # The server stops mid-conversation: the page says so and offers Start again.
        tab = Page(browser, f"{address.http_url}/")
        tab.button.click()
        tab.wait("assistantClient.state === 'listening' && assistantClient.stats.framesReceived > 10", 15)
        address.proc.send_signal(signal.SIGTERM)
        code, text = tab.error()
        assert code in ("server_stopped", "lost"), text
        assert tab.button.inner_text().strip() == "Start conversation"
        assert tab.state() == "idle"
        address.proc.wait(15)

    # Starting again with the server gone: "unreachable", with what to do.
    tab.button.click()
    tab.page.wait_for_function(
        "document.querySelector('[data-testid=error]').dataset.code === 'unreachable'", timeout=15_000
    )
    text = tab.page.get_by_test_id("error").inner_text()
    assert "cannot be reached" in text and "assistant serve" in text
    assert tab.button.inner_text().strip() == "Start conversation"
