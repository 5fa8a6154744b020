// The conversation client: microphone -> websocket -> playout buffer, no DOM.
//
// One AssistantClient per page. `start()` asks for the microphone, opens the audio graph and
// the websocket (native protocol, docs/protocol.md); the conversation runs until `stop()`, an
// error, or the server ends it. It never reconnects by itself: the user presses Start again.
// It emits "statechange", "event" (every server JSON event), "levels", "stats", "notice" (a
// refused request the session survives) and "error" (the conversation ended with a UserError).
// Audio goes as Opus (web/opus-link.js) when the browser's WebCodecs can code it, else as PCM16.

import { ERRORS, UserError, diagnoseHandshakeFailure, microphoneError, serverReachable } from "./errors.js";
import { OPUS_RATE, OpusLink, opusSupported } from "./opus-link.js";

const SUPPORTED_RATES = [8000, 16000, 24000, 44100, 48000];
const FALLBACK_RATE = 48000;
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
  speaking: "Assistant speaking",
  interrupted: "You interrupted",
  stopping: "Ending…",
};

export class AssistantClient extends EventTarget {
  constructor(settings) {
    super();
    this.settings = settings; // {outputMode: "headphones"|"speakers", bargeIn: "model"|"vad", token}
    this.state = "idle";
    this.stateHistory = [];
    this.error = null;
    this.sessionId = null;
    this.serverOptions = null; // the session's options as the server last confirmed them
    this.sampleRate = null;
    this.audioFormat = null; // "opus" or "pcm16": what the live session's binary frames carry
    this.opusAvailable = null; // known long before a click, so the audio graph is made at the right rate
    opusSupported().then((ok) => {
      this.opusAvailable = ok;
    });
    this.stats = AssistantClient.freshStats();
    this.serverStats = null;
    this.run = null; // everything owned by the current conversation
    this.assistantSpeaking = false;
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
    const run = { ws: null, ready: false, opened: false, userStopped: false };
    this.run = run;
    this.assistantSpeaking = false;
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
    // Created before any await, inside the click: some browsers only let audio start there.
    // Opus runs at 24 kHz: the browser then resamples the microphone and the speaker for us.
    run.audioFormat = this.opusAvailable ? "opus" : "pcm16";
    const rate = run.audioFormat === "opus" ? { sampleRate: OPUS_RATE } : {};
    let context = new AudioContext({ latencyHint: "interactive", ...rate });
    run.context = context;
    // Speakers need the browser's echo canceller or the assistant hears itself; headphones
    // sound better without any processing.
    const processing = this.settings.outputMode === "speakers";
    try {
      run.stream = await navigator.mediaDevices.getUserMedia({
        audio: {
          channelCount: 1,
          echoCancellation: processing,
          noiseSuppression: processing,
          autoGainControl: processing,
        },
      });
    } catch (err) {
      throw microphoneError(err);
    }
    if (this.run !== run) {
      run.stream.getTracks().forEach((t) => t.stop());
      return;
    }
    if (!SUPPORTED_RATES.includes(context.sampleRate)) {
      // The server accepts a few rates only; let the browser resample to one of them.
      await context.close();
      context = new AudioContext({ latencyHint: "interactive", sampleRate: FALLBACK_RATE });
    }
    run.context = context;
    try {
      await context.audioWorklet.addModule(new URL("./capture-worklet.js", import.meta.url));
      await context.audioWorklet.addModule(new URL("./playback-worklet.js", import.meta.url));
    } catch (err) {
      // The modules come from the server: failing to load them usually means it is gone.
      throw (await serverReachable()) ? ERRORS.audioFailed(err) : ERRORS.unreachable(location.host);
    }
    if (context.state !== "running") await context.resume();

    run.source = context.createMediaStreamSource(run.stream);
    run.capture = new AudioWorkletNode(context, "capture-processor", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: "explicit",
      processorOptions: { chunkMs: CHUNK_MS },
    });
    run.capture.port.onmessage = (e) => this.onCaptureChunk(run, e.data);
    run.source.connect(run.capture);

    run.playback = new AudioWorkletNode(context, "playback-processor", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { targetMs: PLAYOUT_TARGET_MS },
    });
    run.playback.port.onmessage = (e) => this.onPlaybackMessage(run, e.data);
    run.playback.connect(context.destination);
    this.sampleRate = context.sampleRate;
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
          sample_rate: run.context.sampleRate,
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
    else this.play(run, data);
  }

  play(run, pcm) {
    run.playback.port.postMessage({ type: "audio", pcm }, [pcm]);
  }

  /** The session's codec, once session.ready confirmed the format. */
  startOpus(run) {
    run.opus = new OpusLink({
      onPacket: (packet) => this.sendAudio(run, packet),
      onPcm: (pcm) => this.run === run && this.play(run, pcm),
      onError: (err) => this.dispatchEvent(new CustomEvent("notice", { detail: { code: "opus", message: String(err) } })),
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
        if (this.audioFormat === "opus") this.startOpus(run);
        this.stats.readyAt = performance.now();
        run.positionTimer = setInterval(() => this.sendPosition(run), POSITION_EVERY_MS);
        this.setState("listening");
        break;
      case "session.updated":
        this.serverOptions = event.options ?? null;
        break;
      case "assistant.speech_started":
        // The playhead will reach at_ms when the first reply sample plays: see onPlaybackMessage.
        run.pendingReply = { atMs: event.at_ms, arrivedAt: receivedAt };
        this.assistantSpeaking = true;
        if (this.state !== "interrupted") this.setState("speaking");
        break;
      case "assistant.speech_stopped":
        this.assistantSpeaking = false;
        if (this.state === "speaking") this.setState("listening");
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
    run.playback.port.postMessage({ type: "clear", id });
  }

  showInterrupted() {
    this.setState("interrupted");
    clearTimeout(this.interruptedTimer);
    this.interruptedTimer = setTimeout(() => {
      if (this.state === "interrupted") this.setState(this.assistantSpeaking ? "speaking" : "listening");
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
    const rate = run.context.sampleRate;
    this.stats.samplesPlayed = message.samplesPlayed;
    this.stats.samplesDropped = message.samplesDropped;
    this.stats.underruns = message.underruns;
    this.stats.bufferedMs = (message.bufferedSamples / rate) * 1000;
    const reply = run.pendingReply;
    const positionMs = this.playedMs();
    if (reply && positionMs >= reply.atMs) {
      // The playhead passed the reply's first sample (positionMs - atMs) ago; the device adds its own.
      const playedAt = performance.now() - (positionMs - reply.atMs);
      const deviceMs = ((run.context.baseLatency || 0) + (run.context.outputLatency || 0)) * 1000;
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
    return this.run?.stream?.getAudioTracks()[0]?.getSettings() ?? null;
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
    const track = this.run?.stream?.getAudioTracks()[0];
    if (!track) return;
    const processing = mode === "speakers";
    await track
      .applyConstraints({ echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing })
      .catch(() => {}); // some browsers only apply these at the next start; nothing else to do
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
    run.capture?.port.postMessage({ type: "stop" });
    run.playback?.port.postMessage({ type: "stop" });
    run.stream?.getTracks().forEach((t) => t.stop());
    run.opus?.close();
    run.context?.close().catch(() => {});
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
      run.stream?.getTracks().forEach((t) => t.stop());
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
