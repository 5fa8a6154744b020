// Opus on the wire through the browser's own codec (WebCodecs), no library download.
//
// With `audio_format: "opus"` the native protocol carries one raw 20 ms Opus packet (24 kHz mono)
// per binary websocket message, both ways: exactly one EncodedAudioChunk of AudioEncoder's output,
// and exactly one chunk of AudioDecoder's input, so nothing is framed or parsed here.

export const OPUS_RATE = 24000;
const PACKET_US = 20_000;
const ENCODER_CONFIG = {
  codec: "opus",
  sampleRate: OPUS_RATE,
  numberOfChannels: 1,
  bitrate: 32_000,
  opus: { frameDuration: PACKET_US },
};
const DECODER_CONFIG = { codec: "opus", sampleRate: OPUS_RATE, numberOfChannels: 1 };

/** Whether this browser can encode and decode the protocol's Opus (resolves false, never throws). */
export async function opusSupported() {
  if (typeof AudioEncoder === "undefined" || typeof AudioDecoder === "undefined") return false;
  try {
    const [enc, dec] = await Promise.all([
      AudioEncoder.isConfigSupported(ENCODER_CONFIG),
      AudioDecoder.isConfigSupported(DECODER_CONFIG),
    ]);
    return Boolean(enc.supported && dec.supported);
  } catch {
    return false;
  }
}

/**
 * One session's encoder and decoder. `encode(int16)` takes microphone chunks (480 samples at
 * 24 kHz) and calls `onPacket(ArrayBuffer)` for each packet; `decode(ArrayBuffer)` takes server
 * packets and calls `onAudio(Float32Array, rate)` at the rate the decoder chose: Opus decodes at
 * 48 kHz inside, and WebCodecs may hand that out whatever rate was configured (Chromium does), so
 * the player resamples by the rate each AudioData declares. `clear()` drops what is still being
 * decoded, so audio the server told us to discard cannot come back out of the decoder afterwards.
 * `encodeMs` / `decodeMs` hold the time each packet spent in the codec.
 */
export class OpusLink {
  constructor({ onPacket, onAudio, onError }) {
    this.encodeMs = [];
    this.decodeMs = [];
    this.inFlight = new Map(); // timestamp (us) -> performance.now() when handed to a codec
    this.samplesIn = 0;
    this.packetsIn = 0;
    this.dropBefore = 0; // decoded audio with an earlier timestamp was cleared
    this.encoder = new AudioEncoder({
      output: (chunk) => {
        this.timed(this.encodeMs, `e${chunk.timestamp}`);
        const packet = new ArrayBuffer(chunk.byteLength);
        chunk.copyTo(packet);
        onPacket(packet);
      },
      error: onError,
    });
    this.encoder.configure(ENCODER_CONFIG);
    this.onAudio = onAudio;
    this.onError = onError;
    this.decoder = this.newDecoder();
  }

  newDecoder() {
    const decoder = new AudioDecoder({
      output: (data) => this.decoded(data),
      // A packet the decoder refuses closes it; the next packet gets a fresh one.
      error: (err) => this.onError(err),
    });
    decoder.configure(DECODER_CONFIG);
    return decoder;
  }

  timed(list, key) {
    const start = this.inFlight.get(key);
    if (start === undefined) return;
    this.inFlight.delete(key);
    list.push(performance.now() - start);
    if (list.length > 500) list.shift();
  }

  encode(int16) {
    const timestamp = Math.round((this.samplesIn / OPUS_RATE) * 1e6);
    this.samplesIn += int16.length;
    this.inFlight.set(`e${timestamp}`, performance.now());
    const data = new AudioData({
      format: "s16",
      sampleRate: OPUS_RATE,
      numberOfFrames: int16.length,
      numberOfChannels: 1,
      timestamp,
      data: int16,
    });
    this.encoder.encode(data);
    data.close();
  }

  decode(packet) {
    if (this.decoder.state === "closed") this.decoder = this.newDecoder();
    const timestamp = this.packetsIn * PACKET_US;
    this.packetsIn += 1;
    this.inFlight.set(`d${timestamp}`, performance.now());
    this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp, data: packet }));
  }

  decoded(data) {
    this.timed(this.decodeMs, `d${data.timestamp}`);
    if (data.timestamp < this.dropBefore) {
      data.close();
      return;
    }
    const samples = new Float32Array(data.numberOfFrames);
    data.copyTo(samples, { planeIndex: 0, format: "f32-planar" });
    const rate = data.sampleRate;
    data.close();
    this.onAudio(samples, rate);
  }

  clear() {
    this.dropBefore = this.packetsIn * PACKET_US;
  }

  close() {
    for (const codec of [this.encoder, this.decoder]) {
      if (codec.state !== "closed") codec.close();
    }
  }
}
