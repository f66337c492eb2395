"""The microphone page (web/) in headless Chromium against the running service.

A WAV from the evaluation set is the fake microphone (Chromium's
``--use-file-for-fake-audio-capture``); the page streams it over ``WS /v1/listen`` and
the transcript it shows is scored against the reference and against the same model
run offline. Needs Debian's ``chromium`` (``apt-get install chromium``) and the
``service_url`` fixture (tests/conftest.py) pointing at the running application.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import tempfile
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import sync_playwright

from serve.bench.scoring import Received, word_sights

pytestmark = [pytest.mark.browser, pytest.mark.serve]

ROOT = Path(__file__).resolve().parents[2]
EVAL_DIR = Path(os.environ.get("ASR_EVAL_DIR", ROOT.parent / "shared" / "eval"))
CHROMIUM = Path("/usr/bin/chromium")
# The README's screenshot is refreshed with ASR_SCREENSHOT=1; otherwise it goes to a temp file.
SCREENSHOT = ROOT / "assets" / "page.png" if os.environ.get("ASR_SCREENSHOT") else Path(tempfile.gettempdir()) / "asr-page.png"

# What the fake microphone says: two utterances of one speaker (LibriSpeech test-clean, 10.4 s and 3.3 s) with a
# pause between them twice the service's endpointing pause (min_silence_ms, 1 s), so the page shows two lines.
SPEECH_IDS = ("ls-1089-134686-0000", "ls-1089-134686-0001")
FILE_ID = "ls-1089-134691-0001"  # 5.4 s, 16 words, for the "stream a file" path
LEAD_SILENCE_S = 1.0
PAUSE_S = 2.0
TAIL_SILENCE_S = 1.5
WER_RATIO = 1.25
WER_SLACK = 0.02

# Records what the page shows as it changes, and each text frame its sockets receive, with times on one clock
# (performance.now(), ms). Installed before the page's own scripts.
PAGE_RECORDER = """
window.__pageLog = { snapshots: [], received: [], states: [], errors: [], maxLevel: 0 };
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);  // listens before the page's own handler: t is the arrival
    this.addEventListener("message", (event) => {
      if (typeof event.data !== "string") return;
      try {
        window.__pageLog.received.push({ t: performance.now(), message: JSON.parse(event.data) });
      } catch {}
    });
  }
};
document.addEventListener("DOMContentLoaded", () => {
  const log = window.__pageLog;
  const $ = (id) => document.getElementById(id);
  const snapshot = () => {
    const partial = $("partial");
    log.snapshots.push({
      t: performance.now(),
      partialElements: document.querySelectorAll("#partial").length,
      partialChildren: partial ? partial.childElementCount : -1,
      partial: partial ? partial.textContent : null,
      partialIn: partial?.parentElement === $("pending") ? "pending" : partial?.parentElement === $("lines").lastElementChild ? "last line" : "elsewhere",
      pendingShown: !$("pending").hidden,
      // Each line's children but the partial: .final texts (null for anything else), or null for a non-line.
      lines: [...$("lines").children].map((line) => !line.classList.contains("line") ? null :
        [...line.children].filter((e) => e !== partial).map((e) => e.classList.contains("final") ? e.textContent : null)),
      finals: [...$("lines").querySelectorAll(".final")].map((e) => e.textContent),
    });
  };
  new MutationObserver(snapshot).observe($("transcript"),
    { subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ["hidden"] });
  const status = $("status");
  new MutationObserver(() => log.states.push(status.dataset.state))
    .observe(status, { attributes: true, attributeFilter: ["data-state"] });
  const error = $("error");
  new MutationObserver(() => { if (!error.hidden) log.errors.push(error.textContent); })
    .observe(error, { attributes: true, childList: true, characterData: true, subtree: true });
  const level = $("level");
  new MutationObserver(() => { log.maxLevel = Math.max(log.maxLevel, Number(level.getAttribute("aria-valuenow"))); })
    .observe(level, { attributes: true, attributeFilter: ["aria-valuenow"] });
});
"""


# -- evaluation audio ------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    id: str
    path: Path
    text: str
    duration_s: float


def _clip(clip_id: str) -> Clip:
    manifest = EVAL_DIR / "manifest.jsonl"
    if not manifest.is_file():
        pytest.fail(f"evaluation set not found at {EVAL_DIR} (set ASR_EVAL_DIR)")
    for line in manifest.read_text().splitlines():
        item = json.loads(line)
        if item["id"] == clip_id:
            return Clip(item["id"], EVAL_DIR / item["path"], item["text"], float(item["duration_s"]))
    pytest.fail(f"{clip_id} is not in {manifest}")


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1, f"{path}: expected 16-bit mono"
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2"), wav.getframerate()


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())


@dataclass(frozen=True)
class Speech:
    """What the fake microphone plays: the clips, with silence before, between and after them."""

    clips: tuple[Clip, ...]

    @property
    def text(self) -> str:
        return " ".join(clip.text for clip in self.clips)

    @property
    def duration_s(self) -> float:
        return LEAD_SILENCE_S + sum(c.duration_s for c in self.clips) + PAUSE_S * (len(self.clips) - 1) + TAIL_SILENCE_S


@pytest.fixture(scope="module")
def speech() -> Speech:
    return Speech(tuple(_clip(clip_id) for clip_id in SPEECH_IDS))


@pytest.fixture(scope="module")
def microphone_wav(speech: Speech, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The speech with silence around and between its clips: what the fake microphone plays, once."""
    parts, rates = [], set()
    for i, clip in enumerate(speech.clips):
        samples, rate = _read_wav(clip.path)
        rates.add(rate)
        parts += [np.zeros(int((PAUSE_S if i else LEAD_SILENCE_S) * rate), np.int16), samples]
    [rate] = rates
    parts.append(np.zeros(int(TAIL_SILENCE_S * rate), np.int16))
    path = tmp_path_factory.mktemp("microphone") / "speech.wav"
    _write_wav(path, np.concatenate(parts), rate)
    return path


