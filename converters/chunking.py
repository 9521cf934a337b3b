"""Long texts -> chunks a model can answer whole, and the chunks' spans -> one set of document spans.

Pure functions, no model and no I/O:
- `split_text` cuts a text on paragraph, then sentence, then word boundaries into pieces of at most
  `budget` characters, each chunk repeating the last `overlap` characters' worth of whole sentences of
  the one before, so an entity at a cut is seen whole by at least one call.
- `merge_spans` shifts each chunk's spans to document offsets and keeps one span per place: a span seen
  by two overlapping chunks is taken from the chunk whose own part (the text up to the middle of the
  overlap) holds its start; spans that still collide keep the longer one.
- `select_for_classification` keeps a bounded part of a long text for one classification call: head,
  tail and the chunks most like the label names and instructions.

Offsets are Python code points, as everywhere else: `text[chunk.start:chunk.end] == chunk.text`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# A piece ends after a paragraph break, a line break, or a sentence's end mark followed by space.
_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE = re.compile(r"(?<=[.!?。！？])[\"'”’)\]]*\s+|\n\s*")
_WORD = re.compile(r"\s+")
_WORDS = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Chunk:
    """text[start:end] of the document; `own_start`/`own_end` is the part this chunk answers for when
    two chunks saw the same span (the overlaps are split at their middle)."""

    start: int
    end: int
    text: str
    own_start: int = 0
    own_end: int = 0


@dataclass(frozen=True)
class ChunkSpan:
    """A span found in one chunk, in chunk offsets."""

    start: int
    end: int
    label: str
    payload: object = None  # whatever the caller needs back (a Label Studio region)


@dataclass(frozen=True)
class DocSpan:
    start: int
    end: int
    label: str
    chunk: int
    payload: object = None


def _cuts(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[int]:
    """Offsets in [start, end) right after each match of `pattern` (where a new piece may begin)."""
    return [m.end() for m in pattern.finditer(text, start, end) if start < m.end() < end]


def _pieces(text: str, start: int, end: int, budget: int) -> list[tuple[int, int]]:
    """text[start:end] as consecutive pieces no longer than `budget`, cut at the coarsest boundary that
    is fine enough: paragraphs, then sentences, then words, then (a word longer than the budget) anywhere."""
    if end - start <= budget:
        return [(start, end)]
    for pattern in (_PARAGRAPH, _SENTENCE, _WORD):
        cuts = _cuts(text, start, end, pattern)
        if cuts:
            out: list[tuple[int, int]] = []
            bounds = [start, *cuts, end]
            for a, b in zip(bounds, bounds[1:]):
                out.extend(_pieces(text, a, b, budget))
            return out
    return [(i, min(end, i + budget)) for i in range(start, end, budget)]


def split_text(text: str, budget: int, overlap: int = 0) -> list[Chunk]:
    """`text` as chunks of at most `budget` characters (one chunk when it fits), on paragraph or
    sentence boundaries where possible; each chunk after the first starts with the whole sentences of
    up to `overlap` characters that end the chunk before it. Raises ValueError for a budget < 1."""
    if budget < 1:
        raise ValueError("chunk budget must be at least 1 character")
    if len(text) <= budget:
        return [Chunk(0, len(text), text, 0, len(text))]
    overlap = max(0, min(overlap, budget // 2))
    pieces = [p for p in _fine_pieces(text, budget) if p[1] > p[0]]
    ranges: list[tuple[int, int]] = []
    i = previous_first = 0
    while i < len(pieces):
        first = i
        # reach back over whole pieces that end the previous chunk, up to `overlap` characters (never to
        # that chunk's own first piece, so every chunk moves forward)
        while ranges and first - 1 > previous_first and pieces[i - 1][1] - pieces[first - 1][0] <= overlap:
            first -= 1
        j = i
        while j < len(pieces) and pieces[j][1] - pieces[first][0] <= budget:
            j += 1
        if j == i:  # the overlap left no room for a new piece: go without it for this chunk
            first, j = i, i + 1
        ranges.append((pieces[first][0], pieces[j - 1][1]))
        previous_first, i = first, j
    return _with_own_parts(text, ranges)


def _fine_pieces(text: str, budget: int) -> list[tuple[int, int]]:
    """Sentence-sized pieces (never longer than the budget) covering the whole text."""
    out: list[tuple[int, int]] = []
    for a, b in _pieces(text, 0, len(text), budget):
        bounds = [a, *_cuts(text, a, b, _SENTENCE), b]
        out.extend(zip(bounds, bounds[1:]))
    return out


def _with_own_parts(text: str, ranges: list[tuple[int, int]]) -> list[Chunk]:
    """Chunks whose own parts tile the text: two neighbours share their overlap at its middle."""
    bounds = [0] + [(start + max(start, ranges[k][1])) // 2 for k, (start, _) in enumerate(ranges[1:])] + [len(text)]
    return [Chunk(start, end, text[start:end], bounds[k], bounds[k + 1]) for k, (start, end) in enumerate(ranges)]


def merge_spans(chunks: Sequence[Chunk], spans: Sequence[Iterable[ChunkSpan]]) -> list[DocSpan]:
    """Each chunk's spans (spans[k] for chunks[k]) in document offsets, one per place, sorted.

    A span whose start lies in another chunk's own part is left to that chunk when that chunk also saw
    it (or something overlapping it); spans that still overlap keep the longer (then the earlier chunk's)."""
    shifted: list[DocSpan] = []
    for k, (chunk, found) in enumerate(zip(chunks, spans)):
        for piece in found:
            shifted.append(DocSpan(chunk.start + piece.start, chunk.start + piece.end, piece.label, k, piece.payload))

    def owned(span: DocSpan) -> bool:
        chunk = chunks[span.chunk]
        return chunk.own_start <= span.start < chunk.own_end

    # owned spans first, then longer, then the earlier chunk
    ranked = sorted(shifted, key=lambda s: (not owned(s), -(s.end - s.start), s.chunk, s.start))
    kept: list[DocSpan] = []
    for span in ranked:
        if any(span.start < other.end and other.start < span.end for other in kept):
            continue
        kept.append(span)
    return sorted(kept, key=lambda s: (s.start, s.end))


def select_for_classification(
    text: str, budget: int, query: str = "", head_share: float = 0.4, tail_share: float = 0.2
) -> str:
    """At most `budget` characters of `text` for one classification call: its head, its tail and, in
    between, the sentences sharing most words with `query` (label names, instructions), kept in reading
    order and joined by " [...] " where text was left out. The text itself when it fits."""
    if len(text) <= budget:
        return text
    gap = " [...] "
    pieces = _fine_pieces(text, max(1, budget // 8))
    head_limit = int(budget * head_share)
    tail_limit = int(budget * tail_share)
    chosen: set[int] = set()
    used = 0
    for k, (a, b) in enumerate(pieces):
        if used + (b - a) > head_limit:
            break
        chosen.add(k)
        used += b - a
    tail_used = 0
    for k in range(len(pieces) - 1, -1, -1):
        a, b = pieces[k]
        if k in chosen or tail_used + (b - a) > tail_limit:
            break
        chosen.add(k)
        tail_used += b - a
    used += tail_used
    words = {w.casefold() for w in _WORDS.findall(query)}
    ranked = sorted(
        (k for k in range(len(pieces)) if k not in chosen),
        key=lambda k: (-_overlap_score(text[pieces[k][0]:pieces[k][1]], words), k),
    )
    for k in ranked:
        a, b = pieces[k]
        if used + (b - a) + len(gap) > budget:
            continue
        chosen.add(k)
        used += b - a + len(gap)
    parts: list[str] = []
    previous = None
    for k in sorted(chosen):
        if previous is not None and k != previous + 1:
            parts.append(gap)
        parts.append(text[pieces[k][0]:pieces[k][1]])
        previous = k
    if previous is not None and previous != len(pieces) - 1:
        parts.append(gap)
    return "".join(parts)[:budget]


def _overlap_score(sentence: str, words: set[str]) -> float:
    tokens = [w.casefold() for w in _WORDS.findall(sentence)]
    if not tokens or not words:
        return 0.0
    return sum(1 for t in tokens if t in words) / len(tokens) ** 0.5
