// Microphone capture on the audio thread: mono float32 at the context rate -> PCM16 chunks at
// the wire rate.
//
// Posts {type: "chunk", pcm: ArrayBuffer (Int16, little-endian), rms, peak} every `chunkMs`
// (20 ms by default) of audio at `outRate` (the context's rate when not given), resampled on
// the way. The main thread forwards `pcm` as one binary websocket frame (or to the Opus encoder).
// {type: "mute", muted} makes the chunks silent without stopping them, so the server's clock
// and the session go on; {type: "stop"} ends the processor.

import { Resampler } from "./resampler.js";

const DEFAULT_CHUNK_MS = 20;
const QUANTUM = 128; // frames per process() call in every current browser; more are handled too

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions ?? {};
    const outRate = opts.outRate ?? sampleRate;
    this.chunkSamples = Math.max(1, Math.round((outRate * (opts.chunkMs ?? DEFAULT_CHUNK_MS)) / 1000));
    this.resampler = new Resampler(sampleRate, outRate);
    this.mono = new Float32Array(QUANTUM);
    this.resampled = new Float32Array(this.resampler.maxOutput(QUANTUM));
    this.chunk = new Int16Array(this.chunkSamples);
    this.filled = 0;
    this.sumSquares = 0;
    this.peak = 0;
    this.muted = Boolean(opts.muted);
    this.stopped = false;
    this.port.onmessage = (event) => {
      if (event.data?.type === "stop") this.stopped = true;
      else if (event.data?.type === "mute") this.muted = Boolean(event.data.muted);
    };
  }

  process(inputs) {
    if (this.stopped) return false;
    const channels = inputs[0];
    // A track that has not started delivers no channels: nothing to send. A muted one sends
    // silence at the same pace, whatever the browser delivers.
    const frames = channels?.[0]?.length ?? (this.muted ? QUANTUM : 0);
    if (frames === 0) return true;
    if (this.mono.length < frames) this.mono = new Float32Array(frames);
    const mono = this.mono.subarray(0, frames);
    if (this.muted) mono.fill(0);
    else this.downmix(channels, mono);
    if (this.resampled.length < this.resampler.maxOutput(frames)) {
      this.resampled = new Float32Array(this.resampler.maxOutput(frames));
    }
    const count = this.resampler.process(mono, this.resampled);
    for (let i = 0; i < count; i++) this.add(this.resampled[i]);
    return true;
  }

  downmix(channels, mono) {
    const gain = 1 / channels.length;
    mono.set(channels[0]);
    for (let c = 1; c < channels.length; c++) {
      const channel = channels[c];
      for (let i = 0; i < mono.length; i++) mono[i] += channel[i];
    }
    if (channels.length > 1) for (let i = 0; i < mono.length; i++) mono[i] *= gain;
  }

  add(value) {
    const sample = value > 1 ? 1 : value < -1 ? -1 : value;
    this.sumSquares += sample * sample;
    const magnitude = Math.abs(sample);
    if (magnitude > this.peak) this.peak = magnitude;
    this.chunk[this.filled++] = sample < 0 ? sample * 0x8000 : sample * 0x7fff;
    if (this.filled === this.chunkSamples) this.flush();
  }

  flush() {
    const rms = Math.sqrt(this.sumSquares / this.chunkSamples);
    this.port.postMessage({ type: "chunk", pcm: this.chunk.buffer, rms, peak: this.peak }, [this.chunk.buffer]);
    // The old buffer was transferred (detached), so every chunk gets a fresh one.
    this.chunk = new Int16Array(this.chunkSamples);
    this.filled = 0;
    this.sumSquares = 0;
    this.peak = 0;
  }
}

registerProcessor("capture-processor", CaptureProcessor);
