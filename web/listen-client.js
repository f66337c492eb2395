// One recognition stream over WS /v1/listen (protocol v1, ../shared/PROTOCOL.md) that
// survives dropped connections: audio is queued while disconnected, the socket is reopened
// with backoff, and the times of a reopened stream are shifted onto one timeline.

const OPEN = 1; // WebSocket.OPEN
// The server refused the request itself (bad parameters, bad audio, too large, no key):
// reconnecting would only repeat it.
const FATAL_CLOSE_CODES = new Set([1003, 1008, 1009]);
const END_TIMEOUT_MS = 30_000;
const MAX_QUEUED_SECONDS = 30;

export const RETRY = { baseMs: 500, maxMs: 10_000, maxAttempts: 8 };

/** The stream's URL: same host and path prefix as the page, ws: or wss: to match http: or https:. */
export function listenUrl(pageUrl, { sampleRate, language, encoding = "f32le", interimResults = true, token }) {
  const url = new URL("v1/listen", pageUrl);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  url.searchParams.set("sample_rate", String(Math.round(sampleRate)));
  url.searchParams.set("encoding", encoding);
  if (language) url.searchParams.set("language", language);
  url.searchParams.set("interim_results", String(interimResults));
  if (token) url.searchParams.set("token", token);
  return url.toString();
}

/** Delay before reconnect attempt `attempt` (1, 2, ...): exponential, capped, with jitter. */
export function backoffMs(attempt, random = Math.random) {
  const ceiling = Math.min(RETRY.maxMs, RETRY.baseMs * 2 ** (attempt - 1));
  return Math.round(ceiling * (0.75 + 0.5 * random()));
}

/**
 * States: connecting → listening → finishing → stopped, with reconnecting in between when a
 * connection drops, and failed when the server refused the stream or could not be reached.
 *
 * Handlers (all optional): onState(state, text), onReady(msg), onPartial(msg), onFinal(msg),
 * onServerError(msg), onConnectionError(text, or null once connected again: stale errors may go),
 * onFailed({code, reason}).
 * Partial and final times are seconds of this client's audio (shifted across reconnects).
 */
export class ListenClient {
  constructor(url, { sampleRate, handlers = {}, WebSocketImpl = WebSocket }) {
    this.url = url;
    this.sampleRate = sampleRate;
    this.handlers = handlers;
    this.WebSocketImpl = WebSocketImpl;
    this.ws = null;
    this.state = "idle";
    this.queue = []; // frames not yet sent (ArrayBuffers)
    this.attempt = 0; // reconnect attempts since the last successful open
    this.retryTimer = null;
    this.offsetSeconds = 0; // audio sent on earlier connections of this stream
    this.connectionSamples = 0; // audio sent on the current connection
    this.model = "";
    this.endMessage = null;
    this.finishing = false;
    this.settled = null; // resolves finish()
    this.endTimer = null;
  }

  get secondsSent() {
    return this.offsetSeconds + this.connectionSamples / this.sampleRate;
  }

