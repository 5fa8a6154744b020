// One conversation's audio in the browser: microphone -> capture worklet, playout worklet ->
// volume -> speakers. No websocket, no DOM.
//
// The AudioContext runs at the device's own rate (44.1 or 48 kHz usually; some browsers cannot
// connect a microphone to a context at another rate). The worklets convert between that rate
// and the wire's: the capture worklet hands out PCM16 chunks at `wireRate`, and the playout
// worklet takes audio at whatever rate it comes in (the wire's, or an Opus decoder's 48 kHz).

import { ERRORS, microphoneError, serverReachable } from "./errors.js";

/** Whether this browser can send a page's audio to a chosen output device. */
export const speakerChoiceSupported = typeof AudioContext !== "undefined" && "setSinkId" in AudioContext.prototype;

/** The microphone constraints for headphones (no processing) or speakers (the browser's echo canceller). */
function micConstraints(outputMode, deviceId, exact) {
  const processing = outputMode === "speakers";
  return {
    channelCount: 1,
    echoCancellation: processing,
    noiseSuppression: processing,
    autoGainControl: processing,
    // A remembered device is a wish (it may be unplugged); one picked just now must be that one.
    ...(deviceId ? { deviceId: exact ? { exact: deviceId } : deviceId } : {}),
  };
}

export class AudioGraph {
  /**
   * Make the AudioContext now (call inside the click: some browsers only start audio there);
   * `open()` then asks for the microphone and builds the graph.
   * options: {wireRate, chunkMs, targetMs, outputMode, micId, speakerId, muted, volume,
   *           onChunk({pcm, rms, peak}), onPlayback(message)}
   */
  constructor(options) {
    this.options = options;
    this.context = new AudioContext({ latencyHint: "interactive" });
    this.stream = null;
    this.source = null;
    this.muted = Boolean(options.muted);
  }

  get sampleRate() {
    return this.context.sampleRate;
  }

  async open() {
    const { options, context } = this;
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: micConstraints(options.outputMode, options.micId, false),
      });
    } catch (err) {
      throw microphoneError(err);
    }
    if (this.closed) {
      this.releaseMicrophone(); // stopped while the browser asked for permission
      return;
    }
    this.setTrackEnabled();
    try {
      await context.audioWorklet.addModule(new URL("./capture-worklet.js", import.meta.url));
      await context.audioWorklet.addModule(new URL("./playback-worklet.js", import.meta.url));
    } catch (err) {
      // The modules come from the server: failing to load them usually means it is gone.
      throw (await serverReachable()) ? ERRORS.audioFailed(err) : ERRORS.unreachable(location.host);
    }
    if (context.state !== "running") await context.resume();

    this.capture = new AudioWorkletNode(context, "capture-processor", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: "explicit",
      processorOptions: { chunkMs: options.chunkMs, outRate: options.wireRate, muted: this.muted },
    });
    this.capture.port.onmessage = (e) => e.data.type === "chunk" && options.onChunk(e.data);
    this.source = context.createMediaStreamSource(this.stream);
    this.source.connect(this.capture);

    this.playback = new AudioWorkletNode(context, "playback-processor", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { targetMs: options.targetMs },
    });
    this.playback.port.onmessage = (e) => options.onPlayback(e.data);
    this.volume = context.createGain();
    this.volume.gain.value = options.volume ?? 1;
    this.playback.connect(this.volume);
    this.volume.connect(context.destination);
    if (options.speakerId) await this.setSpeaker(options.speakerId);
  }

  /** Queue the assistant's audio (mono Float32Array at `rate` Hz) for playout. */
  play(samples, rate) {
    this.playback.port.postMessage({ type: "audio", samples: samples.buffer, rate }, [samples.buffer]);
  }

  clear(id) {
    this.playback.port.postMessage({ type: "clear", id });
  }

  /** Microphone off or on; the session goes on (silence is sent while muted). */
  setMuted(muted) {
    this.muted = muted;
    this.setTrackEnabled();
    this.capture?.port.postMessage({ type: "mute", muted });
  }

  setTrackEnabled() {
    for (const track of this.stream?.getAudioTracks() ?? []) track.enabled = !this.muted;
  }

  /** Output volume in [0, 1], eased over a few ms so that a change does not click. */
  setVolume(volume) {
    this.volume?.gain.setTargetAtTime(volume, this.context.currentTime, 0.015);
  }

  /** Play through another output device ("" = the system's default). */
  async setSpeaker(deviceId) {
    if (!speakerChoiceSupported) return;
    await this.context.setSinkId(deviceId);
  }

  /** Switch to another microphone (or processing) without ending the conversation. */
  async setMicrophone(outputMode, micId) {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: micConstraints(outputMode, micId, true),
    });
    if (this.closed) {
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    const source = this.context.createMediaStreamSource(stream);
    source.connect(this.capture);
    this.source?.disconnect();
    this.stream?.getTracks().forEach((t) => t.stop());
    this.source = source;
    this.stream = stream;
    this.setTrackEnabled();
  }

  /** Apply headphone or speaker processing to the live microphone, where the browser allows. */
  async setProcessing(outputMode) {
    const track = this.stream?.getAudioTracks()[0];
    if (!track) return;
    const { echoCancellation, noiseSuppression, autoGainControl } = micConstraints(outputMode);
    await track
      .applyConstraints({ echoCancellation, noiseSuppression, autoGainControl })
      .catch(() => {}); // some browsers only apply these at the next start; nothing else to do
  }

  /** What the browser applied to the microphone (echoCancellation, deviceId, ...). */
  micSettings() {
    return this.stream?.getAudioTracks()[0]?.getSettings() ?? null;
  }

  /** Stop hearing the microphone at once (the socket may still be saying goodbye). */
  releaseMicrophone() {
    this.stream?.getTracks().forEach((t) => t.stop());
  }

  close() {
    this.closed = true;
    this.capture?.port.postMessage({ type: "stop" });
    this.playback?.port.postMessage({ type: "stop" });
    this.releaseMicrophone();
    this.context.close().catch(() => {});
  }
}