@pytest.fixture(scope="module")
def offline_wer(speech: Speech) -> float:
    """WER of the same model on each whole clip at once: what streaming is measured against."""
    from serve.bench.offline import OfflineTranscriber

    offline = OfflineTranscriber()
    return word_error_rate(speech.text, " ".join(offline.transcribe(clip.path) for clip in speech.clips))


# -- text ----------------------------------------------------------------------------


def normalize(text: str) -> str:
    from serve.bench.scoring import normalize_text

    return normalize_text(text)


def word_error_rate(reference: str, hypothesis: str) -> float:
    from serve.bench.scoring import wer

    return wer(reference, hypothesis)


def repeated_ngrams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    seen: set[tuple[str, ...]] = set()
    repeated: set[tuple[str, ...]] = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        (repeated if gram in seen else seen).add(gram)
    return repeated


# -- browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(microphone_wav: Path) -> Iterator[Any]:
    """Debian's Chromium, headless, with the WAV as its (only, non-looping) microphone."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone_wav}%noloop",
            ],
        )
        yield chromium
        chromium.close()


@dataclass
class Socket:
    """One WebSocket the page opened, as Playwright saw it."""

    url: str
    sent: list[str | bytes] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)

    @property
    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.url).query).items()}

    @property
    def audio_frames(self) -> list[bytes]:
        return [frame for frame in self.sent if isinstance(frame, bytes)]

    def received_of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") == kind]


@dataclass
class PageSession:
    """An open page, the sockets it opened and the script errors it raised."""

    page: Any
    sockets: list[Socket] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def log(self) -> dict[str, Any]:
        return dict(self.page.evaluate("window.__pageLog"))

    def state(self) -> str:
        return str(self.page.get_attribute("#status", "data-state"))

    def wait_state(self, *states: str, timeout_s: float) -> None:
        self.page.wait_for_function(
            "states => states.includes(document.getElementById('status').dataset.state)",
            arg=list(states),
            timeout=timeout_s * 1000,
        )

    def finals(self) -> list[str]:
        return list(self.page.eval_on_selector_all("#lines > .line > .final", "els => els.map(e => e.textContent)"))

    def lines(self) -> list[dict[str, Any]]:
        """Each utterance line: its time chip as drawn (CSS ``::before``; "" when none) and its finals."""
        return list(
            self.page.eval_on_selector_all(
                "#lines > .line",
                """els => els.map(e => ({
                    chip: (c => c === "none" || c === "normal" ? "" : JSON.parse(c))(getComputedStyle(e, "::before").content),
                    start: Number(e.dataset.start), end: Number(e.dataset.end),
                    finals: [...e.querySelectorAll(".final")].map(f => ({
                        text: f.textContent, start: Number(f.dataset.start), end: Number(f.dataset.end) })),
                }))""",
            )
        )


@pytest.fixture
def open_page(browser: Any, service_url: str) -> Iterator[Any]:
    """Opens the page (with an optional query) in a fresh context, recording its sockets."""
    contexts = []

    def open_(query: str = "", *, viewport: dict[str, int] | None = None) -> PageSession:
        context = browser.new_context(viewport=viewport or {"width": 1100, "height": 640})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=service_url)
        contexts.append(context)
        page = context.new_page()
        page.add_init_script(PAGE_RECORDER)
        session = PageSession(page)
        page.on("pageerror", lambda error: session.page_errors.append(str(error)))

        def on_websocket(ws: Any) -> None:
            socket = Socket(ws.url)
            session.sockets.append(socket)
            ws.on("framesent", lambda payload: socket.sent.append(payload))
            ws.on("framereceived", lambda payload: _record_received(socket, payload))

        page.on("websocket", on_websocket)
        page.goto(service_url.rstrip("/") + "/" + query)
        page.wait_for_selector("#start:enabled")
        return session

    yield open_
    for context in contexts:
        context.close()


def _record_received(socket: Socket, payload: str | bytes) -> None:
    if isinstance(payload, str):
        socket.received.append(json.loads(payload))


# -- tests ---------------------------------------------------------------------------------


def test_microphone_transcript_matches_offline_model(open_page: Any, speech: Speech, offline_wer: float) -> None:
    session = open_page()
    page = session.page
    # The language choices are the loaded model's (its facts, from /healthz; tiny.en: English alone) and auto.
    page.wait_for_selector('#language[data-model="tiny.en"]', state="attached", timeout=15_000)
    assert page.eval_on_selector_all("#language option", "options => options.map((o) => o.value)") == ["en", "auto"]
    page.click("#start")
    started = time.monotonic()
    session.wait_state("listening", timeout_s=60)

    # Mid-transcript: a line committed and the partial of the next utterance on a line of its own (or, failing
    # that, a line with the partial after it, or any text).
    shown_lines = "document.querySelectorAll('#lines > .line').length + !document.getElementById('pending').hidden"
    partial_shown = "document.getElementById('partial').textContent.trim().length > 0"
    try:
        page.wait_for_function(f"{shown_lines} >= 2 && {partial_shown}", timeout=40_000)
    except PlaywrightTimeoutError:
        try:
            page.wait_for_function(f"{shown_lines} >= 1 && {partial_shown}", timeout=10_000)
        except PlaywrightTimeoutError:
            page.wait_for_selector("#lines .final", timeout=30_000)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))

    played_s = speech.duration_s
    time.sleep(max(0.0, started + played_s + 0.5 - time.monotonic()))
    _wait_until_text_settles(session, quiet_s=2.0, limit_s=15.0)
    sample_rate = page.evaluate("asrPage.sampleRate")
    page.click("#stop")
    session.wait_state("stopped", "failed", timeout_s=90)
    assert session.state() == "stopped", page.text_content("#status")

    # The stream: declared rate = the AudioContext's, f32le, one 1 s frame per message.
    [socket] = session.sockets
    assert urlsplit(socket.url).path == "/v1/listen"
    assert [m.get("language") for m in socket.received_of("ready")] == ["en"]
    assert socket.query == {
        "sample_rate": str(sample_rate),
        "encoding": "f32le",
        "language": "en",
        "interim_results": "true",
    }
    frames = socket.audio_frames
    assert sample_rate in (16_000, 22_050, 24_000, 32_000, 44_100, 48_000, 96_000)
    assert all(len(f) == 4 * sample_rate for f in frames[:-1]), sorted({len(f) for f in frames})
    assert 0 < len(frames[-1]) <= 4 * sample_rate and len(frames[-1]) % 4 == 0
    assert len(frames) >= played_s - 1
    assert json.loads(socket.sent[-1]) == {"type": "stop"}  # after the last audio
    assert isinstance(socket.sent[-2], bytes)
    [end] = socket.received_of("end")
    assert end["duration"] == pytest.approx(sum(len(f) for f in frames) / 4 / sample_rate, abs=0.01)

    # The transcript: one element per non-empty final, in the order they came, grouped into utterance lines.
    received_finals = [m for m in socket.received_of("final") if m["text"].strip()]
    finals = session.finals()
    assert finals == [m["text"].strip() for m in received_finals]
    assert page.eval_on_selector_all("#lines > *", "els => els.every(e => e.classList.contains('line'))")
    assert all(page.eval_on_selector_all("#lines .final", "els => els.map(e => e.title.includes('→'))"))
    lines = session.lines()
    gap, long_line = page.evaluate(
        "import('./transcript.js').then((m) => [m.LINE_GAP_SECONDS, m.LONG_LINE_SECONDS])"
    )
    assert [[f["text"] for f in line["finals"]] for line in lines] == [
        [m["text"].strip() for m in group] for group in utterance_lines(received_finals, gap, long_line)
    ]
    groups = utterance_lines(received_finals, gap, long_line)
    for line, group in zip(lines, groups, strict=True):  # one time per line: its first final's start
        assert line["start"] == pytest.approx(group[0]["start"], abs=0.005)
        assert line["chip"] == clock(group[0]["start"])
    starts = [line["start"] for line in lines]
    assert starts == sorted(starts)
    chips = sum(bool(line["chip"]) for line in lines)
    print(
        f"\npage: {len(finals)} finals in {len(lines)} lines, {chips} time chips "
        f"(one chip per final before lines: {len(finals)})"
    )
    # Finals come in pieces (words become final as two decodes agree); the pause between the clips makes two lines.
    assert chips == len(lines)
    assert len(SPEECH_IDS) <= len(lines) < len(finals), [[f["text"] for f in line["finals"]] for line in lines]
    hypothesis = " ".join(finals)
    wer = word_error_rate(speech.text, hypothesis)
    print(
        f"page WER {wer:.3f}  offline WER {offline_wer:.3f}\n  reference: {normalize(speech.text)}"
        f"\n  page:      {normalize(hypothesis)}"
    )
    assert wer <= WER_RATIO * offline_wer + WER_SLACK, (wer, offline_wer, hypothesis)

    # The partial is one element whose text is replaced, never appended to; it sits after the last line's text,
    # or on a line of its own when it begins a new utterance.
    log = session.log()
    snapshots = log["snapshots"]
    assert {s["partialElements"] for s in snapshots} == {1}
    assert {s["partialChildren"] for s in snapshots} == {0}
    assert all(None not in s["lines"] for s in snapshots), "a child of #lines that is not a .line"
    assert all(None not in line for s in snapshots for line in s["lines"]), "a child of a .line that is not a .final"
    assert {s["partialIn"] for s in snapshots} <= {"pending", "last line"}
    assert "pending" in {s["partialIn"] for s in snapshots if s["partial"].strip() and s["lines"]}, (
        "the second utterance's partial never began a line of its own"
    )
    partials = [s["partial"] for s in snapshots if s["partial"].strip()]
    assert len(set(partials)) >= 2, partials
    for s in snapshots:  # a final that came from a partial is never shown twice
        shown_finals = normalize(" ".join(s["finals"]))
        partial = normalize(s["partial"])
        assert not (len(partial.split()) >= 2 and shown_finals.endswith(partial)), s
    assert not repeated_ngrams(hypothesis) - repeated_ngrams(speech.text)
    assert page.text_content("#partial") == "" and page.is_hidden("#pending")
    assert page.is_hidden("#error"), page.text_content("#error")
    assert log["maxLevel"] > 0.2  # the meter moved with the speech
    assert not session.page_errors

    # Partials are shown at once: each partial message's text is on the page before the next message arrives.
    received = log["received"]
    delays = []
    for i, r in enumerate(received):
        if r["message"]["type"] != "partial":
            continue
        text = r["message"]["text"]
        until = received[i + 1]["t"] if i + 1 < len(received) else r["t"] + 1000
        shown = [s["t"] for s in snapshots if r["t"] <= s["t"] <= until and s["partial"] == text]
        if shown:
            delays.append(shown[0] - r["t"])
        else:  # the same text as the partial already shown: nothing to change
            before = [s["partial"] for s in snapshots if s["t"] <= r["t"]]
            assert (before[-1] if before else "") == text, (text, before[-1:])
    assert delays and max(delays) < 250, delays
    # ... so words are read before they are final: each final word's first sight on the page, by the bench's rule.
    sights = word_sights(page_messages(snapshots))
    assert [w.word for w in sights] == [w for text in finals for w in text.split()]
    early = [w.final - w.seen for w in sights if w.seen < w.final]
    print(
        f"page: {len(early)}/{len(sights)} words shown as a partial before their final, "
        f"by {statistics.median(early) / 1000 if early else 0:.2f} s (median); partials on the page "
        f"{max(delays):.0f} ms after they arrived at most"
    )
    assert len(early) >= len(sights) / 2, [(w.word, w.seen, w.final) for w in sights]

    # Copy and download give the lines: .txt one per line, .srt/.vtt one cue per line.
    line_texts = [" ".join(f["text"] for f in line["finals"]) for line in lines]
    expected_text = "".join(f"{text}\n" for text in line_texts)
    page.click("#copy")
    assert page.evaluate("navigator.clipboard.readText()") == expected_text
    exports = {}
    for kind in ("txt", "srt", "vtt"):
        with page.expect_download() as download:
            page.click(f"#download-{kind}")
        assert download.value.suggested_filename.endswith(f".{kind}")
        exports[kind] = Path(download.value.path()).read_text(encoding="utf-8")
    assert exports["txt"] == expected_text
    assert normalize(exports["txt"]) == normalize(hypothesis)
    assert exports["vtt"].startswith("WEBVTT\n\n")
    for kind, comma in (("srt", ","), ("vtt", ".")):
        cues = re.findall(rf"(\d\d:\d\d:\d\d{comma}\d{{3}}) --> (\d\d:\d\d:\d\d{comma}\d{{3}})\n(.+)\n", exports[kind])
        assert [text for _, _, text in cues] == line_texts
        assert [(start, end) for start, end, _ in cues] == [
            (timestamp(group[0]["start"], comma), timestamp(max(m["end"] for m in group), comma)) for group in groups
        ]
        times = [t for start, end, _ in cues for t in (start, end)]
        assert times == sorted(times)


def utterance_lines(finals: list[dict[str, Any]], gap: float, long_line: float) -> list[list[dict[str, Any]]]:
    """The page's grouping (web/transcript.js), from the finals it received: a new line when a final starts more
    than ``gap`` s after the line's end, or after a sentence end once the line spans ``long_line`` s."""
    lines: list[list[dict[str, Any]]] = []
    for final in finals:
        if lines:
            start, end = lines[-1][0]["start"], max(f["end"] for f in lines[-1])
            sentence_end = re.search(r"[.?!…][\"'”’)\]]*$", lines[-1][-1]["text"].strip())
            if final["start"] - end <= gap and not (end - start >= long_line and sentence_end):
                lines[-1].append(final)
                continue
        lines.append([final])
    return lines


