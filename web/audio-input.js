// Audio in: a microphone or a decoded file, through the capture worklet, as 1 s mono
// Float32 frames at the AudioContext's own rate.

const WORKLET_URL = new URL("./capture-worklet.js", import.meta.url);
const FLUSH_TIMEOUT_MS = 2000;

/** Why the microphone could not be opened, in words for the user. */
export class MicrophoneError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = "MicrophoneError";
    this.kind = kind; // "denied" | "missing" | "busy" | "insecure" | "unsupported" | "other"
  }
}

export function describeMicrophoneError(error) {
  if (error instanceof MicrophoneError) return error;
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return new MicrophoneError(
        "denied",
        "Microphone access was denied. Allow the microphone for this site in the browser's " +
          "address bar or settings, then press Start again, or stream a file instead.",
      );
    case "NotFoundError":
    case "OverconstrainedError":
      return new MicrophoneError("missing", "No microphone was found. Plug one in, or stream a file instead.");
    case "NotReadableError":
    case "AbortError":
      return new MicrophoneError(
        "busy",
        "The microphone could not be started; another application may be using it.",
      );
    default:
      return new MicrophoneError("other", `The microphone could not be opened: ${error?.message ?? error}`);
  }
}

/** The audio inputs the browser lists ({deviceId, label}); labels appear once permission is given. */
export async function listMicrophones() {
  if (!navigator.mediaDevices?.enumerateDevices) return [];
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices
    .filter((device) => device.kind === "audioinput")
    .map((device, index) => ({
      deviceId: device.deviceId,
      label: device.label || (device.deviceId === "default" ? "Default microphone" : `Microphone ${index + 1}`),
    }));
}

/**
 * One capture: open it with openMicrophone() or openFile(), stop it with stop().
 * Callbacks: onFrame(ArrayBuffer of Float32 mono samples), onLevel(0..1), onEnded() (a file ran out).
 */
export class AudioInput {
  constructor({ onFrame, onLevel = () => {}, onEnded = () => {}, frameSeconds = 1 }) {
    this.onFrame = onFrame;
    this.onLevel = onLevel;
    this.onEnded = onEnded;
    this.frameSeconds = frameSeconds;
    this.context = null;
    this.worklet = null;
    this.source = null;
    this.stream = null;
    this.lastFrame = null; // resolves when the worklet posted its last frame after "flush"
    this.stopped = false;
  }

  get sampleRate() {
    return this.context?.sampleRate ?? 0;
  }

  /** Opens a microphone (deviceId "" = the default). Call from a user gesture. */
  async openMicrophone(deviceId = "") {
    if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
      throw new MicrophoneError(
        "insecure",
        "This browser only allows the microphone on a secure page (https:// or localhost). " +
          "Open the page over HTTPS, or stream a file instead.",
      );
    }
    // Created before the first await, while the click still counts as a user gesture.
    const context = this.createContext();
    const audio = {
      channelCount: { ideal: 1 },
      // Raw audio is what the recogniser was trained on.
      echoCancellation: false,
      noiseSuppression: false,
      autoGainControl: false,
    };
    if (deviceId) audio.deviceId = { exact: deviceId };
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ audio });
    } catch (error) {
      await this.close();
      throw describeMicrophoneError(error);
    }
    await this.connect(context.createMediaStreamSource(this.stream));
    const [track] = this.stream.getAudioTracks();
    track?.addEventListener("ended", () => this.stopped || this.onEnded()); // unplugged, or revoked
    return track?.label ?? "";
  }

  /** Decodes an audio file and plays it (audibly) through the same capture path, in real time. */
  async openFile(file) {
    const context = this.createContext();
    let buffer;
    try {
      buffer = await context.decodeAudioData(await file.arrayBuffer());
    } catch (error) {
      await this.close();
      throw new Error(`"${file.name}" could not be decoded as audio (${error?.message ?? error}).`);
    }
    const source = new AudioBufferSourceNode(context, { buffer });
    source.connect(context.destination); // let the person giving the demo hear it
    source.addEventListener("ended", () => this.stopped || this.onEnded());
    await this.connect(source);
    source.start();
    return buffer.duration;
  }

  createContext() {
    this.context = new AudioContext({ latencyHint: "interactive" });
    return this.context;
  }

  async connect(source) {
    const context = this.context;
    if (!context.audioWorklet) {
      await this.close();
      throw new Error(
        "This browser only processes audio on a secure page (https:// or localhost); open the page over HTTPS.",
      );
    }
    try {
      await context.audioWorklet.addModule(WORKLET_URL);
    } catch (error) {
      await this.close();
      throw new Error(`The audio processor (${WORKLET_URL.pathname}) could not be loaded: ${error?.message ?? error}`);
    }
    // No outputs: the node is a sink, pulled by the graph without reaching the speakers.
    this.worklet = new AudioWorkletNode(context, "capture", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCountMode: "max",
      processorOptions: { frameSeconds: this.frameSeconds },
    });
    let finish;
    this.lastFrame = new Promise((resolve) => (finish = resolve));
    this.worklet.port.onmessage = ({ data }) => {
      if (data.type === "level") {
        this.onLevel(levelFromRms(data.rms));
      } else if (data.type === "audio") {
        if (data.samples.byteLength > 0) this.onFrame(data.samples);
        if (data.last) finish();
      }
    };
    source.connect(this.worklet);
    this.source = source;
    if (context.state === "suspended") await context.resume();
  }

  /** Stops capturing; every sample captured so far reaches onFrame before this resolves. */
  async stop() {
    if (this.stopped) return;
    this.stopped = true;
    try {
      this.source?.disconnect();
      if (this.source instanceof AudioBufferSourceNode) {
        try {
          this.source.stop();
        } catch {
          // not started, or already ended
        }
      }
      if (this.worklet && this.lastFrame) {
        this.worklet.port.postMessage({ type: "flush" });
        await Promise.race([this.lastFrame, delay(FLUSH_TIMEOUT_MS)]);
      }
    } finally {
      this.onLevel(0);
      await this.close();
    }
  }

  async close() {
    this.stream?.getTracks().forEach((track) => track.stop());
    this.stream = null;
    if (this.context && this.context.state !== "closed") await this.context.close();
  }
}

/** RMS amplitude to a 0..1 meter reading on a -60..0 dBFS scale. */
export function levelFromRms(rms) {
  if (!(rms > 0)) return 0;
  const db = 20 * Math.log10(rms);
  return Math.min(1, Math.max(0, (db + 60) / 60));
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
