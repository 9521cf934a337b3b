"""A gazetteer per `<Labels>` control: the entity surfaces reviewers labelled, and how reliable each is.

Built from the project's live reviewed examples (the same rows few-shot selection uses), so it follows
every event the examples follow: a new annotation adds its spans, an updated one replaces them, a
deleted annotation or task removes them, and a config change (another spec) builds another gazetteer.

Each surface (exactly as reviewed) keeps its label counts and how often it occurs in the reviewed texts
at all (whole words, not inside a longer labelled span). An entry's raw reliability is
`majority-label count / (occurrences + 1)`: a surface that reviewers usually leave unlabelled ("may",
"the") or label inconsistently scores low. The raw value is mapped to a probability that a match is a
right span (label included) by isotonic regression on cross-validated pairs: every match the gazetteer built
without a fold of the examples makes in that fold's texts, and whether the reviewer labelled exactly
that span with that label. Entries whose probability is below `min_precision` are not kept. The same
held-out matches give the gazetteer's own span F1 on reviews it was built without (`held_out_f1`), which
the span cascade reads to decide whether the LLM's unsure spans still add more than they cost.

It also keeps the plain words: words reviewers left outside every span, at least `min_plain` times;
a span made only of them is, by the reviews, not an entity ("the government", "Tuesday").

Matching is on word tokens (Unicode letters, digits and combining marks; any other non-space character
is a token of its own), so "Paris" never matches inside "Parisian"; all candidate matches are found,
then accepted longest first (ties: leftmost) without overlaps, so "Bank of America" wins over "America".
"""

from __future__ import annotations

import bisect
import re
from collections import Counter, defaultdict
from collections.abc import Container, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from converters.scoring import prf
from converters.spec import ControlSpec

# a word: letters/digits/underscore plus the common combining-mark blocks (so "Café" in NFD is one word)
_TOKEN = re.compile(
    r"(?:\w|[\u0300-\u036f\u0483-\u0489\u0591-\u05bd\u0610-\u061a\u064b-\u065f\u0900-\u0903\u093a-\u094f"
    r"\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f])+|[^\w\s]",
    re.UNICODE,
)


def token_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every token: a run of word characters, or one other non-space character."""
    return [m.span() for m in _TOKEN.finditer(text)]


@dataclass(frozen=True)
class GazetteerPolicy:
    """What the gazetteer keeps: entries whose calibrated precision is at least `min_precision`."""

    min_precision: float = 0.5
    max_tokens: int = 12  # longer reviewed spans are not matched (rare; long matches are costly)
    folds: int = 5  # cross-validation folds for the calibration of scores
    min_plain: int = 2  # a word left unlabelled this often (and never labelled) is a plain word


@dataclass(frozen=True)
class Entry:
    surface: str
    label: str  # the majority label (stored value)
    labelled: int  # times reviewers labelled this surface (any label)
    majority: int  # of them, with `label`
    occurrences: int  # whole-word occurrences in reviewed texts (labelled or not)
    score: float  # calibrated probability that a match is a right span with this label


@dataclass(frozen=True)
class Match:
    """One gazetteer span in a text: exact offsets, `text[start:end] == surface`."""

    start: int
    end: int
    text: str
    label: str
    score: float


@dataclass(frozen=True)
class Gazetteer:
    """An immutable gazetteer of one control. `known` holds every surface seen in reviews (kept or not),
    so a caller can tell "reviewers usually leave this unlabelled" from "never seen"."""

    control: str
    entries: Mapping[str, Entry] = field(default_factory=dict)
    known: Mapping[str, Entry] = field(default_factory=dict)
    prefixes: frozenset[str] = frozenset()
    plain: frozenset[str] = frozenset()  # words reviewers left unlabelled every time (at least twice)
    held_out_f1: float = 0.0  # span F1 of its kept entries on reviews it was built without (cross-validated)

    def __len__(self) -> int:
        return len(self.entries)

    def plain_runs(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of every maximal run of plain words in `text`: a span inside one is, by the
        reviews, not an entity (a span the LLM puts there is dropped by the cascade)."""
        runs: list[tuple[int, int]] = []
        for start, end in token_spans(text):
            if text[start:end] not in self.plain:
                continue
            if runs and not text[runs[-1][1]:start].strip() and runs[-1][1] <= start:
                runs[-1] = (runs[-1][0], end)
            else:
                runs.append((start, end))
        return runs

    def match(self, text: str) -> list[Match]:
        """Non-overlapping whole-token matches in `text`, longest first then leftmost; in text order."""
        if not self.entries:
            return []
        out = []
        for start, end, surface in longest_first(text, self.prefixes, self.entries):
            entry = self.entries[surface]
            out.append(Match(start, end, surface, entry.label, entry.score))
        return out


