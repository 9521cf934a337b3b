"""Find exact character offsets for entity mentions named by a model.

The model names each entity by its surface text; it never gives offsets. For each mention we look for
candidate spans in the text, tier by tier (exact, cleaned of padding/quotes/trailing punctuation, then
case-, whitespace- and quote-insensitive), and assign candidates so that

- the k-th mention of a surface takes the k-th free occurrence (mentions come in reading order),
- longer mentions claim their spans first, so "America" never steals the inside of "Bank of America",
- no two emitted spans overlap, and nothing is guessed: a mention with no free candidate is dropped with
  a reason.

Every emitted span satisfies `text[start:end] == span.text` because the text is sliced from the
original string with the found offsets. Offsets are Python code points, which is what Label Studio's
web UI uses (see the protocol notes).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_QUOTES = "\"'`\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f\u00ab\u00bb\u2039\u203a"
_TRAIL_PUNCT = ".,;:!?"
_QUOTE_MAP = {ord(q): "'" for q in _QUOTES}
# Abbreviations whose final dot belongs to the entity ("Apple Inc.", "U.S.").
_DOT_WORDS = {"inc", "ltd", "corp", "co", "jr", "sr", "st", "dr", "mr", "mrs", "ms", "bros", "plc", "llc"}


@dataclass(frozen=True)
class Mention:
    text: str
    label: str


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    text: str
    label: str
    mention_index: int  # which input mention produced this span


@dataclass(frozen=True)
class Dropped:
    mention_index: int
    reason: str  # "empty", "not_found", "overlap", "duplicate"


def _keeps_trailing_dot(surface: str) -> bool:
    body = surface.rstrip(".")
    last = re.split(r"\s+", body)[-1] if body else ""
    return "." in last or len(last) <= 2 or last.casefold() in _DOT_WORDS


def clean_surface(surface: str) -> str:
    """Strip padding, wrapping quotes and a trailing punctuation mark the model may have added."""
    s = surface.strip()
    for _ in range(3):
        before = s
        s = s.strip().strip(_QUOTES).strip()
        if s and s[-1] in _TRAIL_PUNCT and not (s[-1] == "." and _keeps_trailing_dot(s)):
            s = s[:-1]
        if s == before:
            break
    return s


def _normalise(text: str) -> tuple[str, list[int]]:
    """Case-fold, unify quotes and collapse whitespace; return the new string and, for each of its
    characters, the index of the original character it came from."""
    out: list[str] = []
    index: list[int] = []
    previous_space = False
    for i, ch in enumerate(text):
        if ch.isspace():
            if previous_space:
                continue
            out.append(" ")
            index.append(i)
            previous_space = True
            continue
        previous_space = False
        folded = unicodedata.normalize("NFKC", ch).translate(_QUOTE_MAP).casefold()
        for piece in folded or ch:
            out.append(piece)
            index.append(i)
    return "".join(out), index


def _occurrences(haystack: str, needle: str) -> list[tuple[int, int]]:
    found = []
    start = haystack.find(needle)
    while start != -1 and needle:
        found.append((start, start + len(needle)))
        start = haystack.find(needle, start + len(needle))
    return found


def _at_word_boundary(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    inner_first, inner_last = text[start], text[end - 1]
    left_ok = not (before.isalnum() and inner_first.isalnum())
    right_ok = not (after.isalnum() and inner_last.isalnum())
    return left_ok and right_ok


class _Index:
    """Per-text lookup structures, built once per text and shared by all its mentions."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.norm, self.norm_map = _normalise(text)

    def candidates(self, surface: str) -> list[tuple[int, int]]:
        cleaned = clean_surface(surface)
        tiers: list[str] = []
        raw = surface.strip()
        # A surface that had padding removed is tried in its cleaned form first, so a trailing dot
        # the model appended ("Lovelace.") does not pull the sentence's full stop into the span.
        # Last, the surface without any trailing punctuation, for the rare case where the
        # abbreviation rule kept a dot the text does not have ("東京.", "Corp.").
        bare = cleaned.rstrip(_TRAIL_PUNCT).strip()
        for candidate in ((cleaned, raw) if cleaned != raw else (raw,)) + (bare,):
            if candidate and candidate not in tiers:
                tiers.append(candidate)
        for needle in tiers:
            spans = _occurrences(self.text, needle)
            if spans:
                return self._prefer_words(spans)
        for needle in (cleaned, bare):
            needle_norm = _normalise(needle)[0].strip()
            if not needle_norm:
                continue
            spans = []
            for ns, ne in _occurrences(self.norm, needle_norm):
                spans.append((self.norm_map[ns], self.norm_map[ne - 1] + 1))
            if spans:
                return self._prefer_words(spans)
        return []

    def _prefer_words(self, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        whole = [s for s in spans if _at_word_boundary(self.text, *s)]
        return whole or spans


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def align_mentions(text: str, mentions: list[Mention]) -> tuple[list[Span], list[Dropped]]:
    """Assign each mention an exact, non-overlapping span of `text`; report the ones that cannot be."""
    index = _Index(text)
    order = sorted(range(len(mentions)), key=lambda i: (-len(clean_surface(mentions[i].text)), i))
    claimed: dict[tuple[int, int], int] = {}
    spans: list[Span] = []
    dropped: list[Dropped] = []
    for i in order:
        mention = mentions[i]
        if not clean_surface(mention.text):
            dropped.append(Dropped(i, "empty"))
            continue
        candidates = index.candidates(mention.text)
        if not candidates:
            dropped.append(Dropped(i, "not_found"))
            continue
        free = [c for c in candidates if not any(_overlaps(c, taken) for taken in claimed)]
        if free:
            choice = free[0]
            claimed[choice] = i
            spans.append(Span(choice[0], choice[1], text[choice[0] : choice[1]], mention.label, i))
            continue
        same = [c for c in candidates if c in claimed and mentions[claimed[c]].label == mention.label]
        dropped.append(Dropped(i, "duplicate" if same else "overlap"))
    spans.sort(key=lambda s: (s.start, s.end))
    dropped.sort(key=lambda d: d.mention_index)
    return spans, dropped
