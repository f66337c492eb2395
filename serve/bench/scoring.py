"""The load benchmark's arithmetic: text normalization and WER, lags, keep-up, capacity.

Pure functions over plain values — no sockets, files or clocks — so every rule the
benchmark reports by is unit-tested (tests/bench/test_bench_scoring.py) and reusable:
``from serve.bench.scoring import normalize_text, wer``.

Times: ``arrival`` is when a message came in on the client's clock (``serve.client`` counts
it from ``ready``); ``start``/``end`` are seconds of the stream's audio (protocol v1). A stream
replayed at ``speed`` X whose sample 0 was "recorded" at ``started`` on that clock has audio
time ``t`` due at ``started + t / speed``; a lag is arrival minus due, in wall seconds. Due is when that
sample was recorded, not when the chunk holding it left (up to a chunk later): every lag includes the
chunking, as a microphone page's users live it.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# -- text -------------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_ENDINGS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_CHARACTERS = str.maketrans({"‘": "'", "’": "'", "`": "'", "&": " and "})
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor"}
"""Spoken forms, because references spell them out (LibriSpeech: MISTER) and Whisper abbreviates."""


def number_to_words(n: int) -> str:
    """``1462`` -> ``one thousand four hundred sixty two`` (American style: no "and")."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    for scale, name in _SCALES:
        if n >= scale:
            head, rest = divmod(n, scale)
            return number_to_words(head) + " " + name + ("" if rest == 0 else " " + number_to_words(rest))
    raise AssertionError("unreachable")  # pragma: no cover


def year_to_words(n: int) -> str:
    """How a year is read: 1455 -> fourteen fifty five, 1905 -> nineteen oh five, 1900 -> nineteen hundred."""
    century, rest = divmod(n, 100)
    if n < 1100 or n % 1000 < 10:
        return number_to_words(n)  # 1066 is read as a number; 2000, 2005 as "two thousand (five)"
    if rest == 0:
        return number_to_words(century) + " hundred"
    return number_to_words(century) + " " + ("oh " + _ONES[rest] if rest < 10 else number_to_words(rest))


def ordinal_to_words(n: int) -> str:
    """``21`` -> ``twenty first``."""
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL_ENDINGS:
        words[-1] = _ORDINAL_ENDINGS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _digits_to_words(token: str, grouped: bool) -> str:
    """An integer written in digits, read the way a person would have said it."""
    value = int(token)
    if not grouped and (len(token) > 6 or (len(token) > 1 and token.startswith("0"))):
        return " ".join(_ONES[int(d)] for d in token)  # a code or a digit string: 0019, 10001902
    if len(token) == 4 and not grouped:
        return year_to_words(value)
    return number_to_words(value)


def _spell_numbers(text: str) -> str:
    text = re.sub(r"\$(\d[\d,]*)", r"\1 dollars", text)
    text = re.sub(r"(\d)\s*%", r"\1 percent", text)
    text = re.sub(
        r"\b(\d+)\.(\d+)\b",
        lambda m: _digits_to_words(m.group(1), grouped=True) + " point " + " ".join(_ONES[int(d)] for d in m.group(2)),
        text,
    )
    text = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: ordinal_to_words(int(m.group(1))), text)
    text = re.sub(
        r"\b\d{1,3}(?:,\d{3})+\b", lambda m: _digits_to_words(m.group(0).replace(",", ""), grouped=True), text
    )
    return re.sub(r"\d+", lambda m: " " + _digits_to_words(m.group(0), grouped=False) + " ", text)


