"""Helpers for the real-browser tests: headless Debian Chromium with a WAV file as the microphone."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

CHROMIUM = Path("/usr/bin/chromium")
AUDIO_DIR = Path(__file__).resolve().parent / "data" / "speech"
# Chromium's fake capture device runs at 44.1 kHz whatever the file says.
FAKE_MIC_RATE_HZ = 44_100


def chromium_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install -e '.[dev]')"
    return None


def fake_mic_wav(source: Path, dest: Path, lead_silence_s: float = 0.5, tail_silence_s: float = 0.0) -> Path:
    """Write `source` as a 16-bit PCM mono WAV at 44.1 kHz with silence around it.

    Chromium only plays 16-bit PCM files (24-bit ones capture zeros) and starts capturing at a
    point that varies by tens of ms, so the speech starts after a short silence.
    """
    pcm, rate = sf.read(source, dtype="float32", always_2d=True)
    mono = pcm.mean(axis=1)
    if rate != FAKE_MIC_RATE_HZ:
        mono = soxr.resample(mono, rate, FAKE_MIC_RATE_HZ)
    lead = np.zeros(round(lead_silence_s * FAKE_MIC_RATE_HZ), dtype=np.float32)
    tail = np.zeros(round(tail_silence_s * FAKE_MIC_RATE_HZ), dtype=np.float32)
    sf.write(dest, np.concatenate([lead, mono, tail]), FAKE_MIC_RATE_HZ, subtype="PCM_16")
    return dest


def chromium_args(fake_mic: Path) -> list[str]:
    """Launch flags: headless, no network side traffic, auto-granted fake microphone playing `fake_mic`."""
    return [
        "--no-sandbox",
        "--headless",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_mic}%noloop",
    ]


@contextlib.contextmanager
def launched_chromium(fake_mic: Path) -> Iterator:
    """A headless Chromium (playwright Browser) whose microphone plays `fake_mic` once."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=chromium_args(fake_mic), headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


# An init script: records what reaches each AudioContext's destination (see `playback_tap`).
_TAP = """
window.__tap = {chunks: [], rate: 0, lastLoud: 0, buffered: [], handed: []};
(() => {
  const forcedRate = %(rate)d;
  if (forcedRate) {
    const NativeContext = window.AudioContext;
    window.AudioContext = class extends NativeContext {
      constructor(options = {}) { super({...options, sampleRate: forcedRate}); }
    };
  }
  const recorder = `registerProcessor("tap-recorder", class extends AudioWorkletProcessor {
    constructor() { super(); this.block = new Float32Array(4096); this.filled = 0; }
    process(inputs) {
      const input = inputs[0][0];
      if (!input) return true;
      this.block.set(input, this.filled);
      this.filled += input.length;
      if (this.filled + 128 > this.block.length) {
        this.port.postMessage(this.block.slice(0, this.filled));
        this.filled = 0;
      }
      return true;
    }
  });`;
  const moduleUrl = URL.createObjectURL(new Blob([recorder], {type: "text/javascript"}));
  const addModule = AudioWorklet.prototype.addModule;
  const loaded = new WeakSet();
  AudioWorklet.prototype.addModule = async function (url, options) {
    await addModule.call(this, url, options);
    if (!loaded.has(this)) {
      loaded.add(this);
      await addModule.call(this, moduleUrl);
    }
  };
  const taps = new WeakMap();
  const connect = AudioNode.prototype.connect;
  AudioNode.prototype.connect = function (destination, ...rest) {
    const result = connect.call(this, destination, ...rest);
    if (destination instanceof AudioDestinationNode) {
      const context = destination.context;
      let tap = taps.get(context);
      if (!tap) {
        tap = new AudioWorkletNode(context, "tap-recorder", {
          numberOfInputs: 1, numberOfOutputs: 0, channelCount: 1, channelCountMode: "explicit",
        });
        taps.set(context, tap);
        window.__tap.rate = context.sampleRate;
        tap.port.onmessage = (e) => {
          window.__tap.chunks.push(e.data);
          let peak = 0;
          for (const v of e.data) peak = Math.max(peak, Math.abs(v));
          if (peak > 0.01) window.__tap.lastLoud = performance.now();
        };
      }
      connect.call(this, tap);
    }
    return result;
  };
  // When each piece of the assistant's audio is handed to the playout buffer, and how long it is:
  // what the audio thread is given, whatever came before it (server, network, decoder, page).
  const postMessage = MessagePort.prototype.postMessage;
  MessagePort.prototype.postMessage = function (message, ...rest) {
    if (message?.type === "audio" && message.samples instanceof ArrayBuffer && message.rate) {
      window.__tap.handed.push([performance.now(), (message.samples.byteLength / 4 / message.rate) * 1000]);
    }
    return postMessage.call(this, message, ...rest);
  };
  setInterval(() => {
    const client = window.assistantClient;
    if (client?.live && client.stats.readyAt !== null) {
      window.__tap.buffered.push([(performance.now() - client.stats.readyAt) / 1000, client.stats.bufferedMs]);
    }
  }, 20);
})();
"""

# The tap's recording as base64 int16, so a few MB cross the DevTools protocol quickly.
_TAP_PCM = """() => {
  const all = new Int16Array(window.__tap.chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const chunk of window.__tap.chunks) {
    for (let i = 0; i < chunk.length; i++) all[at++] = Math.max(-32768, Math.min(32767, Math.round(chunk[i] * 32767)));
  }
  const bytes = new Uint8Array(all.buffer);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}"""


def playback_tap(context_rate: int = 0) -> str:
    """An init script that records everything the page sends to its speakers: each node connected
    to an AudioContext's destination is also connected to a recording AudioWorklet (the page is
    not changed). With `context_rate` every AudioContext runs at that rate, whatever the page asks.
    `window.__tap`: `rate`, `lastLoud` (performance.now() of the last chunk above 0.01), and
    `buffered`: [seconds since session.ready, the playout buffer's ms] every 20 ms; `handed`:
    [performance.now(), ms of audio] for each piece of audio the page hands its playout buffer."""
    return _TAP % {"rate": context_rate}


def tapped_audio(page) -> tuple[np.ndarray, int]:
    """What the page has played so far (float32 mono) and its rate, from `playback_tap`."""
    pcm = np.frombuffer(base64.b64decode(page.evaluate(_TAP_PCM)), dtype=np.int16)
    return pcm.astype(np.float32) / 32767, page.evaluate("window.__tap.rate")