def longest_first(text: str, prefixes: AbstractSet[str], surfaces: Container[str]) -> list[tuple[int, int, str]]:
    """(start, end, surface) of the accepted occurrences: all whole-token occurrences, taken longest
    first (ties: leftmost) unless they overlap one already taken; returned in text order."""
    found = sorted(_occurrences(text, prefixes, surfaces), key=lambda m: (-(m[1] - m[0]), m[0]))
    taken: list[tuple[int, int]] = []  # accepted spans, sorted by start
    out = []
    for start, end, surface in found:
        i = bisect.bisect_left(taken, (start, end))
        if (i > 0 and taken[i - 1][1] > start) or (i < len(taken) and taken[i][0] < end):
            continue
        taken.insert(i, (start, end))
        out.append((start, end, surface))
    out.sort()
    return out


def _prefixes(surfaces: Iterable[str], max_tokens: int) -> frozenset[str]:
    """Every surface's prefixes that end at a token end (the surfaces themselves included)."""
    out: set[str] = set()
    for surface in surfaces:
        for _, end in token_spans(surface)[:max_tokens]:
            out.add(surface[:end])
    return frozenset(out)


def _occurrences(text: str, prefixes: AbstractSet[str], surfaces: Container[str]) -> Iterable[tuple[int, int, str]]:
    """(start, end, surface) of every whole-token occurrence of a surface in `text` (overlaps included)."""
    spans = token_spans(text)
    for i, (start, _) in enumerate(spans):
        for _, end in spans[i:]:
            piece = text[start:end]
            if piece not in prefixes:
                break
            if piece in surfaces:
                yield start, end, piece



def reviewed_spans(control: ControlSpec, data: Mapping[str, Any], result: Sequence[Mapping[str, Any]]
                   ) -> tuple[str, list[tuple[int, int, str]]] | None:
    """(the control's text, [(start, end, label)]) of one reviewed example; None when it has no text.
    Spans whose offsets do not fit the text are skipped (an old or hand-edited result)."""
    text = data.get(control.data_key)
    if not isinstance(text, str):
        return None
    spans = []
    for region in result:
        if region.get("from_name") != control.name or region.get("type") != control.kind:
            continue
        value = region.get("value") or {}
        labels = value.get("labels") or []
        try:
            start, end = int(value["start"]), int(value["end"])
        except (KeyError, TypeError, ValueError):
            continue
        if not labels or not 0 <= start < end <= len(text) or not text[start:end].strip():
            continue
        spans.append((start, end, str(labels[0])))
    return text, spans


def _raw(majority: int, occurrences: int) -> float:
    return majority / (occurrences + 1)