def page_messages(snapshots: list[dict[str, Any]]) -> list[Received]:
    """What the page showed, as messages for ``scoring.word_sights``: a final per final element added, a partial
    per change of the partial's text (its words are the final's words split on spaces; times are the page's ms)."""
    messages, finals, partial = [], 0, ""
    for s in snapshots:
        for text in s["finals"][finals:]:
            words = tuple(text.split())
            messages.append(Received("final", s["t"], text, word_ends=(0.0,) * len(words), word_texts=words))
        finals = len(s["finals"])
        if s["partial"] != partial:
            partial = s["partial"]
            messages.append(Received("partial", s["t"], partial))
    return messages


def clock(seconds: float) -> str:
    """web/transcript.js formatClock, under an hour."""
    whole = int(max(0.0, seconds))
    return f"{whole // 60}:{whole % 60:02d}"


def timestamp(seconds: float, separator: str) -> str:
    """web/transcript.js formatTimestamp."""
    ms = math.floor(max(0.0, seconds) * 1000 + 0.5)  # Math.round
    return f"{ms // 3_600_000:02d}:{ms % 3_600_000 // 60_000:02d}:{ms % 60_000 // 1000:02d}{separator}{ms % 1000:03d}"


def _wait_until_text_settles(session: PageSession, *, quiet_s: float, limit_s: float) -> None:
    """Waits until neither the finals nor the partial changed for ``quiet_s``."""
    deadline = time.monotonic() + limit_s
    last = None
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        now = session.page.evaluate(
            "[...document.querySelectorAll('#lines .final')].length + '|' + "
            "document.getElementById('partial').textContent"
        )
        if now != last:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change >= quiet_s:
            return
        time.sleep(0.25)