def normalize_text(text: str) -> str:
    """Text as compared for WER: lower case words separated by single spaces.

    Numbers in digits are spelled out (the references spell them: "fourteen fifty-five"),
    hyphens split words ("forty-two" -> "forty two"), punctuation goes except an
    apostrophe inside a word ("beauty's"), "mr"/"mrs"/"dr" become "mister"/"missus"/"doctor".
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.translate(_CHARACTERS)
    text = _spell_numbers(text)
    text = text.replace(".", "")  # "i.e." -> "ie", "mr." -> "mr": a dot never separates spoken words
    text = re.sub(r"[^\w']+|_", " ", text)
    text = re.sub(r"(?<!\w)'+|'+(?!\w)", " ", text)  # quotes, not apostrophes: 'em -> em
    return " ".join(_ABBREVIATIONS.get(word, word) for word in text.split())


@dataclass(frozen=True)
class WordErrors:
    """Edit operations turning a reference into a hypothesis, in normalized words."""

    substitutions: int
    deletions: int
    insertions: int
    reference_words: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        """Errors per reference word; an empty reference counts each inserted word as one error."""
        return self.errors / max(self.reference_words, 1)

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_words + other.reference_words,
        )


NO_ERRORS = WordErrors(0, 0, 0, 0)


def word_errors(reference: str, hypothesis: str) -> WordErrors:
    """Levenshtein alignment (jiwer) of the normalized texts."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref or not hyp:
        return WordErrors(0, len(ref.split()), len(hyp.split()), len(ref.split()))
    import jiwer

    out = jiwer.process_words(ref, hyp)
    return WordErrors(out.substitutions, out.deletions, out.insertions, len(ref.split()))


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of one hypothesis after ``normalize_text``."""
    return word_errors(reference, hypothesis).wer


def pooled_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """Corpus WER of (reference, hypothesis) pairs: all errors over all reference words."""
    return sum((word_errors(ref, hyp) for ref, hyp in pairs), NO_ERRORS).wer


# -- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default); None if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    count: int
    min: float | None
    max: float | None
    mean: float | None
    p50: float | None
    p95: float | None


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        return Summary(0, None, None, None, None, None)
    return Summary(
        len(values), min(values), max(values), sum(values) / len(values), percentile(values, 50), percentile(values, 95)
    )


# -- lags ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One server message as the client saw it."""

    type: str
    arrival: float
    text: str = ""
    start: float | None = None
    end: float | None = None
    word_ends: tuple[float, ...] = ()
    """A final's words' ``end`` times (audio seconds), in order."""
    word_texts: tuple[str, ...] = ()
    """The same words as the final spells them (each ``word``), one per ``word_ends``; may be empty."""


def received(message: dict[str, Any], arrival: float) -> Received:
    """A protocol message (a parsed JSON object) as ``Received``; malformed numbers are left out."""
    words = _timed_words(message.get("words"))
    return Received(
        str(message["type"]), arrival, str(message.get("text") or ""), as_number(message.get("start")),
        as_number(message.get("end")), tuple(end for _, end in words), tuple(text for text, _ in words),
    )


def _timed_words(words: Any) -> list[tuple[str, float]]:
    """(``word``, ``end``) of each word of a final's ``words`` list with a numeric ``end``; a missing ``word`` is ""."""
    if not isinstance(words, list):
        return []
    timed = ((w.get("word"), as_number(w.get("end"))) for w in words if isinstance(w, dict))
    return [(text if isinstance(text, str) else "", end) for text, end in timed if end is not None]


def word_ends(words: Any) -> tuple[float, ...]:
    """The ``end`` of each word of a final's ``words`` list; anything malformed is left out."""
    return tuple(end for _, end in _timed_words(words))


def as_number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class LagPoint:
    """A final: when its audio ended (audio seconds), when that was due and how late it came."""

    audio_end: float
    due: float
    """Wall seconds after the stream started at which its last sample had been recorded."""
    lag: float


def finals(messages: Sequence[Received]) -> list[Received]:
    return [m for m in messages if m.type == "final"]


def transcript(messages: Sequence[Received]) -> str:
    """The stream's transcript: its finals, in order."""
    return " ".join(m.text.strip() for m in finals(messages) if m.text.strip())


def final_lags(messages: Sequence[Received], started: float, speed: float = 1.0) -> list[LagPoint]:
    """Per final: arrival - (started + end / speed)."""
    points = []
    for m in finals(messages):
        if m.end is None:
            continue
        due = m.end / speed
        points.append(LagPoint(m.end, due, m.arrival - started - due))
    return points


@dataclass(frozen=True)
class WordSight:
    """A word of a final: its audio end, when it was first on screen and when it became final.

    ``seen`` and ``final`` are arrivals on the client's clock; ``seen <= final`` always.
    """

    word: str
    """As the final spells it ("" when the final listed no text for it)."""
    end: float
    seen: float
    final: float


