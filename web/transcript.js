// The committed transcript (finals only), grouped into utterance lines, and its exports:
// plain text, SubRip, WebVTT.

/**
 * A final that starts more than this many seconds after the previous final ended begins a new
 * line. It is the service's endpointing pause (`streaming.vad.min_silence_ms`, 1000 ms): a
 * line is what the server treats as one turn. Protocol v1 has no utterance-end message, so
 * the gap is read from the finals' word times. Measured on the eval set's multi-speaker
 * stream: gaps inside an utterance (commas, breaths) were 0–0.9 s, between utterances 1.8–2.4 s.
 */
export const LINE_GAP_SECONDS = 1;

/**
 * Continuous speech without such a pause would make one endless line with one time: a line
 * that already spans this long also ends after a final that ends a sentence.
 */
export const LONG_LINE_SECONDS = 15;

const SENTENCE_END = /[.?!…]["'”’)\]]*$/;

/** 3.2 → "0:03", 3725 → "1:02:05": a short clock for the page. */
export function formatClock(seconds) {
  const whole = Math.max(0, Math.floor(seconds));
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  const s = String(whole % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

/** 3.2 → "00:00:03,200" (SubRip, separator ",") or "00:00:03.200" (WebVTT, separator "."). */
export function formatTimestamp(seconds, separator = ",") {
  const ms = Math.max(0, Math.round(seconds * 1000));
  const h = String(Math.floor(ms / 3_600_000)).padStart(2, "0");
  const m = String(Math.floor((ms % 3_600_000) / 60_000)).padStart(2, "0");
  const s = String(Math.floor((ms % 60_000) / 1000)).padStart(2, "0");
  return `${h}:${m}:${s}${separator}${String(ms % 1000).padStart(3, "0")}`;
}

export class Transcript {
  constructor() {
    this.finals = []; // {text, start, end}, in order, never revised
    this.lines = []; // {start, end, finals: [...]}: utterances, each one or more finals
  }

  /**
   * Adds a final; returns {entry, line, newLine} (newLine: the final began `line`), or null for
   * an empty one.
   */
  add({ text, start, end }) {
    const clean = (text ?? "").trim();
    if (!clean) return null;
    const entry = { text: clean, start: Number(start) || 0, end: Math.max(Number(end) || 0, Number(start) || 0) };
    this.finals.push(entry);
    const newLine = this.startsLine(entry.start);
    if (newLine) this.lines.push({ start: entry.start, end: entry.end, finals: [] });
    const line = this.lines[this.lines.length - 1];
    line.finals.push(entry);
    line.end = Math.max(line.end, entry.end);
    return { entry, line, newLine };
  }

  /** Whether text starting at `start` (seconds) begins a new line rather than continuing the last. */
  startsLine(start) {
    const last = this.lines[this.lines.length - 1];
    if (!last) return true;
    if (start - last.end > LINE_GAP_SECONDS) return true;
    const lastText = last.finals[last.finals.length - 1].text;
    return last.end - last.start >= LONG_LINE_SECONDS && SENTENCE_END.test(lastText);
  }

  clear() {
    this.finals = [];
    this.lines = [];
  }

  get isEmpty() {
    return this.finals.length === 0;
  }

  /** Where the transcript ends, in seconds (0 when empty). */
  get end() {
    return this.finals.length ? this.finals[this.finals.length - 1].end : 0;
  }

  /** The text of each line: its finals joined by spaces. */
  lineTexts() {
    return this.lines.map(lineText);
  }

  /** One line of text per utterance line. */
  toText() {
    return this.lines.map((line) => `${lineText(line)}\n`).join("");
  }

  /** One cue per utterance line. */
  toSrt() {
    return this.lines
      .map((l, i) => `${i + 1}\n${formatTimestamp(l.start, ",")} --> ${formatTimestamp(l.end, ",")}\n${lineText(l)}\n`)
      .join("\n");
  }

  /** One cue per utterance line. */
  toVtt() {
    const cues = this.lines.map(
      (l) => `${formatTimestamp(l.start, ".")} --> ${formatTimestamp(l.end, ".")}\n${escapeVtt(lineText(l))}\n`,
    );
    return ["WEBVTT\n", ...cues].join("\n");
  }
}

function lineText(line) {
  return line.finals.map((f) => f.text).join(" ");
}

/** Cue text may not hold "<", "&" or "-->" unescaped (WebVTT spec, cue text). */
function escapeVtt(text) {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}
