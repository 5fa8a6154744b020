// The page: settings, the start/stop button, captions, meters and readouts around AssistantClient.

import { AssistantClient, STATES } from "./client.js";

const STORAGE_KEY = "duplex-assistant.settings";
const DEFAULT_SETTINGS = { outputMode: "headphones", bargeIn: "model", token: "", instructions: "", voice: "" };

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
  notice.textContent = `The server said: ${e.detail.message ?? e.detail.code}`;
  notice.hidden = false;
});

// -- captions ----------------------------------------------------------------------------
const captions = $("#captions");
let assistantTurn = null; // {el, textEl, text}

function addTurn(who, atMs) {
  captions.querySelector(".captions-empty")?.remove();
  const el = document.createElement("div");
  el.className = `turn turn--${who}`;
  el.dataset.who = who;
  el.dataset.at = String(atMs ?? Number.MAX_SAFE_INTEGER);
  const label = document.createElement("span");
  label.className = "turn-who";
  label.textContent = who === "user" ? "You" : "Assistant";
  const textEl = document.createElement("p");
  textEl.className = "turn-text";
  el.append(label, textEl);
  // User captions arrive after the utterance ends, so place them by their start time.
  const later = [...captions.children].find((c) => Number(c.dataset.at) > Number(el.dataset.at));
  captions.insertBefore(el, later ?? null);
  return { el, textEl, text: "" };
}

function scrollCaptions() {
  captions.scrollTop = captions.scrollHeight;
}

function onAssistantText(event) {
  if (!assistantTurn) assistantTurn = addTurn("assistant", event.at_ms);
  assistantTurn.text += event.text;
  assistantTurn.textEl.textContent = assistantTurn.text.trimStart();
  scrollCaptions();
}

/** Strike through what the listener never heard, and close the turn. */
function onBargeIn(event) {
  const turn = assistantTurn ?? [...captions.querySelectorAll(".turn--assistant")].map((el) => ({ el })).at(-1);
  assistantTurn = null;
  if (!turn?.el) return;
  const textEl = turn.el.querySelector(".turn-text");
  const shown = textEl.textContent;
  const cut = (event.cut_text ?? "").trim();
  let heard = shown;
  let unheard = cut;
  const at = cut ? shown.lastIndexOf(cut) : -1;
  if (at >= 0 && shown.slice(at + cut.length).trim() === "") {
    heard = shown.slice(0, at);
    unheard = shown.slice(at);
  }
  textEl.textContent = heard;
  if (unheard) {
    const del = document.createElement("del");
    del.className = "cut";
    del.title = "Not heard: you interrupted";
    del.textContent = unheard;
    textEl.append(del);
  }
  const badge = document.createElement("span");
  badge.className = "turn-badge";
  badge.textContent = "interrupted";
  turn.el.querySelector(".turn-who").append(badge);
  turn.el.classList.add("turn--cut");
  scrollCaptions();
}

client.addEventListener("event", (e) => {
  const event = e.detail;
  switch (event.type) {
    case "session.ready":
      assistantTurn = null;
      break;
    case "input.speech_started":
      // Whatever the assistant says after the user spoke is a new turn, even without a barge-in.
      if (assistantTurn?.text.trim()) assistantTurn = null;
      break;
    case "assistant.text":
      onAssistantText(event);
      break;
    case "barge_in":
      onBargeIn(event);
      break;
    case "user.transcript": {
      if (!event.text?.trim()) break;
      const turn = addTurn("user", event.start_ms);
      turn.textEl.textContent = event.text.trim();
      scrollCaptions();
      break;
    }
    default:
      break;
  }
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
const kbpsUpEl = $('[data-testid="kbps-up"]');
const kbpsDownEl = $('[data-testid="kbps-down"]');
const FORMAT_NAMES = { opus: "Opus (WebCodecs)", pcm16: "PCM 16-bit" };

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
  latencyEl.textContent = stats.lastLatencyMs === null ? "–" : String(stats.lastLatencyMs);
  bufferEl.textContent = client.live ? String(Math.round(stats.bufferedMs)) : "–";
  underrunsEl.textContent = String(stats.underruns);
  const { upKbps, downKbps } = client.bitrates();
  formatEl.textContent = client.live && client.audioFormat ? FORMAT_NAMES[client.audioFormat] : "–";
  kbpsUpEl.textContent = client.live && upKbps !== null ? upKbps.toFixed(1) : "–";
  kbpsDownEl.textContent = client.live && downKbps !== null ? downKbps.toFixed(1) : "–";
  requestAnimationFrame(draw);
}

// -- leaving the page --------------------------------------------------------------------
// pagehide (not unload) also fires when the page goes into the back/forward cache.
window.addEventListener("pagehide", () => client.endNow());

renderState();
requestAnimationFrame(draw);
