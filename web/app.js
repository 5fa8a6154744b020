// The page: settings, the start/stop button, mute, volume, devices, captions, meters and
// readouts around AssistantClient.

import { speakerChoiceSupported } from "./audio-graph.js";
import { Captions } from "./captions.js";
import { AssistantClient, STATES } from "./client.js";
import { devicePicker } from "./devices.js";
import { ImagePanel } from "./images.js";

const STORAGE_KEY = "duplex-assistant.settings";
const DEFAULT_SETTINGS = {
  outputMode: "headphones",
  bargeIn: "model",
  token: "",
  instructions: "",
  voice: "",
  micId: "",
  speakerId: "",
  volume: 1,
};
// Backends that answer without a speech model (docs: README, "Models").
const DEMO_BACKENDS = ["scripted", "silence"];

function loadSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "{}") ?? {};
  } catch {
    saved = {}; // unreadable or blocked storage: start from the defaults
  }
  const settings = { ...DEFAULT_SETTINGS, ...saved };
  if (!["headphones", "speakers"].includes(settings.outputMode)) settings.outputMode = "headphones";
  if (!["model", "vad"].includes(settings.bargeIn)) settings.bargeIn = "model";
  if (typeof settings.instructions !== "string") settings.instructions = "";
  if (typeof settings.voice !== "string") settings.voice = "";
  for (const key of ["micId", "speakerId"]) if (typeof settings[key] !== "string") settings[key] = "";
  if (!(settings.volume >= 0 && settings.volume <= 1)) settings.volume = 1;
  delete settings.takesPrompts; // learnt from the server on every visit, never remembered
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    settings.token = params.get("token");
    // Keep the secret out of the address bar, history and shared screenshots.
    params.delete("token");
    const query = params.toString();
    history.replaceState(null, "", `${location.pathname}${query ? `?${query}` : ""}${location.hash}`);
  }
  return settings;
}

function saveSettings(settings) {
  try {
    const { takesPrompts, ...kept } = settings;
    localStorage.setItem(STORAGE_KEY, JSON.stringify(kept));
  } catch {
    // Private modes may refuse storage; the choices still hold for this visit.
  }
}

const $ = (selector) => document.querySelector(selector);
const settings = loadSettings();
saveSettings(settings);
const client = new AssistantClient(settings);
window.assistantClient = client;

// -- settings form -----------------------------------------------------------------------
const form = $("#settings");
form.elements.outputMode.value = settings.outputMode;
form.elements.bargeIn.value = settings.bargeIn;
form.elements.token.value = settings.token;
form.elements.instructions.value = settings.instructions;
form.addEventListener("submit", (e) => e.preventDefault());
form.addEventListener("change", (e) => {
  const { name, value } = e.target;
  if (name === "outputMode") client.setOutputMode(value);
  else if (name === "bargeIn") client.setBargeIn(value);
  else if (name === "micId") client.setMicrophone(value);
  else if (name === "speakerId") client.setSpeaker(value);
  else if (name === "token") settings.token = value;
  else if (name === "instructions" || name === "voice") settings[name] = value;
  saveSettings(settings);
});
form.elements.instructions.addEventListener("input", (e) => {
  settings.instructions = e.target.value;
  saveSettings(settings);
});

// -- persona and voice: shown when the server's model takes prompts ----------------------
async function loadVoices() {
  let voices;
  try {
    const response = await fetch("/v1/voices", { cache: "no-store" });
    if (!response.ok) return;
    voices = await response.json();
  } catch {
    return; // an older server, or none: the page works without persona settings
  }
  if (!voices.takes_prompts) return;
  settings.takesPrompts = true;
  const select = form.elements.voice;
  const ids = (voices.data ?? []).map((v) => v.id);
  const first = document.createElement("option");
  first.value = "";
  // Presets (.pt) by their name, as the model card lists them; a sample file keeps its suffix.
  const label = (id) => id.replace(/\.pt$/, "");
  first.textContent = voices.default ? `Model default (${label(voices.default)})` : "Model default";
  select.append(first);
  for (const id of ids) {
    const option = document.createElement("option");
    option.value = id;
    option.textContent = label(id);
    select.append(option);
  }
  select.value = ids.includes(settings.voice) ? settings.voice : "";
  settings.voice = select.value;
  $("#persona").hidden = false;
}
loadVoices();
form.elements.token.addEventListener("input", (e) => {
  settings.token = e.target.value;
  saveSettings(settings);
});