def test_server_errors_are_shown(open_page: Any) -> None:
    # Non-fatal: a malformed control message gets an error event; the stream goes on.
    session = open_page()
    page = session.page
    page.click("#start")
    session.wait_state("listening", timeout_s=60)
    assert page.evaluate("""asrPage.sendText('{"type": "no-such-message"}')""") is True
    page.wait_for_selector("#error:visible", timeout=10_000)
    assert "bad_message" in page.text_content("#error")
    assert page.get_attribute("#error", "data-code") == "bad_message"
    time.sleep(1.0)
    assert session.state() == "listening"
    page.click("#stop")
    session.wait_state("stopped", "failed", timeout_s=60)
    assert session.state() == "stopped"

    # Fatal: an invalid parameter is refused; the page shows it and does not retry.
    session = open_page("?language=not-a-language")
    page = session.page
    assert page.input_value("#language") == "not-a-language"
    page.click("#start")
    session.wait_state("failed", timeout_s=60)
    page.wait_for_selector("#error:visible", timeout=5_000)
    error = page.text_content("#error")
    code = page.get_attribute("#error", "data-code")
    assert code and code in error, error
    assert "Server error" in error
    time.sleep(1.5)  # longer than the first reconnect delay
    assert len(session.sockets) == 1, "a refused stream must not be retried"
    assert "reconnecting" not in session.log()["states"]
    assert page.is_enabled("#start") and page.is_disabled("#stop")


