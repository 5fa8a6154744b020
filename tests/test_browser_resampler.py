"""web/resampler.js in Chromium: every rate pair the page meets keeps pitch and level, rejects
what would alias, and gives the same samples however the input is cut into chunks."""

from __future__ import annotations

import math

import pytest
from browser_utils import chromium_missing_reason
from test_browser import CONVERSATION_WAV, Page, browser, mic_wav  # noqa: F401

_missing = chromium_missing_reason()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(60),
    pytest.mark.skipif(_missing is not None, reason=f"browser tests need Chromium: {_missing}"),
    pytest.mark.skipif(not CONVERSATION_WAV.exists(), reason=f"test speech {CONVERSATION_WAV} is absent"),
]

# For a tone: SNR against the ideal tone at the output rate (edges skipped), the output length,
# and whether random chunking changed any sample.
MEASURE = """async ([from, to, hz]) => {
  const { Resampler } = await import("/resampler.js");
  const seconds = 1;
  const input = new Float32Array(from * seconds);
  for (let i = 0; i < input.length; i++) input[i] = 0.5 * Math.sin((2 * Math.PI * hz * i) / from);
  const whole = new Resampler(from, to).process(input);
  const chunked = new Resampler(from, to);
  const pieces = [];
  let seed = 7;
  for (let at = 0; at < input.length; ) {
    seed = (seed * 48271) % 2147483647;
    const n = 1 + (seed % 700);
    pieces.push(...chunked.process(input.subarray(at, at + n)));
    at += n;
  }
  const sameWhenChunked = pieces.length === whole.length && pieces.every((v, i) => v === whole[i]);
  let signal = 0, error = 0;
  for (let i = 200; i < whole.length - 200; i++) {
    const ideal = 0.5 * Math.sin((2 * Math.PI * hz * i) / to);
    signal += ideal * ideal;
    error += (whole[i] - ideal) ** 2;
  }
  return { snrDb: 10 * Math.log10(signal / error), length: whole.length, rms: Math.sqrt(signal / (whole.length - 400)),
           outRms: Math.sqrt(whole.slice(200, -200).reduce((s, v) => s + v * v, 0) / (whole.length - 400)), sameWhenChunked };
}"""

PAIRS = [(24000, 48000), (24000, 44100), (48000, 24000), (44100, 24000), (48000, 44100), (24000, 24000)]


@pytest.fixture
def tab(scripted_server, browser):  # noqa: F811
    return Page(browser, f"{scripted_server.http_url}/")


def test_tones_keep_pitch_and_level_at_every_rate_pair_and_chunking_changes_nothing(tab):
    for from_hz, to_hz in PAIRS:
        for tone_hz in (440, 3000, 9000):
            got = tab.page.evaluate(MEASURE, [from_hz, to_hz, tone_hz])
            where = f"{tone_hz} Hz, {from_hz} -> {to_hz}: {got}"
            assert got["sameWhenChunked"], where
            # Half the filter (16 taps at the lower rate) is still inside it, waiting for more input.
            assert to_hz - 40 <= got["length"] <= to_hz, where
            assert got["snrDb"] > 60, where
            assert abs(got["outRms"] / got["rms"] - 1) < 0.01, where


def test_what_the_lower_rate_cannot_hold_is_filtered_out_and_bad_rates_are_refused(tab):
    # A 15 kHz tone has no place at 24 kHz (Nyquist 12 kHz): it must vanish, not fold to 9 kHz.
    got = tab.page.evaluate(MEASURE, [48000, 24000, 15000])
    assert 20 * math.log10(got["outRms"] / got["rms"]) < -60, got
    refused = tab.page.evaluate(
        """async () => {
          const { Resampler } = await import("/resampler.js");
          try { new Resampler(24000, 0); return null; } catch (err) { return err.name; }
        }"""
    )
    assert refused == "RangeError"
