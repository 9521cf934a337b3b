from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from converters.align import Mention, align_mentions, clean_surface


def spans(text: str, mentions: list[tuple[str, str]]) -> list[tuple[int, int, str, str]]:
    found, _ = align_mentions(text, [Mention(t, label) for t, label in mentions])
    return [(s.start, s.end, s.text, s.label) for s in found]


def test_exact_and_repeated_mentions_take_successive_occurrences() -> None:
    text = "Paris is big. I love Paris. Paris!"
    got = spans(text, [("Paris", "LOC"), ("Paris", "LOC"), ("Paris", "LOC")])
    assert [(s, e) for s, e, _, _ in got] == [(0, 5), (21, 26), (28, 33)]


def test_nested_shorter_entity_does_not_steal_longer_span() -> None:
    text = "America is where Bank of America has its seat."
    got = spans(text, [("America", "LOC"), ("Bank of America", "ORG")])
    assert got == [(0, 7, "America", "LOC"), (17, 32, "Bank of America", "ORG")]
    # a nested surface with no other place does not take the longer entity's span
    assert spans("Bank of America", [("America", "LOC"), ("Bank of America", "ORG")]) == [
        (0, 15, "Bank of America", "ORG")
    ]
    # even when the nested surface comes first in the text only inside the longer one
    got = spans("Bank of America and America", [("Bank of America", "ORG"), ("America", "LOC")])
    assert got == [(0, 15, "Bank of America", "ORG"), (20, 27, "America", "LOC")]


def test_case_quotes_padding_and_trailing_dot() -> None:
    text = "We met Ada Lovelace. Then “Charles Babbage” arrived in New  York."
    got = spans(
        text,
        [("ada lovelace.", "PER"), ('"Charles Babbage"', "PER"), (" new york ", "LOC")],
    )
    assert [g[2] for g in got] == ["Ada Lovelace", "Charles Babbage", "New  York"]
    for start, end, surface, _ in got:
        assert text[start:end] == surface


def test_abbreviation_keeps_its_dot() -> None:
    assert clean_surface("U.S.") == "U.S."
    assert clean_surface("Apple Inc.") == "Apple Inc."
    assert clean_surface("Lovelace.") == "Lovelace"
    assert spans("He works for Apple Inc. now.", [("Apple Inc.", "ORG")]) == [(13, 23, "Apple Inc.", "ORG")]


def test_unicode_offsets_are_code_points() -> None:
    text = "🎉🎉 Hello Ada Lovelace, café Zürich 東京 で"
    got = spans(text, [("Ada", "PER"), ("Zürich", "LOC"), ("東京", "LOC"), ("CAFÉ", "MISC")])
    assert (9, 12, "Ada", "PER") in got
    for start, end, surface, _ in got:
        assert text[start:end] == surface
    assert {g[2] for g in got} == {"Ada", "Zürich", "東京", "café"}


def test_word_boundary_preferred_and_unknown_dropped() -> None:
    text = "Adam met Ada."
    got, dropped = align_mentions(text, [Mention("Ada", "PER"), Mention("Bob", "PER"), Mention("", "PER")])
    assert [(s.start, s.end) for s in got] == [(9, 12)]
    assert sorted(d.reason for d in dropped) == ["empty", "not_found"]


def test_duplicate_and_overlap_are_dropped_not_guessed() -> None:
    text = "Washington met Washington."
    got, dropped = align_mentions(
        text,
        [Mention("Washington", "PER"), Mention("Washington", "LOC"), Mention("Washington", "PER")],
    )
    assert [(s.start, s.label) for s in got] == [(0, "PER"), (15, "LOC")]
    assert [d.reason for d in dropped] == ["duplicate"]  # a third mention with no free occurrence
    got, dropped = align_mentions("New York", [Mention("New York", "LOC"), Mention("York", "LOC")])
    assert [(s.text) for s in got] == ["New York"]
    assert [d.reason for d in dropped] == ["overlap"]


def test_multiline_text() -> None:
    text = "First line\nJohn\n  Smith lives\there"
    got = spans(text, [("John Smith", "PER")])
    assert got == [(11, 23, "John\n  Smith", "PER")]


# --- property tests ----------------------------------------------------------------------------

WORDS = st.sampled_from(
    ["Ada", "Lovelace", "Paris", "Bank", "of", "America", "café", "Zürich", "東京", "🎉", "the", "and",
     "St.", "O'Neil", "İstanbul", "straße", "Ω", "x"]
)
FILLER = st.sampled_from([" ", "  ", "\n", ", ", ". ", " - ", "“", "” ", "\t"])


@st.composite
def text_with_entities(draw: st.DrawFn) -> tuple[str, list[tuple[int, int, str]]]:
    pieces: list[str] = []
    gold: list[tuple[int, int, str]] = []
    position = 0
    for _ in range(draw(st.integers(1, 12))):
        filler = draw(FILLER)
        pieces.append(filler)
        position += len(filler)
        words = draw(st.lists(WORDS, min_size=1, max_size=3))
        surface = " ".join(words)
        if draw(st.booleans()):
            gold.append((position, position + len(surface), draw(st.sampled_from(["PER", "LOC", "ORG"]))))
        pieces.append(surface)
        position += len(surface)
    return "".join(pieces), gold


PERTURB = st.sampled_from(["none", "lower", "quote", "pad", "dot"])


def perturb(surface: str, how: str) -> str:
    return {
        "none": surface,
        "lower": surface.lower(),
        "quote": f'"{surface}"',
        "pad": f"  {surface} ",
        "dot": surface + ".",
    }[how]


@settings(max_examples=300, deadline=None)
@given(text_with_entities(), st.data())
def test_every_emitted_span_is_exact_and_disjoint(sample: tuple[str, list], data: st.DataObject) -> None:
    text, gold = sample
    mentions = [Mention(perturb(text[s:e], data.draw(PERTURB)), label) for s, e, label in gold]
    extra = data.draw(st.lists(st.tuples(WORDS, st.sampled_from(["PER", "LOC"])), max_size=3))
    mentions += [Mention(word, label) for word, label in extra]
    found, dropped = align_mentions(text, mentions)
    assert len(found) + len(dropped) == len(mentions)
    ordered = sorted((s.start, s.end) for s in found)
    for (_s1, e1), (s2, _e2) in zip(ordered, ordered[1:]):
        assert e1 <= s2, "spans overlap"
    for span in found:
        assert text[span.start : span.end] == span.text
        assert span.text == span.text.strip()


def _count(text: str, surface: str) -> int:
    return sum(1 for i in range(len(text)) if text.startswith(surface, i))


@settings(max_examples=300, deadline=None)
@given(text_with_entities())
def test_exact_gold_surfaces_are_recovered(sample: tuple[str, list]) -> None:
    """When the model names the gold entities exactly, every gold span whose surface occurs once in
    the text comes back (repeated surfaces are inherently ambiguous; unit tests cover their order)."""
    text, gold = sample
    found, _ = align_mentions(text, [Mention(text[s:e], label) for s, e, label in gold])
    got = {(s.start, s.end, s.label) for s in found}
    unique = [g for g in gold if _count(text, text[g[0] : g[1]]) == 1]
    for start, end, label in unique:
        assert (start, end, label) in got, (text, gold, got)
    if len(unique) == len(gold):
        assert got == set(gold)