def word_sights(messages: Sequence[Received]) -> list[WordSight]:
    """Every word of every final (each ``word_ends`` entry, in order) with when it was first shown.

    Words are compared after ``normalize_text``, by position in the stream's transcript. A
    message shows the committed words (the finals before it) followed by its own words: a
    partial is the tentative text after the last final, so a partial that came when ``c``
    normalized words were committed puts its ``k``-th normalized word at position ``c + k``.
    A final's word that normalizes to the words at positions ``p..q`` was *seen* at the
    arrival of the first message (partial, or its own final) showing exactly those words at
    those positions. So:

    - a word a partial showed and a later final kept counts from that partial, even when
      finals in between committed the words before it;
    - a word revised in partials ("there" then "their") counts from the first message that
      showed its final form at its place, not from the form it replaced (a form shown, taken
      back and shown again counts from its first showing: the reader saw it then);
    - a word only ever shown by its final counts from that final (seen lag = word final lag).

    Positional, hence conservative: a partial that had an extra or a missing word before it
    shows it at another position, and it counts from a later message. A word spelled as
    several normalized words ("1465," -> "fourteen sixty five") is seen when all of them
    were shown at once; one that normalizes to nothing, and the words of a final that lists
    no word texts, count from their final.
    """
    sights: list[WordSight] = []
    committed = 0  # normalized words of the finals so far
    shown: list[tuple[int, tuple[str, ...], float]] = []  # partials: (committed before it, its words, arrival)
    for m in messages:
        if m.type == "partial":
            words = tuple(normalize_text(m.text).split())
            if words:
                shown.append((committed, words, m.arrival))
        elif m.type == "final":
            if len(m.word_texts) != len(m.word_ends):  # no word texts: its words count from the final
                committed += len(normalize_text(m.text).split())
                sights.extend(WordSight("", end, m.arrival, m.arrival) for end in m.word_ends)
            else:
                for text, end in zip(m.word_texts, m.word_ends, strict=True):
                    tokens = tuple(normalize_text(text).split())
                    seen = m.arrival
                    if tokens:
                        for before, words, arrival in shown:
                            at = committed - before  # where this word starts in that partial's words
                            if words[at : at + len(tokens)] == tokens:
                                seen = arrival
                                break
                    committed += len(tokens)
                    sights.append(WordSight(text.strip(), end, seen, m.arrival))
            # A partial that ends before the committed text can show no later word.
            shown = [s for s in shown if s[0] + len(s[1]) > committed]
    return sights


def word_lags(messages: Sequence[Received], started: float, speed: float = 1.0) -> list[float]:
    """Per word of every final (``word_sights``): arrival of its final - (started + word end / speed).

    How long each word waited to become final. A policy that commits only at pauses makes few,
    long finals: their final lags (at their last word) are short while their first words waited long.
    """
    return [w.final - started - w.end / speed for w in word_sights(messages)]


def seen_lags(messages: Sequence[Received], started: float, speed: float = 1.0) -> list[float]:
    """Per word of every final (``word_sights``, the words ``word_lags`` counts, in the same order):
    when it was first shown, in a partial or its final, - (started + word end / speed).

    How long after a word was spoken a reader first saw it: never more than its word final lag.
    """
    return [w.seen - started - w.end / speed for w in word_sights(messages)]


def onset_lags(messages: Sequence[Received], started: float, speed: float = 1.0, gap: float = 0.5) -> list[float]:
    """Time to first text after each speech onset.

    An onset is the start of the stream's first final, or of a final that begins more than
    ``gap`` seconds after the previous final ended. Its lag is the arrival of the first
    partial or final with text, received after the previous final, whose audio reaches past
    the onset (``end > onset``), minus when the onset was due (``started + onset / speed``).
    """
    lags = []
    previous_index, previous_end = -1, None
    for index, m in enumerate(messages):
        if m.type != "final" or m.start is None or m.end is None:
            continue
        if previous_end is None or m.start > previous_end + gap:
            onset = m.start
            for candidate in messages[previous_index + 1 : index + 1]:
                if (
                    candidate.type in ("partial", "final")
                    and candidate.text.strip()
                    and candidate.end is not None
                    and candidate.end > onset
                ):
                    lags.append(candidate.arrival - started - onset / speed)
                    break
        previous_index, previous_end = index, m.end
    return lags


def out_of_order_finals(messages: Sequence[Received], tolerance: float = 0.01) -> int:
    """Finals that start before the previous one ended (the protocol says they never overlap)."""
    count, previous_end = 0, None
    for m in finals(messages):
        if m.start is None or m.end is None:
            continue
        if m.end < m.start - tolerance or (previous_end is not None and m.start < previous_end - tolerance):
            count += 1
        previous_end = m.end
    return count


# -- keeping up ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeepUp:
    """Whether a stream's final lag stayed flat over the stream.

    ``slope`` is the least-squares slope of lag against due time (wall seconds of lag
    gained per wall second of audio); ``growth`` is that slope over the span of due times,
    i.e. how much later the end of the stream was than its start. A stream fell behind
    when both exceed their limits: a steady slope above ``max_slope`` that added more
    than ``max_growth`` seconds. Requiring both keeps jitter between two finals a few
    seconds apart (large slope, small growth) and a slow drift on a long stream that never
    matters (tiny slope) from counting as falling behind.
    """

    kept_up: bool
    slope: float | None
    growth: float | None


