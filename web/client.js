// The conversation client: microphone -> websocket -> playout buffer, no DOM.
//
// One AssistantClient per page. `start()` asks for the microphone, opens the audio graph and
// the websocket (native protocol, docs/protocol.md); the conversation runs until `stop()`, an
// error, or the server ends it. It never reconnects by itself: the user presses Start again.
// It emits "statechange", "event" (every server JSON event), "levels", "stats", "notice" (a
// refused request the session survives) and "error" (the conversation ended with a UserError).
// Audio goes as Opus (web/opus-link.js) when the browser's WebCodecs can code it, else as PCM16,
// at 24 kHz either way; the audio graph (web/audio-graph.js) converts to and from the device's rate.

import { AudioGraph } from "./audio-graph.js";
import { ERRORS, UserError, diagnoseHandshakeFailure, microphoneError } from "./errors.js";
import { OPUS_RATE, OpusLink, opusSupported } from "./opus-link.js";

// The model's own rate (and Opus' on this protocol): the server resamples nothing.
const WIRE_RATE = OPUS_RATE;
const CHUNK_MS = 20; // capture chunk: small enough for low latency, big enough for few frames
const PLAYOUT_TARGET_MS = 100;
const POSITION_EVERY_MS = 200;
const CONNECT_TIMEOUT_MS = 10_000;
const END_WAIT_MS = 1500;
// More than this much unsent audio means the network cannot keep up: drop rather than lag.
const MAX_SEND_BACKLOG_BYTES = 96_000;
const INTERRUPTED_HOLD_MS = 1500;

export const STATES = {
  idle: "Ready",
  connecting: "Connecting…",
  listening: "Listening",
  userSpeaking: "Listening – waiting for you to pause",
  speaking: "Assistant speaking",
  interrupted: "You interrupted",
  stopping: "Ending…",
};

export class AssistantClient extends EventTarget {
  constructor(settings) {
    super();
    // {outputMode: "headphones"|"speakers", bargeIn: "model"|"vad", token, micId, speakerId, volume}
    this.settings = settings;
    this.state = "idle";
    this.stateHistory = [];
    this.error = null;
    this.sessionId = null;
    this.serverOptions = null; // the session's options as the server last confirmed them
    this.sampleRate = null; // the AudioContext's (the device's) rate
    this.wireRate = WIRE_RATE; // the rate of the audio on the websocket, both ways
    this.muted = false;
    this.audioFormat = null; // "opus" or "pcm16": what the live session's binary frames carry
    this.opusAvailable = null; // known long before a click, so the audio graph is made at the right rate
    opusSupported().then((ok) => {
      this.opusAvailable = ok;
    });
    this.stats = AssistantClient.freshStats();
    this.serverStats = null;
    this.run = null; // everything owned by the current conversation
    this.assistantSpeaking = false;
    this.userSpeaking = false;
    this.interruptedTimer = null;
  }

  static freshStats() {
    return {
      framesSent: 0,
      framesReceived: 0,
      samplesPlayed: 0,
      samplesDropped: 0,
      underruns: 0,
      bufferedMs: 0,
      lastLatencyMs: null,
      responseGapMs: null,
      replyWaitMs: null,
      serverOverheadMs: null,
      clears: 0,
      lastClearMs: null,
      clearLatenciesMs: [],
      sendDrops: 0,
      bytesSent: 0,
      bytesReceived: 0,
      readyAt: null,
      endedAt: null,
      encodeMs: [],
      decodeMs: [],
    };
  }

  /** Measured audio bitrates since session.ready, kbit/s (websocket payload, audio only). */
  bitrates() {
    const s = (performance.now() - (this.stats.readyAt ?? performance.now())) / 1000;
    if (s < 0.5) return { upKbps: null, downKbps: null };
    return { upKbps: (this.stats.bytesSent * 8) / 1000 / s, downKbps: (this.stats.bytesReceived * 8) / 1000 / s };
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.stateHistory.push({ state, t: performance.now() });
    this.dispatchEvent(new CustomEvent("statechange", { detail: { state } }));
  }

