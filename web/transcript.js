// The committed transcript (finals only) and its exports: plain text, SubRip, WebVTT.

const PARAGRAPH_GAP_SECONDS = 2;

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
  }

  /** Adds a final; returns the stored entry, or null for an empty one. */
  add({ text, start, end }) {
    const clean = (text ?? "").trim();
    if (!clean) return null;
    const entry = { text: clean, start: Number(start) || 0, end: Math.max(Number(end) || 0, Number(start) || 0) };
    this.finals.push(entry);
    return entry;
  }

  clear() {
    this.finals = [];
  }

  get isEmpty() {
    return this.finals.length === 0;
  }

  /** Where the transcript ends, in seconds (0 when empty). */
  get end() {
    return this.finals.length ? this.finals[this.finals.length - 1].end : 0;
  }

  /** Finals joined by spaces; a pause of 2 s or more starts a new paragraph. */
  toText() {
    let out = "";
    let previous = null;
    for (const final of this.finals) {
      if (previous) out += final.start - previous.end >= PARAGRAPH_GAP_SECONDS ? "\n\n" : " ";
      out += final.text;
      previous = final;
    }
    return out ? `${out}\n` : "";
  }

  toSrt() {
    return this.finals
      .map((f, i) => `${i + 1}\n${formatTimestamp(f.start, ",")} --> ${formatTimestamp(f.end, ",")}\n${f.text}\n`)
      .join("\n");
  }

  toVtt() {
    const cues = this.finals.map(
      (f) => `${formatTimestamp(f.start, ".")} --> ${formatTimestamp(f.end, ".")}\n${escapeVtt(f.text)}\n`,
    );
    return ["WEBVTT\n", ...cues].join("\n");
  }
}

/** Cue text may not hold "<", "&" or "-->" unescaped (WebVTT spec, cue text). */
function escapeVtt(text) {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}
