// Playout buffer on the audio thread for the assistant's voice (mono, played at the context rate).
//
// Messages in:  {type: "audio", samples: ArrayBuffer (Float32), rate}  queue audio at any rate
//               {type: "clear", id}                        drop everything queued, at once
//               {type: "stop"}
// Messages out: {type: "report", ...counters, rms, peak}  every `reportMs`
//               {type: "cleared", id, droppedSamples, ...}  right after a clear emptied the buffer
//
// Audio is resampled from its own rate (24 kHz PCM off the wire, 48 kHz out of an Opus decoder,
// whatever a browser hands out) to the context's rate as it is queued, so the buffer and every
// counter are in samples at the context rate.
//
// Playback starts once `targetMs` is queued and, after an underrun (the queue ran dry while
// playing), waits for `targetMs` again so that one late frame does not turn into many clicks.

import { Resampler } from "./resampler.js";

const DEFAULT_TARGET_MS = 100;
const DEFAULT_CAPACITY_MS = 10_000;
const DEFAULT_REPORT_MS = 50;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions ?? {};
    this.targetSamples = Math.round((sampleRate * (opts.targetMs ?? DEFAULT_TARGET_MS)) / 1000);
    this.capacity = Math.round((sampleRate * (opts.capacityMs ?? DEFAULT_CAPACITY_MS)) / 1000);
    this.reportSamples = Math.round((sampleRate * (opts.reportMs ?? DEFAULT_REPORT_MS)) / 1000);
    this.ring = new Float32Array(this.capacity);
    this.readIndex = 0;
    this.size = 0;
    this.playing = false;
    this.stopped = false;
    // Counters, all in samples of the assistant's stream except `underruns`.
    this.samplesReceived = 0;
    this.samplesPlayed = 0;
    this.samplesDropped = 0; // dropped on playback.clear or on overflow, never heard
    this.underruns = 0;
    this.sinceReport = 0;
    this.sumSquares = 0;
    this.peak = 0;
    this.resampler = null; // from the rate of the audio last queued
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(message) {
    if (message.type === "audio") {
      this.push(this.toContextRate(new Float32Array(message.samples), message.rate));
    } else if (message.type === "clear") {
      this.resampler?.reset(); // what follows a clear does not continue what was dropped
      this.samplesDropped += this.size;
      const droppedSamples = this.size;
      this.size = 0;
      this.playing = false;
      this.port.postMessage({ type: "cleared", id: message.id, droppedSamples, ...this.counters() });
    } else if (message.type === "stop") {
      this.stopped = true;
    }
  }

  toContextRate(samples, rate) {
    if (this.resampler?.fromRate !== rate) this.resampler = new Resampler(rate, sampleRate);
    return this.resampler.process(samples);
  }

  push(samples) {
    this.samplesReceived += samples.length;
    let start = 0;
    // More than the whole ring: only the newest `capacity` samples can ever be played.
    if (samples.length > this.capacity) {
      start = samples.length - this.capacity;
      this.samplesDropped += start;
    }
    const incoming = samples.length - start;
    const overflow = this.size + incoming - this.capacity;
    if (overflow > 0) {
      // Keep latency bounded: drop the oldest queued audio rather than the newest.
      this.readIndex = (this.readIndex + overflow) % this.capacity;
      this.size -= overflow;
      this.samplesDropped += overflow;
    }
    let writeIndex = (this.readIndex + this.size) % this.capacity;
    for (let i = start; i < samples.length; i++) {
      this.ring[writeIndex] = samples[i];
      writeIndex = writeIndex + 1 === this.capacity ? 0 : writeIndex + 1;
    }
    this.size += incoming;
  }

  counters() {
    return {
      bufferedSamples: this.size,
      samplesReceived: this.samplesReceived,
      samplesPlayed: this.samplesPlayed,
      samplesDropped: this.samplesDropped,
      underruns: this.underruns,
      playing: this.playing,
    };
  }

  process(_inputs, outputs) {
    if (this.stopped) return false;
    const output = outputs[0];
    const out = output[0];
    const frames = out.length;
    if (!this.playing && this.size >= this.targetSamples) this.playing = true;
    let written = 0;
    if (this.playing) {
      written = Math.min(frames, this.size);
      for (let i = 0; i < written; i++) {
        const sample = this.ring[this.readIndex];
        out[i] = sample;
        this.sumSquares += sample * sample;
        const magnitude = Math.abs(sample);
        if (magnitude > this.peak) this.peak = magnitude;
        this.readIndex = this.readIndex + 1 === this.capacity ? 0 : this.readIndex + 1;
      }
      this.size -= written;
      this.samplesPlayed += written;
      if (written < frames) {
        this.underruns += 1;
        this.playing = false;
      }
    }
    out.fill(0, written);
    for (let c = 1; c < output.length; c++) output[c].set(out);

    this.sinceReport += frames;
    if (this.sinceReport >= this.reportSamples) {
      const rms = Math.sqrt(this.sumSquares / this.sinceReport);
      this.port.postMessage({ type: "report", rms, peak: this.peak, ...this.counters() });
      this.sinceReport = 0;
      this.sumSquares = 0;
      this.peak = 0;
    }
    return true;
  }
}

registerProcessor("playback-processor", PlaybackProcessor);
