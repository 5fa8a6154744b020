// Microphone capture on the audio thread: mono float32 at the context rate -> PCM16 chunks.
//
// Posts {type: "chunk", pcm: ArrayBuffer (Int16, little-endian), rms, peak} every `chunkMs`
// (20 ms by default). The main thread forwards `pcm` as one binary websocket frame.

const DEFAULT_CHUNK_MS = 20;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const chunkMs = options.processorOptions?.chunkMs ?? DEFAULT_CHUNK_MS;
    this.chunkSamples = Math.max(1, Math.round((sampleRate * chunkMs) / 1000));
    this.chunk = new Int16Array(this.chunkSamples);
    this.filled = 0;
    this.sumSquares = 0;
    this.peak = 0;
    this.stopped = false;
    this.port.onmessage = (event) => {
      if (event.data?.type === "stop") this.stopped = true;
    };
  }

  process(inputs) {
    if (this.stopped) return false;
    const channels = inputs[0];
    // A track that is muted or not yet started delivers no channels: nothing to send.
    if (!channels || channels.length === 0) return true;
    const frames = channels[0].length;
    const gain = 1 / channels.length;
    for (let i = 0; i < frames; i++) {
      let sample = 0;
      for (let c = 0; c < channels.length; c++) sample += channels[c][i];
      sample *= gain;
      if (sample > 1) sample = 1;
      else if (sample < -1) sample = -1;
      this.sumSquares += sample * sample;
      const magnitude = Math.abs(sample);
      if (magnitude > this.peak) this.peak = magnitude;
      this.chunk[this.filled++] = sample < 0 ? sample * 0x8000 : sample * 0x7fff;
      if (this.filled === this.chunkSamples) this.flush();
    }
    return true;
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
