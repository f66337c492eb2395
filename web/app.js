// The microphone page: wires the audio input, the stream client and the transcript to the DOM.

import { AudioInput, listMicrophones } from "./audio-input.js";
import { ListenClient, listenUrl } from "./listen-client.js";
import { Transcript, formatClock, formatTimestamp } from "./transcript.js";

const ui = Object.fromEntries(
  [
    "start", "stop", "status", "mic", "language", "file", "level", "error", "copy", "download-txt",
    "download-srt", "download-vtt", "clear", "show-times", "notice", "transcript", "placeholder",
    "lines", "pending", "partial",
  ].map((id) => [id.replace(/-(\w)/g, (_, c) => c.toUpperCase()), document.getElementById(id)]),
);

const params = new URLSearchParams(location.search);
const transcript = new Transcript();
let session = null; // the running capture + stream, or null
let timelineBase = 0; // a new recording's times continue after the previous one's
let noticeTimer = null;

// -- starting and stopping ----------------------------------------------------

/** source: {kind: "mic", deviceId} or {kind: "file", file}. */
async function start(source) {
  if (session) return;
  const current = { base: timelineBase, client: null, early: [], stopping: false, source };
  session = current;
  clearError();
  setRunning(true);
  ui.stop.disabled = true; // until the input is open
  current.input = new AudioInput({
    onFrame: (buffer) => (current.client ? current.client.sendAudio(buffer) : current.early.push(buffer)),
    onLevel: showLevel,
    onEnded: () => stop(),
  });
  try {
    if (source.kind === "file") {
      setStatus("starting", `Decoding ${source.file.name}…`);
      const seconds = await current.input.openFile(source.file);
      showNotice(`Streaming ${source.file.name} (${formatClock(seconds)})`);
    } else {
      setStatus("starting", "Opening the microphone…");
      await current.input.openMicrophone(source.deviceId);
      refreshMicrophones(); // labels are only visible once permission is given
    }
  } catch (error) {
    showError(error.message, error.kind ? `microphone-${error.kind}` : "input");
    setStatus("idle", "Idle");
    endSession(current);
    return;
  }
  const sampleRate = current.input.sampleRate;
  const url = listenUrl(location.href, { sampleRate, language: ui.language.value, token: params.get("token") });
  current.client = new ListenClient(url, {
    sampleRate,
    handlers: {
      onState: setStatus,
      onPartial: (message) => {
        showDetected(message, current);
        showPartial(message, current.base);
      },
      onFinal: (message) => {
        showDetected(message, current);
        addFinal(message, current.base);
      },
      onServerError: (message) =>
        showError(`Server error ${message.code}: ${message.message}`, "server", message.code),
      onConnectionError: (text) => (text ? showError(text, "connection") : clearError("connection", "server")),
      onFailed: () => abort(current),
    },
  });
  current.client.connect();
  current.early.splice(0).forEach((buffer) => current.client.sendAudio(buffer));
  ui.stop.disabled = false;
}

/** Stops capturing, sends what is left, then `stop`, and waits for the server's `end`. */
async function stop() {
  const current = session;
  if (!current || current.stopping || !current.client) return;
  current.stopping = true;
  ui.stop.disabled = true;
  setStatus("finishing", "Finishing…");
  await current.input.stop(); // the last partial frame goes out through onFrame
  const end = await current.client.finish();
  timelineBase = Math.max(transcript.end, current.base + (end?.duration ?? current.client.secondsSent));
  showPartial(null);
  endSession(current);
}

/** The stream failed for good (refused, or unreachable after retries): stop capturing. */
async function abort(current) {
  if (current.stopping) return;
  current.stopping = true;
  await current.input.stop();
  timelineBase = Math.max(transcript.end, current.base + current.client.secondsSent);
  showPartial(null);
  endSession(current);
}

function endSession(current) {
  if (session === current) session = null;
  setRunning(false);
  showLevel(0);
}

function setRunning(running) {
  ui.start.disabled = running;
  ui.stop.disabled = !running;
  ui.mic.disabled = running;
  ui.language.disabled = running;
  ui.file.disabled = running;
  document.body.classList.toggle("running", running);
}

// -- transcript ----------------------------------------------------------------

function addFinal(message, base) {
  const added = transcript.add({ text: message.text, start: message.start + base, end: message.end + base });
  keepScrolledToEnd(() => {
    if (added) {
      if (added.newLine) ui.lines.append(lineElement(added.line));
      const element = ui.lines.lastElementChild;
      element.append(finalElement(added.entry));
      element.dataset.end = added.line.end.toFixed(2);
    }
    // A final replaces the partial it grew from; the next partial goes on after it.
    ui.partial.textContent = "";
    placePartial(false);
    updatePlaceholder();
  });
}

