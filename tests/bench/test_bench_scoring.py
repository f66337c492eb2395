"""The load benchmark's own arithmetic: WER normalization, lags, onsets, keep-up, capacity, percentiles."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from serve.bench.scoring import (
    LagPoint,
    LoadPoint,
    Received,
    capacity,
    counter_delta,
    final_lags,
    histogram_delta,
    judge,
    keep_up,
    normalize_text,
    number_to_words,
    onset_lags,
    ordinal_to_words,
    out_of_order_finals,
    percentile,
    pooled_wer,
    received,
    seen_lags,
    summarize,
    transcript,
    wer,
    word_ends,
    word_errors,
    word_lags,
    word_sights,
    year_to_words,
)

# -- normalization and WER --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Hello, World!", "hello world"),
        ("HE HOPED THERE WOULD BE STEW", "he hoped there would be stew"),
        ('the "lower-case" being', "the lower case being"),
        ("Mr. Birket Foster's", "mister birket foster's"),
        ("Mrs. Dashwood and Dr. Watson", "missus dashwood and doctor watson"),
        ("thy beauty’s field", "thy beauty's field"),
        ("up guards and at 'em", "up guards and at em"),
        ("in black letter, i.e. the letter", "in black letter ie the letter"),
        ("psalters, etc., produced", "psalters etc produced"),
        ("  spaced\tout\n text ", "spaced out text"),
        ("salt & pepper", "salt and pepper"),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    "hypothesis,reference",
    [
        (
            "the Gutenberg, or 42-line Bible of about 1455,",
            'the Gutenberg, or "forty-two line Bible" of about fourteen fifty-five,',
        ),
        ("In 1465 Sweynheim", "In fourteen sixty-five Sweynheim"),
        ("go forward 10 meters", "go forward ten meters"),
        ("the 21st century", "the twenty first century"),
        ("1,000,000 people", "one million people"),
        ("code 0019", "code zero zero one nine"),
        ("3.5% more", "three point five percent more"),
        ("$20", "twenty dollars"),
    ],
)
def test_numbers_in_digits_match_spelled_out_references(hypothesis, reference):
    assert normalize_text(hypothesis) == normalize_text(reference)
    assert wer(reference, hypothesis) == 0.0


@pytest.mark.parametrize(
    "n,words",
    [
        (0, "zero"),
        (13, "thirteen"),
        (20, "twenty"),
        (42, "forty two"),
        (100, "one hundred"),
        (105, "one hundred five"),
        (1000, "one thousand"),
        (1462, "one thousand four hundred sixty two"),
        (2_000_017, "two million seventeen"),
    ],
)
def test_number_to_words(n, words):
    assert number_to_words(n) == words


@pytest.mark.parametrize(
    "n,words",
    [
        (1455, "fourteen fifty five"),
        (1905, "nineteen oh five"),
        (1900, "nineteen hundred"),
        (1066, "one thousand sixty six"),
        (2000, "two thousand"),
        (2005, "two thousand five"),
        (2024, "twenty twenty four"),
    ],
)
def test_year_to_words(n, words):
    assert year_to_words(n) == words


@pytest.mark.parametrize(
    "n,words", [(1, "first"), (2, "second"), (3, "third"), (12, "twelfth"), (20, "twentieth"), (21, "twenty first")]
)
def test_ordinal_to_words(n, words):
    assert ordinal_to_words(n) == words


def test_every_eval_reference_normalizes_to_plain_words(manifest):
    for item in manifest:
        normalized = normalize_text(item.text)
        assert re.fullmatch(r"([a-z']+( [a-z']+)*)?", normalized), (item.id, normalized)
        assert normalize_text(normalized) == normalized, item.id


def test_wer_counts_edits_per_reference_word():
    assert wer("the cat sat down", "the cat sat down") == 0.0
    assert wer("the cat sat down", "the dog sat down") == 0.25
    assert wer("the cat sat down", "the cat sat") == 0.25
    assert wer("the cat sat down", "the cat sat down now") == 0.25
    assert wer("the cat sat down", "") == 1.0
    errors = word_errors("a b c d", "a x c d e")
    assert (errors.substitutions, errors.deletions, errors.insertions, errors.reference_words) == (1, 0, 1, 4)


def test_wer_of_an_empty_reference_counts_inserted_words():
    assert wer("", "") == 0.0
    assert wer("", "thank you") == 2.0


def test_wer_ignores_case_and_punctuation_only_differences():
    assert wer("And so, my fellow Americans", "and so my fellow americans") == 0.0
    assert wer("and mister john dashwood", "And Mr. John Dashwood") == 0.0


def test_pooled_wer_weights_by_reference_length():
    pairs = [("a b c d", "a b c d"), ("e", "x")]
    assert pooled_wer(pairs) == pytest.approx(1 / 5)
    assert pooled_wer(pairs) != pytest.approx((wer(*pairs[0]) + wer(*pairs[1])) / 2)


# -- percentiles --------------------------------------------------------------------------------


def test_percentile_interpolates_like_numpy():
    rng = random.Random(7)
    for size in (1, 2, 5, 20, 101):
        values = [rng.uniform(-3, 10) for _ in range(size)]
        for q in (0, 5, 50, 90, 95, 99, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_known_values_and_edges():
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile(list(range(1, 21)), 95) == pytest.approx(19.05)
    assert percentile([], 95) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize():
    summary = summarize([3.0, 1.0, 2.0])
    assert (summary.count, summary.min, summary.max, summary.mean, summary.p50) == (3, 1.0, 3.0, 2.0, 2.0)
    assert summarize([]).p95 is None


# -- lags ------------------------------------------------------------------------------------------


def final(start, end, arrival, text="words"):
    return Received("final", arrival, text, start, end)


def partial(start, end, arrival, text="words"):
    return Received("partial", arrival, text, start, end)


def test_final_lag_is_arrival_minus_when_its_audio_ended():
    messages = [partial(0.0, 1.0, 101.2), final(0.0, 3.0, 104.5), final(3.2, 5.0, 105.6), Received("end", 106.0)]
    points = final_lags(messages, started=100.0)
    assert [p.audio_end for p in points] == [3.0, 5.0]
    assert [p.lag for p in points] == pytest.approx([1.5, 0.6])


def test_final_lag_scales_audio_time_by_replay_speed():
    [point] = final_lags([final(0.0, 3.0, 104.5)], started=100.0, speed=2.0)
    assert point.due == pytest.approx(1.5)
    assert point.lag == pytest.approx(3.0)


def test_onset_lag_takes_first_text_reaching_past_each_onset():
    messages = [
        partial(0.2, 1.0, 101.6, "he"),
        partial(0.2, 2.0, 102.4, "he hoped"),
        final(0.2, 2.0, 103.0, "he hoped"),
        partial(2.0, 2.3, 103.2, "um"),  # text from before the next onset: not its first text
        partial(5.0, 5.5, 105.8, ""),  # empty: nothing shown yet
        partial(5.1, 6.0, 106.4, "go"),
        final(5.1, 6.5, 107.5, "go forward"),
        partial(6.7, 7.5, 108.1, "ten"),
        final(6.7, 8.0, 109.0, "ten meters"),  # 0.2 s after the previous final: same utterance, no onset
    ]
    assert onset_lags(messages, started=100.0) == pytest.approx([1.6 - 0.2, 6.4 - 5.1])


def test_onset_lag_falls_back_to_the_final_and_scales_by_speed():
    messages = [final(1.0, 2.0, 103.0), final(4.0, 5.0, 106.0)]
    assert onset_lags(messages, started=100.0) == pytest.approx([2.0, 2.0])
    assert onset_lags(messages, started=100.0, speed=2.0) == pytest.approx([2.5, 4.0])
    assert onset_lags(messages, started=100.0, gap=5.0) == pytest.approx([2.0])


def test_transcript_joins_finals_only():
    messages = [partial(0, 1, 1, "hel"), final(0, 1, 2, " Hello "), partial(1, 2, 3, "wor"), final(1, 2, 4, "world.")]
    assert transcript(messages) == "Hello world."


def test_out_of_order_finals_counted():
    assert out_of_order_finals([final(0, 1, 1), final(1, 2, 2), final(2.5, 3, 3)]) == 0
    assert out_of_order_finals([final(0, 2, 1), final(1, 3, 2), final(4, 3.5, 3)]) == 2


def test_word_lag_is_arrival_minus_each_words_end():
    # One long final at a pause: short lag at its last word, long at its first.
    long_final = Received("final", 106.0, "a b c", 0.0, 5.0, word_ends=(1.0, 3.0, 5.0))
    messages = [partial(0.0, 1.0, 101.2), long_final, Received("final", 107.0, "d", 5.5, 6.0, word_ends=(6.0,))]
    assert word_lags(messages, started=100.0) == pytest.approx([5.0, 3.0, 1.0, 1.0])
    assert [p.lag for p in final_lags(messages, started=100.0)] == pytest.approx([1.0, 1.0])
    assert word_lags(messages, started=100.0, speed=2.0) == pytest.approx([5.5, 4.5, 3.5, 4.0])


def test_word_ends_read_from_a_finals_words_skipping_malformed_ones():
    words = [{"word": " a", "end": 1.5}, {"word": " b"}, "c", {"word": " d", "end": True}, {"word": " e", "end": 2}]
    assert word_ends(words) == (1.5, 2.0)
    assert word_ends(None) == () and word_ends({"end": 1.0}) == ()


def test_received_reads_a_protocol_message():
    message = {"type": "final", "text": "hi", "start": 1, "end": "2", "words": [{"word": " hi", "end": 1.5}]}
    assert received(message, 3.0) == Received("final", 3.0, "hi", 1.0, None, (1.5,), (" hi",))
    assert received({"type": "end", "duration": 4.0}, 5.0) == Received("end", 5.0)
    words = [{"word": " a", "end": 1.0}, {"end": 2.0}, {"word": " c"}, {"word": 7, "end": 3.0}]
    assert received({"type": "final", "words": words}, 4.0).word_texts == (" a", "", "")


# -- seen lag: when each word was first on screen --------------------------------------------------


def said(arrival, text, *words):
    """A final at ``arrival`` whose words are (text, end) pairs."""
    return Received("final", arrival, text, words[0][1] - 0.3, words[-1][1], tuple(e for _, e in words),
                    tuple(w for w, _ in words))


def test_word_seen_in_a_partial_counts_from_that_partial():
    messages = [
        partial(0.0, 1.0, 101.2, "He"),
        partial(0.0, 2.0, 102.1, "He hoped"),
        said(103.0, "He hoped", (" He", 0.4), (" hoped", 0.9)),
    ]
    sights = word_sights(messages)
    assert [(w.word, w.seen, w.final) for w in sights] == [("He", 101.2, 103.0), ("hoped", 102.1, 103.0)]
    assert seen_lags(messages, started=100.0) == pytest.approx([1.2 - 0.4, 2.1 - 0.9])
    assert word_lags(messages, started=100.0) == pytest.approx([3.0 - 0.4, 3.0 - 0.9])


def test_a_revised_word_counts_from_when_its_final_form_first_appeared():
    messages = [
        partial(0.0, 1.0, 101.0, "over there"),
        partial(0.0, 2.0, 102.0, "over their"),  # "their" first shown here
        partial(0.0, 2.5, 102.5, "over their car"),
        said(103.0, "Over their car.", (" Over", 0.5), (" their", 1.0), (" car.", 2.0)),
    ]
    assert [w.seen for w in word_sights(messages)] == [101.0, 102.0, 102.5]


def test_a_word_only_ever_final_counts_from_its_final():
    messages = [
        partial(0.0, 1.0, 101.0, "go"),
        partial(0.0, 1.0, 101.5, ""),  # cleared
        said(102.0, "Go on", (" Go", 0.5), (" on", 1.5)),
    ]
    sights = word_sights(messages)
    assert [(w.seen, w.final) for w in sights] == [(101.0, 102.0), (102.0, 102.0)]
    assert seen_lags(messages, started=100.0)[1] == pytest.approx(word_lags(messages, started=100.0)[1])


def test_a_partial_before_earlier_finals_shows_words_at_their_place_in_the_transcript():
    # The partial showed "dinner" at position 6; two finals later commit it there.
    messages = [
        partial(0.0, 3.0, 103.1, "He hoped there would be stew for dinner"),
        said(103.5, "He hoped there would be", *((" " + w, 0.2 * (i + 1)) for i, w in enumerate("He hoped there would be".split()))),
        partial(1.0, 3.0, 103.9, "stew for dinner turnips"),
        said(104.0, "stew for", (" stew", 1.4), (" for", 1.6)),
        said(105.0, "dinner, turnips", (" dinner,", 2.0), (" turnips", 2.5)),
    ]
    sights = word_sights(messages)
    assert [w.word for w in sights][-3:] == ["for", "dinner,", "turnips"]
    assert [w.seen for w in sights] == [103.1] * 8 + [103.9]
    assert [w.final for w in sights][-2:] == [105.0, 105.0]


def test_a_word_shown_at_another_position_is_not_seen_there():
    # The partial had an extra word before "stew": positions differ, so it is not credited (conservative).
    messages = [partial(0.0, 1.0, 101.0, "uh the stew"), said(102.0, "the stew", (" the", 0.5), (" stew", 1.0))]
    assert [w.seen for w in word_sights(messages)] == [102.0, 102.0]


def test_a_word_of_several_normalized_words_is_seen_when_all_were_shown():
    messages = [
        partial(0.0, 1.0, 101.0, "In fourteen sixty"),
        partial(0.0, 2.0, 102.0, "In 1465, Sweynheim"),
        said(103.0, "In 1465, Sweynheim", (" In", 0.3), (" 1465,", 1.5), (" Sweynheim", 2.0)),
    ]
    assert [w.seen for w in word_sights(messages)] == [101.0, 102.0, 102.0]


def test_seen_lag_covers_the_words_word_lag_does_and_scales_by_speed():
    messages = [
        partial(0.0, 1.0, 101.0, "a b"),
        Received("final", 102.0, "a b", 0.0, 2.0, word_ends=(1.0, 2.0)),  # no word texts: seen with the final
        partial(2.0, 3.0, 102.5, "c"),
        said(104.0, "c d", (" c", 3.0), (" d", 3.5)),
        Received("final", 105.0, "e", 4.0, 4.5),  # no words: counted by neither
    ]
    seen, final = seen_lags(messages, 100.0, speed=2.0), word_lags(messages, 100.0, speed=2.0)
    assert seen == pytest.approx([1.5, 1.0, 1.0, 2.25])
    assert final == pytest.approx([1.5, 1.0, 2.5, 2.25])
    assert all(s <= f for s, f in zip(seen, final, strict=True))


# -- keeping up --------------------------------------------------------------------------------------


def points(lags, spacing=2.0):
    return [LagPoint((i + 1) * spacing, (i + 1) * spacing, lag) for i, lag in enumerate(lags)]


def test_flat_jittery_lag_keeps_up():
    result = keep_up(points([1.1, 0.8, 1.3, 0.9, 1.2, 1.0, 1.1, 0.9]))
    assert result.kept_up
    assert abs(result.slope) < 0.1


def test_steadily_growing_lag_falls_behind():
    result = keep_up(points([1.0 + 0.5 * 2.0 * i for i in range(10)]))
    assert result.slope == pytest.approx(0.5)
    assert result.growth == pytest.approx(9.0)
    assert not result.kept_up


def test_jump_between_two_close_finals_is_not_falling_behind():
    result = keep_up(points([1.0, 1.6]))
    assert result.slope == pytest.approx(0.3)
    assert result.kept_up  # steep but only 0.6 s added


def test_slow_drift_on_a_long_stream_keeps_up():
    result = keep_up(points([1.0 + 0.05 * 2.0 * i for i in range(60)]))
    assert result.growth > 5
    assert result.kept_up


def test_keep_up_needs_two_finals_at_different_times():
    assert keep_up(points([9.0])).kept_up and keep_up(points([9.0])).slope is None
    assert keep_up([LagPoint(1, 1, 1.0), LagPoint(1, 1, 5.0)]).slope is None


# -- capacity ----------------------------------------------------------------------------------------


def run(n, p95, wer_=0.10, offline=0.10, failed=0):
    return LoadPoint(n, p95, wer_, offline, failed)


def test_capacity_is_largest_passing_n():
    assert capacity([run(1, 0.8), run(2, 0.9), run(4, 1.5), run(8, 2.6)], slo=2.0) == 4


def test_capacity_stops_at_the_first_failure():
    assert capacity([run(4, 1.0), run(1, 0.8), run(2, 2.5)], slo=2.0) == 1


def test_capacity_none_when_the_smallest_load_fails():
    assert capacity([run(1, 2.1), run(2, 1.0)], slo=2.0) is None
    assert capacity([]) is None


def test_wer_limit_is_a_ratio_of_offline():
    assert judge(run(1, 1.0, wer_=0.11, offline=0.10)).passed
    assert not judge(run(1, 1.0, wer_=0.112, offline=0.10)).passed
    assert judge(run(1, 1.0, wer_=0.112, offline=0.10), wer_slack=0.01).passed
    assert capacity([run(1, 1.0), run(2, 1.0, wer_=0.2)]) == 1


def test_failed_streams_or_no_finals_fail_a_run():
    assert judge(run(2, 1.0, failed=1)).reasons == ("1 stream(s) failed",)
    assert not judge(run(2, None)).passed


def test_without_offline_reference_wer_is_not_judged():
    assert judge(LoadPoint(1, 1.0, 0.9, None)).passed


# -- server figures ----------------------------------------------------------------------------------


def test_histogram_delta():
    assert histogram_delta({"1": 5, "2": 1}, {"1": 7, "2": 1, "4": 3}) == {1: 2, 4: 3}
    assert histogram_delta(None, [1, 4, 4]) == {1: 1, 4: 2}
    assert histogram_delta({"1": 9}, {"1": 2}) == {1: 2}  # restarted in between
    assert histogram_delta(None, "nonsense") is None


def test_counter_delta():
    assert counter_delta(10.0, 12.5) == 2.5
    assert counter_delta(None, 3) == 3
    assert counter_delta(9, 2) == 2  # restarted in between