  connect() {
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting", this.attempt === 0 ? "Connecting…" : "Reconnecting…");
    let ws;
    try {
      ws = new this.WebSocketImpl(this.url);
    } catch (error) {
      this.fail({ code: 0, reason: String(error?.message ?? error) }, `Cannot open ${this.url}: ${error?.message ?? error}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    ws.onopen = () => this.opened(ws);
    ws.onmessage = (event) => this.received(ws, event.data);
    ws.onclose = (event) => this.closed(ws, event);
    ws.onerror = () => {}; // every error is followed by close, handled there
    this.ws = ws;
    this.wasOpen = false;
    this.serverErrored = false; // an error event came on this connection
  }

  /** One frame of mono Float32 PCM at the declared rate. */
  sendAudio(buffer) {
    if (this.state === "failed" || this.state === "stopped") return;
    if (this.ws?.readyState === OPEN && this.wasOpen) {
      this.ws.send(buffer);
      this.connectionSamples += buffer.byteLength / Float32Array.BYTES_PER_ELEMENT;
      return;
    }
    this.queue.push(buffer);
    let queued = this.queue.reduce((sum, b) => sum + b.byteLength / 4, 0) / this.sampleRate;
    while (queued > MAX_QUEUED_SECONDS && this.queue.length > 1) {
      queued -= this.queue.shift().byteLength / 4 / this.sampleRate; // the oldest audio goes first
    }
  }

  /** A raw text frame (a control message); exposed for debugging and tests. */
  sendText(text) {
    if (this.ws?.readyState !== OPEN) return false;
    this.ws.send(text);
    return true;
  }

  /** No more audio: sends `stop` and resolves with the `end` message (null if none came). */
  finish() {
    if (!this.settled) {
      this.settled = new Promise((resolve) => (this.resolveSettled = resolve));
    }
    if (this.finishing) return this.settled;
    this.finishing = true;
    if (this.state === "failed" || this.state === "stopped" || this.state === "idle") {
      this.settle(null);
      return this.settled;
    }
    if (!(this.ws?.readyState === OPEN && this.wasOpen)) {
      // Not connected (still trying): a stop from the user ends the retries too.
      const unsent = this.queue.reduce((sum, b) => sum + b.byteLength / 4, 0) / this.sampleRate;
      this.close();
      if (unsent > 0) {
        this.handlers.onConnectionError?.(`Stopped while disconnected: ${unsent.toFixed(1)} s of audio were not transcribed.`);
      }
      this.settle(null);
      return this.settled;
    }
    this.setState("finishing", "Finishing…");
    this.endTimer = setTimeout(() => {
      this.handlers.onConnectionError?.("The server did not confirm the end of the stream in time.");
      this.close();
      this.settle(null);
    }, END_TIMEOUT_MS);
    this.sendStop();
    return this.settled;
  }

  /** Drops the stream without `stop` (fatal errors, leaving the page). */
  close() {
    clearTimeout(this.retryTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= OPEN) ws.close(1000, "client closed");
  }

  // -- socket events ---------------------------------------------------------
  opened(ws) {
    if (ws !== this.ws) return;
    this.wasOpen = true;
    this.attempt = 0;
    this.handlers.onConnectionError?.(null);
    const queued = this.queue;
    this.queue = [];
    queued.forEach((buffer) => this.sendAudio(buffer));
    this.setState("listening", "Connected, waiting for the server…");
  }

  received(ws, data) {
    if (ws !== this.ws || typeof data !== "string") return;
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return; // not protocol v1; ignore rather than guess
    }
    const shift = (m) => shiftTimes(m, this.offsetSeconds);
    switch (message.type) {
      case "ready":
        this.model = message.model ?? "";
        if (!this.finishing) this.setState("listening", this.model ? `Listening (${this.model})` : "Listening");
        this.handlers.onReady?.(message);
        break;
      case "partial":
        this.handlers.onPartial?.(shift(message));
        break;
      case "final":
        this.handlers.onFinal?.(shift(message));
        break;
      case "error":
        this.serverErrored = true;
        this.handlers.onServerError?.(message);
        break;
      case "end":
        this.endMessage = message;
        if (this.finishing) {
          this.close(); // the server closes too; no need to wait for it
          this.settle(message);
        }
        break;
      default:
        break; // newer message types: ignored, as the protocol allows
    }
  }

  closed(ws, event) {
    if (ws !== this.ws) return;
    this.ws = null;
    const wasOpen = this.wasOpen;
    if (wasOpen) {
      this.offsetSeconds += this.connectionSamples / this.sampleRate;
      this.connectionSamples = 0;
    }
    this.handlers.onPartial?.({ type: "partial", text: "", start: this.offsetSeconds, end: this.offsetSeconds });
    if (this.finishing) {
      if (!this.endMessage && event.code !== 1000) {
        this.handlers.onConnectionError?.(`The connection closed before the stream ended (code ${event.code}).`);
      }
      this.settle(this.endMessage);
      return;
    }
    if (FATAL_CLOSE_CODES.has(event.code)) {
      this.fail({ code: event.code, reason: event.reason });
      return;
    }
    this.attempt += 1;
    if (this.attempt > RETRY.maxAttempts) {
      this.fail({ code: event.code, reason: event.reason }, "Gave up reconnecting to the server.");
      return;
    }
    const host = new URL(this.url).host;
    if (!this.serverErrored) {
      // (After an error event, that event says more than the close code, so it stays shown.)
      this.handlers.onConnectionError?.(
        wasOpen
          ? `The connection to the server was lost (code ${event.code}${event.reason ? `: ${event.reason}` : ""}).`
          : `The server at ${host} cannot be reached. Is the service running?`,
      );
    }
    const wait = backoffMs(this.attempt);
    this.setState(
      "reconnecting",
      `Reconnecting in ${(wait / 1000).toFixed(1)} s (attempt ${this.attempt} of ${RETRY.maxAttempts})`,
    );
    this.retryTimer = setTimeout(() => this.connect(), wait);
  }

  // -- helpers ----------------------------------------------------------------
  sendStop() {
    this.ws.send(JSON.stringify({ type: "stop" }));
  }

  setState(state, text) {
    this.state = state;
    this.handlers.onState?.(state, text);
  }

  fail(detail, text) {
    clearTimeout(this.endTimer);
    this.close();
    if (text) this.handlers.onConnectionError?.(text);
    this.setState("failed", FATAL_CLOSE_CODES.has(detail.code) ? "Refused by the server" : "Disconnected");
    this.handlers.onFailed?.(detail);
    this.settle(null);
  }

  settle(endMessage) {
    clearTimeout(this.endTimer);
    clearTimeout(this.retryTimer);
    if (this.state !== "failed") {
      const text = endMessage ? `Stopped (${endMessage.duration.toFixed(1)} s of audio)` : "Stopped";
      this.setState("stopped", text);
    }
    this.resolveSettled?.(endMessage);
  }
}

function shiftTimes(message, offset) {
  if (!offset) return message;
  const shifted = { ...message, start: message.start + offset, end: message.end + offset };
  if (Array.isArray(message.words)) {
    shifted.words = message.words.map((w) => ({ ...w, start: w.start + offset, end: w.end + offset }));
  }
  return shifted;
}