// -- devices -----------------------------------------------------------------------------
const refreshMicrophones = devicePicker(form.elements.micId, "audioinput", () => settings.micId);
const speakerField = $('[data-testid="speaker-field"]');
speakerField.hidden = !speakerChoiceSupported; // no way to choose: the system's output it is
const refreshSpeakers = speakerChoiceSupported
  ? devicePicker(form.elements.speakerId, "audiooutput", () => settings.speakerId)
  : () => {};

// -- what the assistant sees: shown when the server's model takes images -----------------
const imagePanel = new ImagePanel($('[data-testid="image-panel"]'), client);

// -- what the page is talking to -----------------------------------------------------------
const serverInfo = $('[data-testid="server-info"]');
async function showServer() {
  let health;
  try {
    // With --protect-metrics the model's name is shown to token holders only.
    const token = settings.token.trim();
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch("/healthz", { cache: "no-store", headers });
    health = await response.json();
  } catch {
    return; // unreachable: Start says so, with what to do
  }
  imagePanel.setAvailable(health.takes_images === true);
  if (!health.backend) {
    serverInfo.hidden = true; // figures withheld: a protected server, and no token or a wrong one
    return;
  }
  const demo = DEMO_BACKENDS.includes(health.backend);
  serverInfo.textContent = demo
    ? "Demo mode: no speech model on this server (see README: Models)"
    : `Model: ${health.model || "unnamed"} · ${health.backend} backend`;
  serverInfo.dataset.demo = String(demo);
  serverInfo.hidden = false;
}
showServer();

// -- button and state --------------------------------------------------------------------
const toggle = $("#toggle");
const toggleLabel = toggle.querySelector(".toggle-label");
const stateBox = $('[data-testid="state"]');
const stateText = stateBox.querySelector(".status-text");
const hint = $("#toggle-hint");
const HINT_IDLE = hint.textContent.trim();
const HINT_LIVE = "Talk any time, even over the assistant. Press Stop to end.";

toggle.addEventListener("click", () => {
  if (client.state === "stopping") return;
  if (client.live) client.stop();
  else {
    clearError();
    client.start();
    showServer(); // it may have been restarted with another model since the page loaded
  }
});

function renderState() {
  const { state } = client;
  stateBox.dataset.state = state;
  stateText.textContent = STATES[state] ?? state;
  const live = client.live;
  toggle.dataset.action = live ? "stop" : "start";
  toggleLabel.textContent = live ? "Stop" : "Start conversation";
  // aria-disabled rather than disabled: a disabled button would drop the keyboard focus.
  toggle.setAttribute("aria-disabled", String(state === "stopping"));
  hint.textContent = live ? HINT_LIVE : HINT_IDLE;
}
client.addEventListener("statechange", renderState);

// -- mute and volume ---------------------------------------------------------------------
const mute = $("#mute");
const mutedTag = $(".muted-tag");
mute.addEventListener("click", () => {
  const muted = mute.getAttribute("aria-pressed") !== "true";
  mute.setAttribute("aria-pressed", String(muted));
  mutedTag.hidden = !muted;
  client.setMuted(muted);
});
const volume = $("#volume");
volume.value = String(Math.round(settings.volume * 100));
function showVolume() {
  volume.setAttribute("aria-valuetext", `${volume.value} percent`);
}
volume.addEventListener("input", () => {
  client.setVolume(Number(volume.value) / 100);
  showVolume();
  saveSettings(settings);
});
showVolume();

// -- errors ------------------------------------------------------------------------------
const alertBox = $('[data-testid="error"]');
const notice = $('[data-testid="notice"]');
function clearError() {
  alertBox.hidden = true;
  notice.hidden = true;
}
client.addEventListener("error", (e) => {
  alertBox.querySelector(".alert-title").textContent = e.detail.message;
  alertBox.querySelector(".alert-action").textContent = e.detail.action;
  alertBox.dataset.code = e.detail.code;
  alertBox.hidden = false;
  // Put the keyboard where the fix is: the token field for a refused token, else the button.
  if (e.detail.code === "auth") form.elements.token.focus();
  else toggle.focus();
});
client.addEventListener("notice", (e) => {
  const text = e.detail.message ?? e.detail.code;
  notice.textContent = e.detail.local ? text : `The server said: ${text}`;
  notice.hidden = false;
});

