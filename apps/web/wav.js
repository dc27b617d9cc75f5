// Audio for the server as WAV: the server decodes with libsndfile, which reads WAV, FLAC, OGG
// and MP3 but not the WebM/Opus or MP4/AAC that MediaRecorder makes, so the page records raw
// PCM (an AudioWorklet) and writes the WAV itself.

const FILE_DECODE_RATE = 16000; // the model's rate: audio files are decoded and resampled to it in the page

// 16-bit PCM mono WAV of float samples in [-1, 1].
export function encodeWav(samples, sampleRate) {
  const bytes = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, value) => [...value].forEach((c, i) => bytes.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  bytes.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  bytes.setUint32(16, 16, true); // format chunk size
  bytes.setUint16(20, 1, true); // PCM
  bytes.setUint16(22, 1, true); // mono
  bytes.setUint32(24, sampleRate, true);
  bytes.setUint32(28, sampleRate * 2, true); // bytes per second
  bytes.setUint16(32, 2, true); // bytes per frame
  bytes.setUint16(34, 16, true); // bits per sample
  text(36, "data");
  bytes.setUint32(40, samples.length * 2, true);
  samples.forEach((sample, i) => {
    const clipped = Math.max(-1, Math.min(1, sample));
    bytes.setInt16(44 + i * 2, clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff, true);
  });
  return new Blob([bytes], { type: "audio/wav" });
}

// Records the default microphone at the device's own rate (the server resamples with soxr,
// better than the browser would).
export class Recorder {
  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    this.context = new AudioContext();
    await this.context.audioWorklet.addModule("/static/recorder-worklet.js");
    this.blocks = [];
    this.length = 0;
    this.node = new AudioWorkletNode(this.context, "pcm-recorder");
    this.node.port.onmessage = (event) => {
      this.blocks.push(event.data);
      this.length += event.data.length;
    };
    this.context.createMediaStreamSource(this.stream).connect(this.node);
    // A node is processed only while connected towards the output; it writes silence there.
    this.node.connect(this.context.destination);
  }

  get seconds() {
    return this.context ? this.length / this.context.sampleRate : 0;
  }

  // Stops the microphone; returns {blob (WAV), seconds}, at most `maxSeconds` long.
  async stop(maxSeconds = Infinity) {
    this.stream.getTracks().forEach((track) => track.stop());
    this.node.port.onmessage = null;
    const rate = this.context.sampleRate;
    await this.context.close();
    const length = Math.min(this.length, Math.floor(maxSeconds * rate));
    const samples = new Float32Array(length);
    let offset = 0;
    for (const block of this.blocks) {
      if (offset >= length) break;
      samples.set(block.subarray(0, length - offset), offset);
      offset += block.length;
    }
    return { blob: encodeWav(samples, rate), seconds: length / rate };
  }
}

// Any audio file the browser can decode (a phone's recorder makes MP4/AAC or WebM) as a 16 kHz
// mono WAV: {blob, seconds}. Throws when the browser cannot decode it.
export async function fileToWav(file) {
  const context = new OfflineAudioContext(1, 1, FILE_DECODE_RATE);
  const buffer = await context.decodeAudioData(await file.arrayBuffer());
  const mono = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const channel = buffer.getChannelData(c);
    for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / buffer.numberOfChannels;
  }
  return { blob: encodeWav(mono, buffer.sampleRate), seconds: buffer.duration };
}
