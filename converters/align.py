"""Find exact character offsets for entity mentions named by a model.

The model names each entity by its surface text; it never gives offsets. For each mention we look for
candidate spans in the text, tier by tier (exact, cleaned of padding/quotes/trailing punctuation, then
case-, whitespace- and quote-insensitive), and assign candidates so that

- the k-th mention of a surface takes the k-th free occurrence (mentions come in reading order),
- mentions with one possible place anchor first, then longer mentions claim their spans before shorter
  ones, so "America" never steals the inside of "Bank of America", and each mention prefers a place
  between its already-placed neighbours in the list,
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
        raw = surface.strip()
        # The surface as given comes first (quotes can be part of an entity, "' Into the Wild '"),
        # except when it ends in punctuation the cleaning removed: then the cleaned form comes first,
        # so a dot the model appended ("Lovelace.") does not pull the sentence's full stop in.
        # Last, the surface without any trailing punctuation, for the rare case where the
        # abbreviation rule kept a dot the text does not have ("東京.", "Corp.").
        bare = cleaned.rstrip(_TRAIL_PUNCT).strip()
        appended_punct = bool(raw) and raw[-1] in _TRAIL_PUNCT and not cleaned.endswith(raw[-1])
        tiers: list[str] = []
        for candidate in ((cleaned, raw) if appended_punct else (raw, cleaned)) + (bare,):
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


def _in_reading_order(
    free: list[tuple[int, int]], i: int, claimed: dict[tuple[int, int], int]
) -> tuple[int, int]:
    """The first free candidate that lies between the spans of the nearest already-placed mentions
    listed before and after mention i (mentions come in reading order); else the first free one."""
    before = [span for span, j in claimed.items() if j < i]
    after = [span for span, j in claimed.items() if j > i]
    low = max((claimed_j_span for claimed_j_span in before), key=lambda s: claimed[s], default=None)
    high = min((claimed_j_span for claimed_j_span in after), key=lambda s: claimed[s], default=None)
    for candidate in free:
        if low is not None and candidate[0] < low[0]:
            continue
        if high is not None and candidate[0] > high[0]:
            continue
        return candidate
    return free[0]


def align_mentions(text: str, mentions: list[Mention]) -> tuple[list[Span], list[Dropped]]:
    """Assign each mention an exact, non-overlapping span of `text`; report the ones that cannot be."""
    index = _Index(text)
    found = [index.candidates(m.text) if clean_surface(m.text) else [] for m in mentions]
    # Mentions with a single possible place go first (they anchor the reading order for the rest),
    # then longer before shorter, then in the order given.
    def anchor(i: int) -> bool:
        if len(found[i]) != 1:
            return False
        (start, end), = found[i]
        return not any(  # inside a longer candidate of another mention: let the longer one decide
            j != i and s <= start and end <= e and (s, e) != (start, end)
            for j in range(len(mentions))
            for s, e in found[j]
        )

    order = sorted(
        range(len(mentions)),
        key=lambda i: (not anchor(i), -len(clean_surface(mentions[i].text)), i),
    )
    claimed: dict[tuple[int, int], int] = {}
    spans: list[Span] = []
    dropped: list[Dropped] = []
    for i in order:
        mention = mentions[i]
        if not clean_surface(mention.text):
            dropped.append(Dropped(i, "empty"))
            continue
        candidates = found[i]
        if not candidates:
            dropped.append(Dropped(i, "not_found"))
            continue
        free = [c for c in candidates if not any(_overlaps(c, taken) for taken in claimed)]
        if free:
            choice = _in_reading_order(free, i, claimed)
            claimed[choice] = i
            spans.append(Span(choice[0], choice[1], text[choice[0] : choice[1]], mention.label, i))
            continue
        same = [c for c in candidates if c in claimed and mentions[claimed[c]].label == mention.label]
        dropped.append(Dropped(i, "duplicate" if same else "overlap"))
    spans.sort(key=lambda s: (s.start, s.end))
    dropped.sort(key=lambda d: d.mention_index)
    return spans, dropped
