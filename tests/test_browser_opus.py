"""The page negotiates Opus through WebCodecs: the conversation works at a fraction of PCM's bitrate,
and a browser without WebCodecs falls back to PCM16 and says so."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from browser_utils import chromium_missing_reason
from server_utils import start_server
from test_browser import CONVERSATION_WAV, REPLY_TEXT, Page, browser, mic_wav  # noqa: F401

_missing = chromium_missing_reason()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(_missing is not None, reason=f"browser tests need Chromium: {_missing}"),
]
OPUS_ALGORITHMIC_MS = 6.5  # libopus' lookahead at 24 kHz (tests/test_opus_wire.py measures it)
NO_WEBCODECS = "delete window.AudioEncoder; delete window.AudioDecoder;"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    record = tmp_path_factory.mktemp("record")
    with start_server("--backend", "scripted", "--record", str(record)) as address:
        address.record_dir = record
        yield address


def test_opus_conversation_reply_captions_barge_in_and_bitrates(server, browser):  # noqa: F811
    tab = Page(browser, f"{server.http_url}/")
    tab.wait("assistantClient.opusAvailable !== null", 10)
    if not tab.js("assistantClient.opusAvailable"):
        pytest.skip("this Chromium has no WebCodecs Opus encoder/decoder; the page uses PCM16 here")
    tab.button.click()
    tab.wait("assistantClient.state === 'listening'", 15)
    assert tab.js("assistantClient.audioFormat") == "opus"
    assert tab.js("assistantClient.wireRate") == 24000

    tab.wait("window.__seen.states.includes('speaking')", 20)
    tab.wait("assistantClient.stats.clearLatenciesMs.length >= 1", 15)
    stats = tab.js("assistantClient.stats")
    assert stats["clearLatenciesMs"][0] < 300, stats["clearLatenciesMs"]
    tab.wait("document.querySelector('[data-testid=captions]').innerText.includes('I am listening.')", 20)
    captions = " ".join(tab.page.get_by_test_id("captions").inner_text().split())
    assert REPLY_TEXT.split()[0] in captions

    stats = tab.js("assistantClient.stats")
    seen = tab.js("window.__seen")
    assert seen["assistantMax"] > 20, seen  # the reply was decoded and played, not just received
    assert stats["samplesPlayed"] > 24000 * 3
    rates = tab.js("assistantClient.bitrates()")
    assert 5 < rates["upKbps"] <= 40 and 5 < rates["downKbps"] <= 40, rates
    # The settings say what is on the wire.
    assert tab.page.get_by_test_id("audio-format").inner_text() == "Opus (WebCodecs)"
    assert float(tab.page.get_by_test_id("kbps-up").inner_text()) <= 40
    encode_ms = float(np.mean(stats["encodeMs"]))
    decode_ms = float(np.mean(stats["decodeMs"]))
    added_ms = encode_ms + decode_ms + OPUS_ALGORITHMIC_MS
    print(
        f"\nbrowser opus: up {rates['upKbps']:.1f} kbit/s, down {rates['downKbps']:.1f} kbit/s (pcm16: 384); "
        f"encode {encode_ms:.2f} ms + decode {decode_ms:.2f} ms per packet + {OPUS_ALGORITHMIC_MS} ms "
        f"lookahead = {added_ms:.1f} ms added; playback.clear -> empty {stats['clearLatenciesMs'][0]:.1f} ms"
    )
    assert added_ms <= 30
    session_id = tab.js("assistantClient.sessionId")
    tab.button.click()
    tab.wait("assistantClient.state === 'idle'", 5)
    assert tab.console_errors == []
    # The server decoded the packets before the recording: the user's speech is on the left.
    tab.page.wait_for_timeout(700)
    recorded, _ = sf.read(server.record_dir / f"{session_id}.wav", dtype="float32", always_2d=True)
    assert np.abs(recorded[:, 0]).max() > 0.1


def test_without_webcodecs_the_page_falls_back_to_pcm(server, browser):  # noqa: F811
    tab = Page(browser, f"{server.http_url}/", init_script=NO_WEBCODECS)
    tab.wait("assistantClient.opusAvailable === false", 10)
    tab.button.click()
    tab.wait("assistantClient.state === 'listening'", 15)
    tab.page.wait_for_timeout(2500)
    assert tab.js("assistantClient.audioFormat") == "pcm16"
    assert tab.page.get_by_test_id("audio-format").inner_text() == "PCM 16-bit"
    rates = tab.js("assistantClient.bitrates()")
    rate_kbps = tab.js("assistantClient.wireRate") * 16 / 1000
    assert rates["downKbps"] > 0.8 * rate_kbps, rates
    tab.button.click()
    tab.wait("assistantClient.state === 'idle'", 5)
    assert tab.console_errors == []