/** An utterance line: its start time shows as a chip before it (CSS, `data-time`). */
function lineElement(line) {
  const element = document.createElement("div");
  element.className = "line";
  element.dataset.start = line.start.toFixed(2);
  element.dataset.end = line.end.toFixed(2);
  element.dataset.time = formatClock(line.start);
  return element;
}

function finalElement(entry) {
  const element = document.createElement("span");
  element.className = "final";
  element.textContent = entry.text;
  element.dataset.start = entry.start.toFixed(2);
  element.dataset.end = entry.end.toFixed(2);
  element.title = `${formatTimestamp(entry.start, ".")} → ${formatTimestamp(entry.end, ".")}`;
  return element;
}

/** Shows a partial message (null: clears it) in place, at once: it replaces the previous one. */
function showPartial(message, base = 0) {
  const text = message?.text ?? "";
  const start = Number(message?.start) + base;
  // After a pause the partial begins the next line, with its own time; else it continues the last line.
  const newLine = Boolean(text) && Number.isFinite(start) && transcript.startsLine(start);
  const time = newLine ? formatClock(start) : "";
  if (ui.partial.textContent === text && ui.pending.dataset.time === time) return;
  keepScrolledToEnd(() => {
    ui.partial.textContent = text; // replaced in place, never appended
    ui.pending.dataset.time = time;
    placePartial(newLine);
    updatePlaceholder();
  });
}

/** Moves the partial to the end of the last line, or to the pending line (a new utterance). */
function placePartial(newLine) {
  const host = newLine || !ui.lines.lastElementChild ? ui.pending : ui.lines.lastElementChild;
  if (ui.partial.parentElement !== host) host.append(ui.partial);
  ui.pending.hidden = host !== ui.pending || ui.partial.textContent === "";
}

function updatePlaceholder() {
  ui.placeholder.hidden = !transcript.isEmpty || ui.partial.textContent !== "";
}

/** Applies a change, then follows the end of the text if the reader was already there. */
function keepScrolledToEnd(change) {
  const box = ui.transcript;
  const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
  change();
  if (atEnd) box.scrollTop = box.scrollHeight;
}

function clearTranscript() {
  transcript.clear();
  ui.pending.append(ui.partial); // out of the lines before they go
  ui.lines.replaceChildren();
  if (!session) {
    ui.partial.textContent = "";
    timelineBase = 0;
  }
  placePartial(true);
  updatePlaceholder();
}

// -- copy and download -----------------------------------------------------------

async function copyTranscript() {
  const text = transcript.toText();
  if (!text) return showNotice("Nothing to copy yet");
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No async clipboard (plain http on another host): the selection fallback.
    const area = Object.assign(document.createElement("textarea"), { value: text });
    document.body.append(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    if (!copied) return showNotice("Copying is blocked here; use a download");
  }
  showNotice("Copied");
}