def keep_up(points: Sequence[LagPoint], max_slope: float = 0.1, max_growth: float = 1.0) -> KeepUp:
    if len(points) < 2:
        return KeepUp(True, None, None)
    xs = [p.due for p in points]
    ys = [p.lag for p in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return KeepUp(True, None, None)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    growth = slope * (max(xs) - min(xs))
    return KeepUp(not (slope > max_slope and growth > max_growth), slope, growth)


# -- capacity --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPoint:
    """One run of N concurrent streams, reduced to what capacity is judged on."""

    streams: int
    p95_final_lag: float | None
    wer: float
    offline_wer: float | None
    """None when no offline reference was computed: WER is then not judged."""
    failed_streams: int = 0
    """Streams that errored, closed early or never sent ``end``."""


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...]


def judge(point: LoadPoint, slo: float = 2.0, wer_ratio: float = 1.10, wer_slack: float = 0.0) -> Verdict:
    """A run passes when p95 final lag <= slo, WER <= wer_ratio x offline WER + wer_slack, no stream failed."""
    reasons = []
    if point.failed_streams:
        reasons.append(f"{point.failed_streams} stream(s) failed")
    if point.p95_final_lag is None:
        reasons.append("no finals")
    elif point.p95_final_lag > slo:
        reasons.append(f"p95 final lag {point.p95_final_lag:.2f} s > {slo:g} s")
    if point.offline_wer is not None:
        limit = wer_ratio * point.offline_wer + wer_slack
        if point.wer > limit + 1e-12:
            reasons.append(f"WER {point.wer:.3f} > {limit:.3f}")
    return Verdict(not reasons, tuple(reasons))


def capacity(
    points: Iterable[LoadPoint], slo: float = 2.0, wer_ratio: float = 1.10, wer_slack: float = 0.0
) -> int | None:
    """The largest N that passed with every smaller N tried passing too; None if the smallest failed.

    Demanding the smaller loads pass as well keeps a lucky run above a failed one from
    being reported as capacity.
    """
    best = None
    for point in sorted(points, key=lambda p: p.streams):
        if not judge(point, slo, wer_ratio, wer_slack).passed:
            break
        best = point.streams
    return best


# -- server figures ------------------------------------------------------------------------------


def flat_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """``/metrics/summary`` with its figures one level up (the service nests them per deployment, e.g. ``whisper``)."""
    flat = {}
    for value in summary.values():
        if isinstance(value, dict):
            flat.update(value)
    flat.update(summary)
    return flat


def _as_histogram(value: object) -> dict[int, int]:
    """``{"1": 10, "4": 3}`` (size -> batches) or ``[1, 4, 4]`` (one size per batch) as {size: batches}."""
    if isinstance(value, dict):
        return {int(size): int(count) for size, count in value.items()}
    if isinstance(value, list):
        histogram: dict[int, int] = {}
        for size in value:
            histogram[int(size)] = histogram.get(int(size), 0) + 1
        return histogram
    raise ValueError(f"not a batch size histogram: {value!r}")


def histogram_delta(before: object, after: object) -> dict[int, int] | None:
    """Batches counted between two readings of a cumulative histogram; None if unreadable.

    When a count went down the server restarted in between, and ``after`` alone is the delta.
    """
    try:
        later = _as_histogram(after)
        earlier = _as_histogram(before) if before is not None else {}
    except (TypeError, ValueError):
        return None
    if any(later.get(size, 0) < count for size, count in earlier.items()):
        earlier = {}
    delta = {size: count - earlier.get(size, 0) for size, count in later.items()}
    return {size: count for size, count in sorted(delta.items()) if count > 0}


def histogram_items(histogram: dict[int, int] | None) -> tuple[int, float] | None:
    """(items, mean items per group) of a histogram ``{size: groups}`` (batches of windows, trips of calls); None
    when it is absent or empty."""
    groups = sum((histogram or {}).values())
    if not groups:
        return None
    items = sum(size * count for size, count in histogram.items())  # type: ignore[union-attr]
    return items, items / groups


def counter_delta(before: object, after: float) -> float:
    """Growth of a cumulative counter; ``after`` itself when it went down (a restart) or had no earlier reading."""
    if not isinstance(before, int | float) or before > after:
        return after
    return after - before