def test_stream_a_file(open_page: Any) -> None:
    clip = _clip(FILE_ID)
    session = open_page()
    page = session.page
    with page.expect_file_chooser() as chooser:
        page.click("#file")
    chooser.value.set_files(str(clip.path))
    session.wait_state("listening", "finishing", "stopped", timeout_s=60)
    # The file plays in real time; when it ends the page stops by itself.
    session.wait_state("stopped", "failed", timeout_s=clip.duration_s + 60)
    assert session.state() == "stopped", page.text_content("#status")

    [socket] = session.sockets
    rate = int(socket.query["sample_rate"])
    frames = socket.audio_frames
    assert all(len(f) == 4 * rate for f in frames[:-1])
    assert json.loads(socket.sent[-1]) == {"type": "stop"}
    # decodeAudioData resamples to the context's rate: the whole file arrives, at that rate.
    assert sum(len(f) for f in frames) / 4 / rate == pytest.approx(clip.duration_s, abs=0.15)
    hypothesis = " ".join(session.finals())
    assert word_error_rate(clip.text, hypothesis) <= 0.35, hypothesis


def test_reconnects_after_an_unexpected_close(open_page: Any) -> None:
    """A stand-in server drops the first connection (1011); the page retries and keeps one timeline."""
    session = open_page()
    page = session.page
    connections: list[Any] = []

    def stand_in_server(ws: Any) -> None:
        number = len(connections)
        connections.append(ws)
        ws.send(json.dumps({"type": "ready", "session": f"s{number}", "model": "stand-in", "sample_rate": 16000}))
        answered: list[bool] = []

        def on_message(message: str | bytes) -> None:
            if isinstance(message, bytes):
                if number == 0:
                    ws.close(code=1011, reason="restarting")
                elif not answered:
                    answered.append(True)
                    ws.send(
                        json.dumps(
                            {"type": "final", "text": "after the reconnect", "start": 0.2, "end": 0.8, "words": []}
                        )
                    )
            elif json.loads(message).get("type") == "stop":
                ws.send(json.dumps({"type": "end", "duration": 1.0}))
                ws.close(code=1000)

        ws.on_message(on_message)

    page.route_web_socket(re.compile(r".*/v1/listen.*"), stand_in_server)
    page.click("#start")
    page.wait_for_selector("#lines .final", timeout=20_000)
    states = session.log()["states"]
    assert "reconnecting" in states and states.index("reconnecting") < len(states) - 1
    assert len(connections) == 2
    # The second connection's times follow the audio already sent on the first (1 s frame).
    assert float(page.get_attribute("#lines .final", "data-start")) == pytest.approx(1.2, abs=0.01)
    assert any("lost" in e for e in session.log()["errors"])
    assert page.is_hidden("#error")  # the connection error clears once connected again
    page.click("#stop")
    session.wait_state("stopped", "failed", timeout_s=20)
    assert session.state() == "stopped"