// -- captions and history --------------------------------------------------------------
const captions = new Captions($("#captions"));
const clearHistory = $("#clear-history");
client.addEventListener("event", (e) => {
  captions.onEvent(e.detail);
  clearHistory.disabled = captions.empty;
  if (e.detail.type === "session.ready") {
    // The browser names the devices once the microphone is allowed.
    refreshMicrophones();
    refreshSpeakers();
  }
});
clearHistory.addEventListener("click", () => {
  captions.clear();
  clearHistory.disabled = true;
  $("#captions").focus(); // the button is disabled now, and would drop the keyboard focus
});

// -- meters and readouts -----------------------------------------------------------------
const meters = {
  mic: { el: $('[data-testid="mic-meter"]'), target: 0, shown: 0 },
  assistant: { el: $('[data-testid="assistant-meter"]'), target: 0, shown: 0 },
};
const latencyEl = $('[data-testid="latency"]');
const bufferEl = $('[data-testid="buffer"]');
const underrunsEl = $('[data-testid="underruns"]');
const formatEl = $('[data-testid="audio-format"]');
const ratesEl = $(".wire .rates");
const kbpsUpEl = $('[data-testid="kbps-up"]');
const kbpsDownEl = $('[data-testid="kbps-down"]');
const timerEl = $('[data-testid="timer"]');
const FORMAT_NAMES = { opus: "Opus (WebCodecs)", pcm16: "PCM 16-bit" };

/** A number with its unit, or words (and no unit) when there is no number. */
function showReadout(el, value, words) {
  setText(el, value === null ? words : String(value));
  el.nextElementSibling.hidden = value === null;
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text; // unchanged text: no work for screen readers
}

function clock(ms) {
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600);
  const mm = String(Math.floor(s / 60) % 60);
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${mm.padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
}

/** The conversation's length: running while live, its final length after Stop. */
function showTimer(stats) {
  if (stats.readyAt === null) {
    timerEl.hidden = true;
    return;
  }
  const length = clock((stats.endedAt ?? performance.now()) - stats.readyAt);
  setText(timerEl, stats.endedAt === null ? length : `lasted ${length}`);
  timerEl.hidden = false;
}

/** RMS in [0, 1] -> meter position in [0, 1] over a 60 dB range. */
function meterLevel(rms) {
  if (!(rms > 0)) return 0;
  return Math.min(1, Math.max(0, (20 * Math.log10(rms) + 60) / 60));
}

client.addEventListener("levels", (e) => {
  for (const [name, rms] of Object.entries(e.detail)) meters[name].target = meterLevel(rms);
});

function draw() {
  for (const meter of Object.values(meters)) {
    if (!client.live) meter.target = 0;
    // Fast attack, slow release: easy to read, no flicker.
    const rate = meter.target > meter.shown ? 0.6 : 0.12;
    meter.shown += (meter.target - meter.shown) * rate;
    const percent = Math.round(meter.shown * 100);
    meter.el.style.setProperty("--level", String(meter.shown));
    if (meter.el.getAttribute("aria-valuenow") !== String(percent)) {
      meter.el.setAttribute("aria-valuenow", String(percent));
    }
  }
  const { stats } = client;
  const ready = client.live && stats.readyAt !== null;
  showReadout(latencyEl, stats.lastLatencyMs, "none yet");
  showReadout(bufferEl, ready ? Math.round(stats.bufferedMs) : null, client.live ? "starting" : "not connected");
  setText(underrunsEl, String(stats.underruns));
  const { upKbps, downKbps } = client.bitrates();
  setText(formatEl, ready && client.audioFormat ? FORMAT_NAMES[client.audioFormat] : "not connected");
  ratesEl.hidden = !ready || upKbps === null;
  if (!ratesEl.hidden) {
    setText(kbpsUpEl, upKbps.toFixed(1));
    setText(kbpsDownEl, downKbps.toFixed(1));
  }
  showTimer(stats);
  requestAnimationFrame(draw);
}

// -- leaving the page --------------------------------------------------------------------
// pagehide (not unload) also fires when the page goes into the back/forward cache.
window.addEventListener("pagehide", () => client.endNow());

renderState();
requestAnimationFrame(draw);