function download(extension, type, content) {
  if (transcript.isEmpty) return showNotice("Nothing to download yet");
  const stamp = new Date().toISOString().slice(0, 19).replace(/[T:]/g, "-");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([content], { type: `${type};charset=utf-8` }));
  link.download = `transcript-${stamp}.${extension}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

// -- status, errors, level ---------------------------------------------------------

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function showError(text, kind, code = "") {
  ui.error.textContent = text;
  ui.error.dataset.kind = kind;
  ui.error.dataset.code = code;
  ui.error.hidden = false;
}

/** Hides the error; given kinds, only an error of one of those kinds. */
function clearError(...kinds) {
  if (kinds.length && !kinds.includes(ui.error.dataset.kind)) return;
  ui.error.hidden = true;
  ui.error.textContent = "";
  ui.error.dataset.kind = "";
  ui.error.dataset.code = "";
}

function showNotice(text) {
  ui.notice.textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (ui.notice.textContent = ""), 3000);
}

/** With "Detect automatically", says which language the server detected (partials and finals carry it once known). */
function showDetected(message, current) {
  if (ui.language.value !== "auto" || !message.language || current.detected === message.language) return;
  current.detected = message.language;
  showNotice(`Detected language: ${languageName(message.language)}`);
}

function showLevel(level) {
  ui.level.style.setProperty("--level", level.toFixed(3));
  ui.level.setAttribute("aria-valuenow", level.toFixed(2));
}

// -- choices: microphone and language -------------------------------------------------

async function refreshMicrophones() {
  const chosen = ui.mic.value || remembered("mic");
  const mics = await listMicrophones().catch(() => []);
  const options = mics
    .filter((mic) => mic.deviceId && mic.deviceId !== "default")
    .map((mic) => new Option(mic.label, mic.deviceId));
  ui.mic.replaceChildren(new Option("Default microphone", ""), ...options);
  if (options.some((option) => option.value === chosen)) ui.mic.value = chosen;
}

function chooseLanguage(code) {
  if (!code) return;
  if (![...ui.language.options].some((option) => option.value === code)) {
    ui.language.append(new Option(code, code)); // a deep link may name any code; the server judges it
  }
  ui.language.value = code;
}

const displayNames = typeof Intl.DisplayNames === "function" ? new Intl.DisplayNames(["en"], { type: "language" }) : null;

/** "German (de)"; Whisper's own codes that are not ISO (jw, haw) may have no name: the code alone. */
function languageName(code) {
  let name = "";
  try {
    name = displayNames?.of(code) ?? "";
  } catch {
    // not a code Intl knows
  }
  return name && name !== code ? `${name} (${code})` : code;
}

/** The languages the loaded model knows (its facts, from /healthz), the server's default first, then auto. */
async function offerModelLanguages() {
  let facts;
  try {
    const response = await fetch(new URL("healthz", location.href), { cache: "no-store" });
    facts = response.ok ? await response.json() : null;
  } catch {
    facts = null;
  }
  if (!Array.isArray(facts?.languages) || !facts.languages.length) return; // keep the page's own list
  const wanted = linkedLanguage || remembered("language"); // the reader's own choice, else the server's default
  const fallback = facts.languages.includes(facts.default_language) ? facts.default_language : facts.languages[0];
  const others = facts.languages
    .filter((code) => code !== fallback)
    .map((code) => new Option(languageName(code), code))
    .sort((a, b) => a.text.localeCompare(b.text));
  ui.language.replaceChildren(
    new Option(languageName(fallback), fallback),
    new Option("Detect automatically", "auto"),
    ...others,
  );
  ui.language.dataset.model = facts.model ?? "";
  // A deep link keeps its code (the server judges it); a remembered one the model lacks gives way to the default.
  if (linkedLanguage || wanted === "auto" || facts.languages.includes(wanted)) chooseLanguage(wanted);
  else ui.language.value = facts.default_language === "auto" ? "auto" : fallback;
}

function remembered(key) {
  try {
    return localStorage.getItem(`asr.${key}`) ?? "";
  } catch {
    return "";
  }
}

function remember(key, value) {
  try {
    localStorage.setItem(`asr.${key}`, value);
  } catch {
    // storage disabled: choices simply are not kept
  }
}

// -- wiring -------------------------------------------------------------------------------

const linkedLanguage = params.get("language");
chooseLanguage(linkedLanguage || remembered("language"));
offerModelLanguages();
refreshMicrophones();
navigator.mediaDevices?.addEventListener?.("devicechange", refreshMicrophones);

ui.start.addEventListener("click", () => start({ kind: "mic", deviceId: ui.mic.value }));
ui.stop.addEventListener("click", () => stop());
ui.file.addEventListener("change", () => {
  const [file] = ui.file.files;
  ui.file.value = ""; // choosing the same file again streams it again
  if (file) start({ kind: "file", file });
});
ui.mic.addEventListener("change", () => remember("mic", ui.mic.value));
ui.language.addEventListener("change", () => remember("language", ui.language.value));
ui.copy.addEventListener("click", copyTranscript);
ui.downloadTxt.addEventListener("click", () => download("txt", "text/plain", transcript.toText()));
ui.downloadSrt.addEventListener("click", () => download("srt", "application/x-subrip", transcript.toSrt()));
ui.downloadVtt.addEventListener("click", () => download("vtt", "text/vtt", transcript.toVtt()));
ui.clear.addEventListener("click", clearTranscript);
ui.showTimes.addEventListener("change", () => ui.transcript.classList.toggle("times", ui.showTimes.checked));
window.addEventListener("pagehide", () => session?.client?.close());

/** A handle for debugging from the console and for the browser tests. */
window.asrPage = {
  transcript,
  get state() {
    return ui.status.dataset.state;
  },
  get sampleRate() {
    return session?.input?.sampleRate ?? 0;
  },
  get url() {
    return session?.client?.url ?? "";
  },
  /** Sends a raw text frame on the open stream (e.g. a malformed control message). */
  sendText: (text) => session?.client?.sendText(text) ?? false,
};