def test_page_modules(open_page: Any) -> None:
    """The page's pure helpers: the stream URL, the retry delays, the transcript exports."""
    page = open_page().page
    result = page.evaluate(
        """async () => {
        const { listenUrl, backoffMs, RETRY } = await import("./listen-client.js");
        const { Transcript, formatTimestamp, formatClock } = await import("./transcript.js");
        const { levelFromRms } = await import("./audio-input.js");
        const t = new Transcript();
        const added = [
          t.add({ text: " Hello <there> & you ", start: 0.5, end: 1.25 }),
          t.add({ text: "   ", start: 1.3, end: 1.4 }),
          t.add({ text: "again", start: 2.25, end: 2.5 }),  // 1 s after: the same line
          t.add({ text: "Later.", start: 3.51, end: 3661.0015 }),  // more than 1 s after: a new line
        ].map((a) => a && a.newLine);
        const gap = new Transcript();
        gap.add({ text: "a", start: 0, end: 1 });
        // Continuous speech: a line that spans 15 s ends at the next sentence end.
        const long = new Transcript();
        for (const [text, start, end] of [["One.", 0, 8], ["Two", 8.2, 15], ["three.", 15.1, 16], ["Four", 16.2, 17]]) {
          long.add({ text, start, end });
        }
        return {
          secure: listenUrl("https://asr.example.com/app/index.html?language=de#x",
                            { sampleRate: 48000, language: "auto", token: "k y" }),
          plain: listenUrl("http://127.0.0.1:8000/", { sampleRate: 44100.0, language: "en" }),
          delays: [1, 2, 3, 10, 30].map((n) => [backoffMs(n, () => 0), backoffMs(n, () => 1)]),
          retry: RETRY,
          stamps: [formatTimestamp(3661.0015, ","), formatTimestamp(0, "."), formatClock(59.9), formatClock(3725)],
          text: t.toText(), srt: t.toSrt(), vtt: t.toVtt(), lines: t.lineTexts(), added,
          longLines: long.lineTexts(), startsLine: [new Transcript().startsLine(0), gap.startsLine(2), gap.startsLine(2.01)],
          levels: [levelFromRms(0), levelFromRms(1), levelFromRms(0.001), levelFromRms(0.01)],
        };
    }"""
    )
    assert result["secure"] == (
        "wss://asr.example.com/app/v1/listen?sample_rate=48000&encoding=f32le&language=auto"
        "&interim_results=true&token=k+y"
    )
    assert result["plain"] == (
        "ws://127.0.0.1:8000/v1/listen?sample_rate=44100&encoding=f32le&language=en&interim_results=true"
    )
    base, ceiling = result["retry"]["baseMs"], result["retry"]["maxMs"]
    for attempt, (low, high) in zip([1, 2, 3, 10, 30], result["delays"], strict=True):
        expected = min(ceiling, base * 2 ** (attempt - 1))
        assert (low, high) == (round(expected * 0.75), round(expected * 1.25))
    assert result["stamps"] == ["01:01:01,002", "00:00:00.000", "0:59", "1:02:05"]
    assert result["added"] == [True, None, False, True]
    assert result["lines"] == ["Hello <there> & you again", "Later."]
    assert result["text"] == "Hello <there> & you again\nLater.\n"
    assert result["srt"] == (
        "1\n00:00:00,500 --> 00:00:02,500\nHello <there> & you again\n\n2\n00:00:03,510 --> 01:01:01,002\nLater.\n"
    )
    assert result["vtt"] == (
        "WEBVTT\n\n00:00:00.500 --> 00:00:02.500\nHello &lt;there&gt; &amp; you again\n\n"
        "00:00:03.510 --> 01:01:01.002\nLater.\n"
    )
    assert result["longLines"] == ["One. Two three.", "Four"]
    assert result["startsLine"] == [True, False, True]  # a pause of more than 1 s begins a line
    assert result["levels"] == [0, 1, 0, pytest.approx(1 / 3)]
