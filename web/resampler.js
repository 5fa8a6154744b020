// Streaming sample-rate conversion for the audio worklets: a polyphase windowed-sinc filter.
//
// Any rate to any rate (24 kHz wire audio to a 44.1 or 48 kHz device, a 48 kHz Opus decoder to
// a 24 kHz context, a 44.1 kHz microphone to 24 kHz, ...). The ratio is kept as an exact fraction
// up/down, so the output never drifts from `input * up / down` samples however long it runs, and
// the filter's history carries across calls: where the input is cut into chunks changes nothing.
// The delay is half the filter, about 0.7 ms; equal rates pass through untouched.

const HALF_TAPS = 16; // filter half-length at the lower rate: ~0.7 ms at 24 kHz, > 58 dB stopband
const CUTOFF = 0.94; // of the lower Nyquist frequency: the transition band ends before it
const MAX_PHASES = 1024; // rarer ratios round their phase down to 1/1024 of a sample

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

function blackman(u) {
  // u in [-1, 1]; 0 outside.
  if (u <= -1 || u >= 1) return 0;
  const x = Math.PI * (u + 1);
  return 0.42 - 0.5 * Math.cos(x) + 0.08 * Math.cos(2 * x);
}

export class Resampler {
  /** Converts mono float audio from `fromRate` to `toRate` (Hz, positive integers). */
  constructor(fromRate, toRate) {
    if (!(Number.isInteger(fromRate) && Number.isInteger(toRate) && fromRate > 0 && toRate > 0)) {
      throw new RangeError(`sample rates must be positive integers, got ${fromRate} -> ${toRate}`);
    }
    this.fromRate = fromRate;
    this.toRate = toRate;
    const g = gcd(fromRate, toRate);
    this.up = toRate / g;
    this.down = fromRate / g;
    this.phases = Math.min(this.up, MAX_PHASES);
    const scale = Math.min(1, toRate / fromRate); // downsampling: filter below the output's Nyquist
    this.half = Math.ceil(HALF_TAPS / scale);
    this.taps = 2 * this.half;
    this.table = this.buildTable(scale * CUTOFF);
    this.history = new Float32Array(4096);
    this.reset();
  }

  /** Forget the history (after a discontinuity such as a cleared buffer). */
  reset() {
    // `half - 1` zeros before the first sample: its output is centred on it, not half a filter late.
    this.history.fill(0);
    this.count = this.half - 1;
    this.index = this.half - 1; // history index of the input sample just before the next output
    this.phase = 0; // the next output lies phase/up of a sample after `index`
  }

  /** Taps per phase, each normalised to a gain of exactly 1 at DC. */
  buildTable(cutoff) {
    const table = new Float32Array(this.phases * this.taps);
    for (let p = 0; p < this.phases; p++) {
      const frac = p / this.phases;
      let sum = 0;
      for (let j = 0; j < this.taps; j++) {
        const t = frac + this.half - 1 - j; // distance from tap j's sample to the output time
        const x = Math.PI * cutoff * t;
        const sinc = t === 0 ? 1 : Math.sin(x) / x;
        const weight = sinc * blackman(t / this.half);
        table[p * this.taps + j] = weight;
        sum += weight;
      }
      for (let j = 0; j < this.taps; j++) table[p * this.taps + j] /= sum;
    }
    return table;
  }

  /** The most output samples `process` can return for `inputLength` samples. */
  maxOutput(inputLength) {
    if (this.up === this.down) return inputLength;
    return Math.ceil(((this.count - this.index + inputLength) * this.up) / this.down) + 1;
  }

  /**
   * Resample the next chunk. Writes into `out` (at least `maxOutput(input.length)` long) when
   * given and returns the number of samples written; without `out` returns a new Float32Array.
   */
  process(input, out) {
    if (this.up === this.down) {
      if (!out) return input.slice();
      out.set(input);
      return input.length;
    }
    const target = out ?? new Float32Array(this.maxOutput(input.length));
    this.append(input);
    const { history, table, taps, up, down, phases } = this;
    let written = 0;
    let { index, phase } = this;
    // Output at index + phase/up needs samples index - half + 1 ... index + half.
    while (index + this.half < this.count) {
      const row = (phases === up ? phase : Math.floor((phase * phases) / up)) * taps;
      const start = index - this.half + 1;
      let acc = 0;
      for (let j = 0; j < taps; j++) acc += history[start + j] * table[row + j];
      target[written++] = acc;
      phase += down;
      index += Math.floor(phase / up);
      phase %= up;
    }
    this.index = index;
    this.phase = phase;
    this.discardBefore(index - this.half + 1);
    return out ? written : target.subarray(0, written);
  }

  append(input) {
    if (this.count + input.length > this.history.length) {
      const grown = new Float32Array(2 * (this.count + input.length));
      grown.set(this.history.subarray(0, this.count));
      this.history = grown;
    }
    this.history.set(input, this.count);
    this.count += input.length;
  }

  discardBefore(first) {
    if (first <= 0) return;
    this.history.copyWithin(0, first, this.count);
    this.count -= first;
    this.index -= first;
  }
}
