// AudioWorklet processor: the audio graph's input as mono Float32 PCM in fixed-length
// frames (1 s by default), posted to the main thread, plus ~20 level readings a second.
//
// Messages to the main thread:
//   {type: "audio", samples: ArrayBuffer (Float32, mono), last: boolean}
//   {type: "level", rms: number, peak: number}
// Messages from the main thread:
//   {type: "flush"}  post what is buffered (possibly nothing) with last=true, then stop.

const LEVEL_READINGS_PER_SECOND = 20;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const frameSeconds = options?.processorOptions?.frameSeconds ?? 1;
    // `sampleRate` is the AudioContext's rate, a global of the worklet scope.
    this.frameLength = Math.max(128, Math.round(sampleRate * frameSeconds));
    this.frame = new Float32Array(this.frameLength);
    this.filled = 0;
    this.levelWindow = Math.round(sampleRate / LEVEL_READINGS_PER_SECOND);
    this.levelCount = 0;
    this.levelSquares = 0;
    this.levelPeak = 0;
    this.flushed = false;
    this.port.onmessage = (event) => {
      if (event.data?.type === "flush") this.flush();
    };
  }

  process(inputs) {
    if (this.flushed) return false; // lets the node be collected
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // no source connected (yet)
    const count = channels.length;
    const length = channels[0].length;
    for (let i = 0; i < length; i++) {
      let sample = 0;
      for (let c = 0; c < count; c++) sample += channels[c][i];
      sample /= count; // mono: the average of the channels
      this.frame[this.filled++] = sample;
      if (this.filled === this.frameLength) this.post(false);
      this.measure(sample);
    }
    return true;
  }

  measure(sample) {
    this.levelSquares += sample * sample;
    const magnitude = Math.abs(sample);
    if (magnitude > this.levelPeak) this.levelPeak = magnitude;
    if (++this.levelCount < this.levelWindow) return;
    this.port.postMessage({
      type: "level",
      rms: Math.sqrt(this.levelSquares / this.levelCount),
      peak: this.levelPeak,
    });
    this.levelCount = 0;
    this.levelSquares = 0;
    this.levelPeak = 0;
  }

  post(last) {
    // The full frame's buffer is transferred, not copied; a partial one is trimmed first.
    const samples = this.filled === this.frameLength ? this.frame : this.frame.slice(0, this.filled);
    this.port.postMessage({ type: "audio", samples: samples.buffer, last }, [samples.buffer]);
    this.frame = new Float32Array(this.frameLength);
    this.filled = 0;
  }

  flush() {
    if (this.flushed) return;
    this.post(true);
    this.flushed = true;
  }
}

registerProcessor("capture", CaptureProcessor);