def isotonic(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Pool-adjacent-violators: (x thresholds, fitted non-decreasing y) for (x, y in [0, 1]) points."""
    grouped: dict[float, list[float]] = defaultdict(list)
    for x, y in points:
        grouped[x].append(y)
    blocks: list[list[float]] = []  # [x of the block's first point, sum y, count]
    for x in sorted(grouped):
        ys = grouped[x]
        blocks.append([x, sum(ys), float(len(ys))])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            last = blocks.pop()
            blocks[-1][1] += last[1]
            blocks[-1][2] += last[2]
    return [b[0] for b in blocks], [b[1] / b[2] for b in blocks]


def _calibrate(xs: list[float], ys: list[float], x: float) -> float:
    """The fitted step function at x. Below the lowest measured x, the lowest fitted value or the raw
    reliability itself, whichever is lower (a surface labelled once in fifteen occurrences stays low);
    with nothing measured at all, the raw reliability (at most 1/2 for a surface seen once)."""
    if not xs:
        return x
    i = bisect.bisect_right(xs, x) - 1
    return ys[i] if i >= 0 else min(ys[0], x)


def build_gazetteer(
    control: ControlSpec,
    examples: Iterable[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]],
    policy: GazetteerPolicy | None = None,
) -> Gazetteer:
    """The gazetteer of `control` from reviewed examples given as (task data, reviewed result)."""
    policy = policy or GazetteerPolicy()
    allowed = {label.value for label in control.labels}
    texts: list[str] = []
    labelled: list[dict[tuple[int, int], str]] = []
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    plain_words: Counter[str] = Counter()
    entity_words: Counter[str] = Counter()
    for data, result in examples:
        read = reviewed_spans(control, data, result)
        if read is None:
            continue
        text, spans = read
        own = {}
        for start, end, label in spans:
            if label not in allowed:
                continue
            surface = text[start:end]
            if len(token_spans(surface)) > policy.max_tokens or not any(ch.isalnum() for ch in surface):
                continue
            own[(start, end)] = label
            counts[surface][label] += 1
        for start, end in token_spans(text):
            inside = any(s <= start and end <= e for s, e, _ in spans)
            (entity_words if inside else plain_words)[text[start:end]] += 1
        texts.append(text)
        labelled.append(own)
    plain = frozenset(w for w, n in plain_words.items() if n >= policy.min_plain and w not in entity_words)
    if not counts:
        return Gazetteer(control.name, plain=plain)
    prefixes = _prefixes(counts, policy.max_tokens)
    occurrences: Counter[str] = Counter()
    # per occurrence: (example index, surface, the label the reviewer gave it there or None)
    seen: list[tuple[int, str, str | None]] = []
    for index, (text, own) in enumerate(zip(texts, labelled)):
        for start, end, surface in _occurrences(text, prefixes, counts):
            gold = own.get((start, end))
            if gold is None and any(s <= start and end <= e and (s, e) != (start, end) for s, e in own):
                continue  # inside a longer labelled span: neither for nor against this surface
            occurrences[surface] += 1
            seen.append((index, surface, gold))
    for surface, by_label in counts.items():  # a labelled span not on token boundaries still occurred
        occurrences[surface] = max(occurrences[surface], sum(by_label.values()))
    pairs = _held_out_pairs(texts, labelled, seen, counts, occurrences, prefixes, policy.folds)
    xs, ys = isotonic(pairs)
    known: dict[str, Entry] = {}
    for surface, by_label in counts.items():
        label, top = max(by_label.items(), key=lambda kv: (kv[1], kv[0]))
        score = _calibrate(xs, ys, _raw(top, occurrences[surface]))
        known[surface] = Entry(surface, label, sum(by_label.values()), top, occurrences[surface], round(score, 4))
    entries = {s: e for s, e in known.items() if e.score >= policy.min_precision and e.score > 0}
    f1 = held_out_f1(pairs, [_calibrate(xs, ys, raw) for raw, _ in pairs], sum(map(len, labelled)),
                     policy.min_precision)
    return Gazetteer(control.name, entries, known, _prefixes(entries, policy.max_tokens), plain, f1)


def held_out_f1(pairs: Sequence[tuple[float, float]], scores: Sequence[float], spans: int,
                min_precision: float) -> float:
    """Span F1 of the held-out matches a kept entry makes (calibrated score at least `min_precision`,
    score above 0) against the `spans` reviewed spans: what the gazetteer gets right of reviews it did
    not see, the figure the span cascade reads to decide whether unsure LLM spans still add more than
    they cost."""
    kept = [right for (_, right), score in zip(pairs, scores) if score >= min_precision and score > 0]
    found = int(sum(kept))
    return round(prf(found, len(kept) - found, spans - found)["f1"], 4)


def _held_out_pairs(
    texts: Sequence[str],
    labelled: Sequence[Mapping[tuple[int, int], str]],
    seen: Sequence[tuple[int, str, str | None]],
    counts: Mapping[str, Counter[str]],
    occurrences: Counter[str],
    prefixes: AbstractSet[str],
    folds: int,
) -> list[tuple[float, float]]:
    """(raw reliability, 1 if right else 0) of every match in a held-out fold, the gazetteer built from
    the other folds. Counts are additive, so each fold's gazetteer is the full one minus the fold's own
    contributions (no second scan of the texts); matching is the real longest-first matching, so a
    match cut short by a longer unseen entity counts against its entry as it would on a new task."""
    fold_counts: list[dict[str, Counter[str]]] = [defaultdict(Counter) for _ in range(folds)]
    fold_occurrences: list[Counter[str]] = [Counter() for _ in range(folds)]
    for index, surface, gold in seen:
        fold_occurrences[index % folds][surface] += 1
        if gold is not None:
            fold_counts[index % folds][surface][gold] += 1
    for index, own in enumerate(labelled):  # labelled spans off token boundaries were not seen above
        text = texts[index]
        for (start, end), label in own.items():
            surface = text[start:end]
            if fold_counts[index % folds][surface][label] == 0:
                fold_counts[index % folds][surface][label] += 1
    pairs: list[tuple[float, float]] = []
    for fold in range(folds):
        mine, mine_occurrences = fold_counts[fold], fold_occurrences[fold]
        rest: dict[str, tuple[str, float]] = {}
        for surface, by_label in counts.items():
            left = by_label - mine.get(surface, Counter())
            if left:
                label, top = max(left.items(), key=lambda kv: (kv[1], kv[0]))
                rest[surface] = (label, _raw(top, max(occurrences[surface] - mine_occurrences[surface], 0)))
        for index in range(fold, len(texts), folds):
            own = labelled[index]
            for start, end, surface in longest_first(texts[index], prefixes, rest):
                label, raw = rest[surface]
                pairs.append((raw, 1.0 if own.get((start, end)) == label else 0.0))
    return pairs