  get live() {
    return this.run !== null;
  }

  async start() {
    if (this.run) return;
    const run = { ws: null, ready: false, opened: false, userStopped: false, serverRate: WIRE_RATE };
    this.run = run;
    this.assistantSpeaking = false;
    this.userSpeaking = false;
    this.error = null;
    this.stats = AssistantClient.freshStats();
    this.serverStats = null;
    this.setState("connecting");
    try {
      await this.openAudio(run);
      if (this.run !== run) return;
      this.connect(run);
    } catch (err) {
      this.fail(run, err instanceof UserError ? err : ERRORS.audioFailed(err));
    }
  }

  async openAudio(run) {
    if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) throw ERRORS.insecure();
    if (typeof AudioWorkletNode === "undefined") throw ERRORS.unsupported();
    run.audioFormat = this.opusAvailable ? "opus" : "pcm16";
    // Created before any await, inside the click: some browsers only let audio start there.
    run.graph = new AudioGraph({
      wireRate: WIRE_RATE,
      chunkMs: CHUNK_MS,
      targetMs: PLAYOUT_TARGET_MS,
      outputMode: this.settings.outputMode,
      micId: this.settings.micId,
      speakerId: this.settings.speakerId,
      muted: this.muted,
      volume: this.settings.volume,
      onChunk: (chunk) => this.onCaptureChunk(run, chunk),
      onPlayback: (message) => this.onPlaybackMessage(run, message),
    });
    await run.graph.open();
    this.sampleRate = run.graph.sampleRate;
  }

  wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}${this.wsPath()}`;
  }

  wsPath() {
    const token = this.settings.token?.trim();
    return token ? `/ws?token=${encodeURIComponent(token)}` : "/ws";
  }

  connect(run) {
    const ws = new WebSocket(this.wsUrl());
    ws.binaryType = "arraybuffer";
    run.ws = ws;
    run.connectTimer = setTimeout(() => {
      if (!run.opened) this.fail(run, ERRORS.unreachable(location.host));
    }, CONNECT_TIMEOUT_MS);
    ws.onopen = () => {
      run.opened = true;
      clearTimeout(run.connectTimer);
      ws.send(
        JSON.stringify({
          type: "session.start",
          sample_rate: WIRE_RATE,
          ...(run.audioFormat === "opus" ? { audio_format: "opus" } : {}),
          barge_in: this.settings.bargeIn,
          captions: true,
          ...this.promptOptions(),
        }),
      );
    };
    ws.onmessage = (e) => {
      if (this.run !== run) return;
      // e.timeStamp: when the message arrived, on the same clock as performance.now().
      if (typeof e.data === "string") this.onServerEvent(run, e.data, e.timeStamp || performance.now());
      else this.onServerAudio(run, e.data);
    };
    ws.onclose = (e) => this.onClose(run, e);
  }

  onServerAudio(run, data) {
    this.stats.framesReceived += 1;
    this.stats.bytesReceived += data.byteLength;
    if (run.opus) run.opus.decode(data);
    else run.graph.play(pcm16ToFloat(data), run.serverRate);
  }

  /** The session's codec, once session.ready confirmed the format. */
  startOpus(run) {
    run.opus = new OpusLink({
      onPacket: (packet) => this.sendAudio(run, packet),
      onAudio: (samples, rate) => this.run === run && run.graph.play(samples, rate),
      onError: (err) => this.notice("opus", String(err)),
    });
    this.stats.encodeMs = run.opus.encodeMs;
    this.stats.decodeMs = run.opus.decodeMs;
  }

  onServerEvent(run, text, receivedAt) {
    let event;
    try {
      event = JSON.parse(text);
    } catch {
      return; // the server only sends JSON text; anything else is not ours to act on
    }
    switch (event.type) {
      case "session.ready":
        run.ready = true;
        this.sessionId = event.session_id;
        this.serverOptions = event.options ?? null;
        this.audioFormat = event.audio_format ?? "pcm16";
        run.serverRate = event.sample_rate ?? WIRE_RATE; // the rate of its PCM16 frames
        if (this.audioFormat === "opus") this.startOpus(run);
        this.stats.readyAt = performance.now();
        run.positionTimer = setInterval(() => this.sendPosition(run), POSITION_EVERY_MS);
        this.setState("listening");
        break;
      case "input.speech_started":
        this.userSpeaking = true;
        this.showTurn();
        break;
      case "input.speech_stopped":
        this.userSpeaking = false;
        this.showTurn();
        break;
      case "session.updated":
        this.serverOptions = event.options ?? null;
        break;
      case "assistant.speech_started":
        // The playhead will reach at_ms when the first reply sample plays: see onPlaybackMessage.
        run.pendingReply = { atMs: event.at_ms, arrivedAt: receivedAt };
        this.assistantSpeaking = true;
        this.showTurn();
        break;
      case "assistant.speech_stopped":
        this.assistantSpeaking = false;
        this.showTurn();
        break;
      case "playback.clear":
        this.clearPlayback(run, receivedAt);
        break;
      case "barge_in":
        this.showInterrupted();
        break;
      case "stats":
        this.onServerStats(run, event);
        break;
      case "error":
        if (!run.ready) {
          this.fail(run, ERRORS.refusedStart(event.message ?? event.code));
          return;
        }
        this.dispatchEvent(new CustomEvent("notice", { detail: event }));
        break;
      case "session.ended":
        run.endReason = event.reason ?? "ended";
        break;
      default:
        break;
    }
    this.dispatchEvent(new CustomEvent("event", { detail: event }));
  }

  /** Drop all queued playback; the worklet's answer tells how long emptying the buffer took. */
  clearPlayback(run, receivedAt) {
    this.stats.clears += 1;
    run.clearSentAt ??= new Map();
    const id = this.stats.clears;
    run.clearSentAt.set(id, receivedAt);
    run.opus?.clear();
    run.graph.clear(id);
  }

  /** Something went wrong that the conversation survives (shown, not fatal). */
  notice(code, message) {
    this.dispatchEvent(new CustomEvent("notice", { detail: { code, message, local: true } }));
  }

  /** Whose turn it is, unless "You interrupted" is still on show or the session is ending. */
  showTurn() {
    if (!["listening", "userSpeaking", "speaking"].includes(this.state)) return;
    this.setState(this.assistantSpeaking ? "speaking" : this.userSpeaking ? "userSpeaking" : "listening");
  }

  showInterrupted() {
    this.setState("interrupted");
    clearTimeout(this.interruptedTimer);
    this.interruptedTimer = setTimeout(() => {
      if (this.state !== "interrupted") return;
      this.setState("listening");
      this.showTurn();
    }, INTERRUPTED_HOLD_MS);
  }

  onServerStats(run, event) {
    this.serverStats = event;
    if (typeof event.response_gap_ms === "number") {
      this.stats.responseGapMs = event.response_gap_ms;
      this.stats.serverOverheadMs = event.server_overhead_ms ?? null;
      // End to end = capture chunking + server (last voiced sample -> first reply sample sent)
      // + from its arrival here until it left the speakers (playout buffer and audio device).
      // Network time is not measured; on loopback or a LAN it is small next to these.
      const pageMs = run.replyWaitMs ?? this.stats.bufferedMs;
      this.stats.lastLatencyMs = Math.round(CHUNK_MS + event.response_gap_ms + pageMs);
    }
    this.dispatchEvent(new CustomEvent("stats", { detail: this.stats }));
  }

  onCaptureChunk(run, message) {
    if (message.type !== "chunk") return;
    this.dispatchEvent(new CustomEvent("levels", { detail: { mic: message.rms } }));
    const ws = run.ws;
    if (!run.ready || ws?.readyState !== WebSocket.OPEN) return;
    if (ws.bufferedAmount > MAX_SEND_BACKLOG_BYTES) {
      this.stats.sendDrops += 1;
      return;
    }
    if (run.opus) run.opus.encode(new Int16Array(message.pcm));
    else this.sendAudio(run, message.pcm);
  }

  sendAudio(run, data) {
    if (this.run !== run || run.ws?.readyState !== WebSocket.OPEN) return;
    run.ws.send(data);
    this.stats.framesSent += 1;
    this.stats.bytesSent += data.byteLength;
  }

  onPlaybackMessage(run, message) {
    const rate = this.sampleRate;
    this.stats.samplesPlayed = message.samplesPlayed;
    this.stats.samplesDropped = message.samplesDropped;
    this.stats.underruns = message.underruns;
    this.stats.bufferedMs = (message.bufferedSamples / rate) * 1000;
    const reply = run.pendingReply;
    const positionMs = this.playedMs();
    if (reply && positionMs >= reply.atMs) {
      // The playhead passed the reply's first sample (positionMs - atMs) ago; the device adds its own.
      const playedAt = performance.now() - (positionMs - reply.atMs);
      const { context } = run.graph;
      const deviceMs = ((context.baseLatency || 0) + (context.outputLatency || 0)) * 1000;
      run.replyWaitMs = Math.max(0, playedAt - reply.arrivedAt) + deviceMs;
      this.stats.replyWaitMs = run.replyWaitMs;
      run.pendingReply = null;
    }
    if (message.type === "cleared") {
      const sentAt = run.clearSentAt?.get(message.id);
      if (sentAt !== undefined) {
        this.stats.lastClearMs = performance.now() - sentAt;
        this.stats.clearLatenciesMs.push(this.stats.lastClearMs);
        run.clearSentAt.delete(message.id);
      }
    } else if (message.type === "report") {
      this.dispatchEvent(new CustomEvent("levels", { detail: { assistant: message.rms } }));
    }
  }

  /**
   * Playhead on the server's output timeline: played, cleared and dropped samples all move it,
   * so the server can line it up with the `at_ms` of what it sent (what was heard vs cut).
   */
  playedMs() {
    if (!this.sampleRate) return 0;
    return ((this.stats.samplesPlayed + this.stats.samplesDropped) / this.sampleRate) * 1000;
  }

  sendPosition(run) {
    if (run.ws?.readyState !== WebSocket.OPEN) return;
    run.ws.send(JSON.stringify({ type: "playback.position", played_ms: Math.round(this.playedMs()) }));
  }

  /** What the browser applied to the microphone (echoCancellation etc.), or null when not live. */
  micSettings() {
    return this.run?.graph?.micSettings() ?? null;
  }

  /** The persona and voice for session.start, when the server's model takes prompts and they are set. */
  promptOptions() {
    if (!this.settings.takesPrompts) return {};
    const options = {};
    const instructions = (this.settings.instructions ?? "").trim();
    if (instructions) options.instructions = instructions;
    if (this.settings.voice) options.voice = this.settings.voice;
    return options;
  }

  /**
   * Show the model an image (a data URL of a JPEG, PNG or WebP, or its base64), or none (null).
   * False when no conversation is ready to take it; the server answers `session.image.updated`.
   */
  sendImage(data) {
    const ws = this.run?.ws;
    if (!this.run?.ready || ws?.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify({ type: "session.image", data }));
    return true;
  }

  /** Change the barge-in policy; a live session is updated at once. */
  setBargeIn(policy) {
    this.settings.bargeIn = policy;
    const ws = this.run?.ws;
    if (this.run?.ready && ws?.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "session.update", barge_in: policy }));
    }
  }

  /** Switch the microphone's processing for headphones or speakers, live when the browser can. */
  async setOutputMode(mode) {
    this.settings.outputMode = mode;
    await this.run?.graph?.setProcessing(mode);
  }

  /** Microphone off (silence goes to the server, the session stays) or back on. */
  setMuted(muted) {
    this.muted = muted;
    this.run?.graph?.setMuted(muted);
  }

  /** Output volume in [0, 1]. */
  setVolume(volume) {
    this.settings.volume = volume;
    this.run?.graph?.setVolume(volume);
  }

  /** Use another microphone ("" = the system's default); a live conversation switches at once. */
  async setMicrophone(deviceId) {
    this.settings.micId = deviceId;
    const graph = this.run?.graph;
    if (!graph?.source) return;
    try {
      await graph.setMicrophone(this.settings.outputMode, deviceId);
    } catch (err) {
      this.notice("microphone", microphoneError(err).message);
    }
  }

  /** Play through another output device ("" = the system's default), at once when live. */
  async setSpeaker(deviceId) {
    this.settings.speakerId = deviceId;
    try {
      await this.run?.graph?.setSpeaker(deviceId);
    } catch (err) {
      this.notice("speaker", `The speaker could not be used: ${err.message ?? err}`);
    }
  }

  async onClose(run, event) {
    if (this.run !== run) return;
    clearTimeout(run.connectTimer);
    if (run.userStopped) {
      this.finish(run, null);
      return;
    }
    let error;
    if (!run.opened) {
      error = await diagnoseHandshakeFailure(this.wsPath(), location.host);
    } else if (event.code === 1013) {
      error = ERRORS.full(event.reason);
    } else if (run.endReason) {
      error = /shut ?down/i.test(run.endReason) ? ERRORS.serverStopped() : ERRORS.ended(run.endReason);
    } else if (event.code === 1001 || event.code === 1012) {
      error = ERRORS.serverStopped();
    } else if (event.code === 1011) {
      error = ERRORS.serverError(event.reason);
    } else if (event.code === 1008 || event.code === 1009) {
      error = ERRORS.policy(event.reason);
    } else if (event.code === 1006) {
      error = ERRORS.lost();
    } else {
      error = ERRORS.closed(event.code, event.reason);
    }
    this.finish(run, error);
  }

  fail(run, error) {
    if (this.run !== run) return;
    const ws = run.ws;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
    this.finish(run, error);
  }

  /** Tear down everything the conversation owns and return to idle (with an error, or none). */
  finish(run, error) {
    if (this.run !== run) return;
    this.run = null;
    clearTimeout(run.connectTimer);
    clearInterval(run.positionTimer);
    clearTimeout(this.interruptedTimer);
    if (run.ws) {
      run.ws.onmessage = null;
      run.ws.onclose = null;
    }
    run.graph?.close();
    run.opus?.close();
    if (this.stats.readyAt !== null) this.stats.endedAt = performance.now();
    this.error = error;
    this.setState("idle");
    if (error) this.dispatchEvent(new CustomEvent("error", { detail: error }));
  }

  /** End the conversation politely: session.end, wait briefly for session.ended, close. */
  stop() {
    const run = this.run;
    if (!run) return;
    run.userStopped = true;
    const ws = run.ws;
    if (ws?.readyState === WebSocket.OPEN) {
      this.setState("stopping");
      run.graph?.releaseMicrophone();
      ws.send(JSON.stringify({ type: "session.end" }));
      setTimeout(() => {
        if (ws.readyState <= WebSocket.OPEN) ws.close(1000);
        this.finish(run, null);
      }, END_WAIT_MS);
    } else {
      if (ws && ws.readyState === WebSocket.CONNECTING) ws.close(1000);
      this.finish(run, null);
    }
  }

  /** The tab is going away: tell the server now, there is no time to wait for an answer. */
  endNow() {
    const run = this.run;
    if (!run) return;
    run.userStopped = true;
    const ws = run.ws;
    if (ws?.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "session.end" }));
      ws.close(1000);
    }
    this.finish(run, null);
  }
}

/** The wire's PCM16 (little-endian, as every browser's typed arrays are) as float samples. */
function pcm16ToFloat(buffer) {
  const pcm = new Int16Array(buffer);
  const samples = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
  return samples;
}
