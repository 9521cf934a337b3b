"""Few-shot selection per task: the k most useful reviewed examples within a token budget.

Similarity to the task comes from one of two sources: embeddings (`backend.learning.vector_index`: the
bundled WordLlama vectors by default, a provider's EMBEDDINGS_MODEL when set; an outage falls back to
lexical for that task) or lexical (idf-weighted word overlap through an inverted index, no model needed,
SELECTION_SIMILARITY=lexical). Whatever the source, one piece of code (`choose`) picks the examples:
reviewer corrections weighted up, diversity by maximal marginal relevance, label coverage for
single-choice controls with no more labels than k (no prompt with eight examples of one class), and a
deterministic order (ties by annotation id; the most similar example sits right before the task).
Controls with a large label set are narrowed to a per-task shortlist first (`converters.shortlist`),
and only examples that fit the shortlist are used. Each process keeps an index per project and
refreshes it incrementally from the store's `seq` column.
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from backend.learning.gazetteer_book import GazetteerBook
from backend.store.example_store import ExampleStore, StoredExample
from converters.examples import coverage_label, result_to_answer
from converters.shortlist import Lead, Lexicon, Scores, knn_votes, needs_shortlist, result_fits, shortlist_spec
from converters.task_spec import ControlSpec, TaskSpec
from prompts import Example, SpanCandidate, TaskContext

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


def example_text(data: Mapping[str, object]) -> str:
    """The text an example is compared by: its string data fields, joined."""
    return " ".join(str(v) for v in data.values() if isinstance(v, str))


# (similarity to the task, annotation id), best first
Hit = tuple[float, int]


def pool_size(k: int) -> int:
    """How many nearest examples are considered (for MMR, coverage and the label vote)."""
    return max(6 * k, 32)


@dataclass(frozen=True)
class Entry:
    example: StoredExample
    tokens: frozenset[str]
    length_norm: float


@dataclass(frozen=True)
class LexicalIndex:
    """An immutable snapshot of one project's live examples: an inverted index from word to annotation ids.

    Readers keep a reference to a snapshot and search it without a lock; nothing in it ever changes.
    A refresh builds the next snapshot with `updated` (copying only the posting sets the new rows touch)
    and the selector swaps the reference, so a search never sees a set change size under it."""

    entries: Mapping[int, Entry] = field(default_factory=dict)
    postings: Mapping[str, AbstractSet[int]] = field(default_factory=dict)
    seq: int = 0

    @classmethod
    def build(cls, rows: Iterable[StoredExample]) -> LexicalIndex:
        """A snapshot of `rows` (live ones indexed; later rows for an annotation replace earlier ones)."""
        return cls().updated(rows)

    def updated(self, rows: Iterable[StoredExample]) -> LexicalIndex:
        """The next snapshot: this one with `rows` applied (in order; a row that is not live removes its
        annotation). This snapshot is left untouched: unchanged posting sets are shared, touched ones
        are copied once per update."""
        rows = list(rows)
        if not rows:
            return self
        entries = dict(self.entries)
        postings = dict(self.postings)
        owned: dict[str, set[int]] = {}  # posting sets copied for the new snapshot, safe to change
        seq = self.seq
        for row in rows:
            old = entries.pop(row.annotation_id, None)
            if old is not None:
                for word in old.tokens:
                    ids = _own(postings, owned, word)
                    ids.discard(row.annotation_id)
                    if not ids:
                        del postings[word], owned[word]
            if row.status == "live":
                words = frozenset(tokenize(example_text(row.data)))
                entries[row.annotation_id] = Entry(row, words, 1.0 / math.sqrt(max(1, len(words))))
                for word in words:
                    _own(postings, owned, word).add(row.annotation_id)
            seq = max(seq, row.seq)
        return LexicalIndex(entries, postings, seq)

    def search(self, words: Sequence[str], pool: int, max_open: int = 800) -> list[tuple[float, int]]:
        """Top `pool` (score, annotation_id), idf-weighted overlap normalised by example length.

        The rarest words open candidates (at most about `max_open`); commoner words only add to the
        candidates already open, so a query costs a set lookup per candidate and word, not a scan of
        long posting lists (p95 under 10 ms at 100,000 examples, benchmarks/selection.py)."""
        n = len(self.entries)
        if not n:
            return []
        unique = sorted(set(words), key=lambda w: len(self.postings.get(w, ())))
        scores: dict[int, float] = {}
        for word in unique:
            posting = self.postings.get(word)
            if not posting:
                continue
            idf = math.log(1.0 + n / len(posting))
            if len(scores) + len(posting) <= max_open or not scores:
                for annotation_id in posting:
                    scores[annotation_id] = scores.get(annotation_id, 0.0) + idf
            else:
                for annotation_id in scores:
                    if annotation_id in posting:
                        scores[annotation_id] += idf
        if not scores:
            return []
        ranked = ((s * self.entries[a].length_norm, a) for a, s in scores.items())
        return heapq.nlargest(pool, ranked, key=lambda pair: (pair[0], -pair[1]))

    def overlap(self, a: int, b: int) -> float:
        """Jaccard similarity of two examples' words (the redundancy MMR penalises)."""
        return _jaccard(self.entries[a].tokens, self.entries[b].tokens)


def _own(postings: dict[str, AbstractSet[int]], owned: dict[str, set[int]], word: str) -> set[int]:
    """The new snapshot's own (copied) posting set for `word`, created empty when the word is new."""
    ids = owned.get(word)
    if ids is None:
        ids = owned[word] = set(postings.get(word, ()))
        postings[word] = ids
    return ids


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / max(1, len(a | b))


def _choice_label(entry: Entry, spec: TaskSpec) -> str | None:
    """The label of the first single-choice control, for coverage (each control's handler decides)."""
    return coverage_label(spec, entry.example.result)


@dataclass(frozen=True)
class Candidates:
    """What one similarity source says about one task."""

    hits: list[Hit]  # the nearest examples, best first
    overlap: Callable[[int, int], float]  # similarity of two examples, for MMR
    label_similarity: Callable[[ControlSpec], Scores]  # task text vs each label's own words/meaning


@dataclass(frozen=True)
class ShortlistPolicy:
    """Controls with more than `threshold` labels (0: never) show only `size` labels per task.

    The kNN vote is over the `size // 2` nearest examples, so it fills at most half the shortlist and
    the labels' own similarity to the task the rest: with few reviewed examples, far neighbours voting
    for unrelated labels pushed the gold label out (Banking77, 100 examples: recall@20 0.61 with 48
    voters, 0.94 with 10; benchmarks/shortlist.py)."""

    threshold: int = 0
    size: int = 20

    @property
    def voters(self) -> int:
        return max(1, self.size // 2)


def lexical_hits(index: LexicalIndex, text: str, k: int) -> list[Hit]:
    hits = index.search(tokenize(text), pool=pool_size(k))
    if len(hits) < k:  # too little overlap: let the newest examples fill up, for coverage
        seen = {a for _, a in hits}
        newest = sorted(index.entries, reverse=True)
        hits += [(0.0, a) for a in newest if a not in seen][: 8 * k - len(hits)]
    return hits


def lexical_candidates(
    index: LexicalIndex, text: str, k: int, lexicon: Callable[[ControlSpec], Lexicon] = Lexicon
) -> Candidates:
    """The default source: word overlap with the examples and with the labels' own words (`lexicon`
    builds or looks up a control's label words)."""
    return Candidates(lexical_hits(index, text, k), index.overlap, lambda control: lexicon(control).similarity(text))


def coverage_cap(spec: TaskSpec, k: int, present: AbstractSet[str]) -> int:
    """At most this many examples per single-choice label (k: no cap, relevance alone decides).

    Coverage (at most about k/labels per label) only for a control with no more labels than k, where
    every label can be shown (sentiment, a few classes, an imbalanced pool that would otherwise fill
    the prompt with the majority class). With more labels than k, the cap was 1 as soon as the
    nearest examples spanned k labels, and it pushed the nearest same-intent examples out: Banking77
    (77 labels), embedded model, all reviews: accuracy 0.633 with the cap, 0.833 with cap = k (issue 12).
    The control is the first one whose labels the examples' coverage labels are (`coverage_label`)."""
    sizes = [len(c.labels) for c in spec.controls if any(label.value in present for label in c.labels)]
    if not sizes or sizes[0] > k:
        return max(1, k)
    distinct = len(present) or 1
    return max(1, math.ceil(k / min(k, distinct)))


def choose(
    entries: Mapping[int, Entry],
    hits: Sequence[Hit],
    spec: TaskSpec,
    k: int,
    token_budget: int,
    overlap: Callable[[int, int], float],
    diversity: float = 0.3,
    correction_boost: float = 1.15,
) -> list[Entry]:
    """Pick up to k of the hits: relevance (corrections boosted) against redundancy with what is
    already chosen (MMR), at most about k/labels per single-choice label when the control has no more
    than k labels (`coverage_cap`), within the token budget.
    Returns them least to most relevant, ties by annotation id."""
    if k <= 0 or not hits:
        return []
    top = max((s for s, _ in hits), default=0.0) or 1.0
    relevance = {
        a: (max(0.0, s) / top) * (correction_boost if entries[a].example.corrected else 1.0) for s, a in hits
    }
    labels = {a: _choice_label(entries[a], spec) for _, a in hits}
    cap = coverage_cap(spec, k, {v for v in labels.values() if v is not None})
    chosen: list[int] = []
    per_label: Counter = Counter()
    budget = token_budget
    candidates = [a for _, a in hits]
    redundancy = {a: 0.0 for a in candidates}  # max similarity to anything chosen so far
    while candidates and len(chosen) < k:
        allowed = [a for a in candidates if labels[a] is None or per_label[labels[a]] < cap] or candidates
        best = max(allowed, key=lambda a: ((1 - diversity) * relevance[a] - diversity * redundancy[a], -a))
        candidates.remove(best)
        cost = _tokens(entries[best])
        if cost > budget:
            continue
        budget -= cost
        chosen.append(best)
        if labels[best] is not None:
            per_label[labels[best]] += 1
        for a in candidates:
            similarity = overlap(a, best)
            redundancy[a] = max(redundancy[a], similarity)
    chosen.sort(key=lambda a: (relevance[a], -a))
    return [entries[a] for a in chosen]


def choose_for_task(
    entries: Mapping[int, Entry],
    candidates: Candidates,
    spec: TaskSpec,
    k: int,
    token_budget: int,
    shortlist: ShortlistPolicy = ShortlistPolicy(),
    lead: Callable[[ControlSpec], Lead] | None = None,
) -> tuple[TaskSpec, list[Entry]]:
    """(the spec for this task, its examples least to most relevant).

    Large label sets are narrowed first: the labels `lead` names (the student's top labels, best
    first; with `Lead.only`, the student's label set is the whole shortlist), then the kNN vote of the
    nearest examples (similarity-weighted), then the labels' similarity to the task text
    (`converters.shortlist`). Examples answering with a label outside the shortlist are not used, so
    the prompt never shows an answer that its label list and schema forbid."""
    hits = list(candidates.hits)
    narrowed = spec
    if any(needs_shortlist(c, shortlist.threshold) for c in spec.controls):
        top = max((s for s, _ in hits), default=0.0) or 1.0
        neighbours = [(s / top, entries[a].example.result) for s, a in hits[: shortlist.voters] if s > 0]
        leads = {c.name: lead(c) for c in spec.controls} if lead else {}
        no_lead = Lead()

        def size_of(control: ControlSpec) -> int:
            led = leads.get(control.name, no_lead)
            return min(shortlist.size, len(led.labels)) if led.only and led.labels else shortlist.size

        narrowed = shortlist_spec(
            spec,
            shortlist.threshold,
            shortlist.size,
            votes=lambda control: _led(knn_votes(control, neighbours), leads.get(control.name, no_lead).labels),
            similarity=candidates.label_similarity,
            size_of=size_of,
        )
        hits = [(s, a) for s, a in hits if result_fits(narrowed, entries[a].example.result)]
    return narrowed, choose(entries, hits, narrowed, k, token_budget, candidates.overlap)


def _led(votes: Scores, leaders: Sequence[str]) -> Scores:
    """The votes with `leaders` above every vote, in their order (a hint outranks the neighbours)."""
    if not leaders:
        return votes
    top = max(votes.values(), default=0.0) + 1.0
    out = dict(votes)
    for i, label in enumerate(leaders):
        out[label] = top + len(leaders) - i
    return out


def select_examples(
    index: LexicalIndex,
    spec: TaskSpec,
    text: str,
    k: int,
    token_budget: int,
) -> list[Entry]:
    """Lexical selection without shortlisting; returns entries least to most relevant."""
    if k <= 0 or not index.entries:
        return []
    return choose_for_task(index.entries, lexical_candidates(index, text, k), spec, k, token_budget)[1]


def _entry_text(entry: Entry, spec: TaskSpec) -> str:
    """An example's text as a task's is joined for selection."""
    return " ".join(str(entry.example.data.get(key, "")) for _, key in spec.objects)


def _tokens(entry: Entry) -> int:
    size = sum(len(str(v)) for v in entry.example.data.values()) + 40 * max(1, len(entry.example.result))
    return size // 4 + 8


def entry_to_example(entry: Entry, spec: TaskSpec) -> Example | None:
    texts = {}
    for name, key in spec.objects:
        value = entry.example.data.get(key)
        if not isinstance(value, str):
            return None
        texts[name] = value
    answer = result_to_answer(spec, entry.example.result)
    if not answer:
        return None
    return Example(texts=texts, answer=answer)


# (project id, spec, task text) -> control -> the labels that lead its shortlist, best first
LeadSource = Callable[[str | None, TaskSpec, str], Callable[[ControlSpec], Lead]]


class CandidateSource(Protocol):
    """A similarity source other than the lexical default (embeddings). `candidates` raises one of
    `unavailable` when it cannot answer for this task; the selector then falls back to lexical."""

    unavailable: tuple[type[Exception], ...]

    def candidates(self, project_id: str | None, index: LexicalIndex, text: str, k: int) -> Candidates: ...


@dataclass
class _ProjectIndex:
    """A project's current snapshot and when it was last refreshed (by the selector's clock)."""

    snapshot: LexicalIndex = field(default_factory=LexicalIndex)
    checked: float | None = None  # None: never loaded
    store_down: bool = False  # the last refresh failed (logged once per outage)
    refreshing: threading.Lock = field(default_factory=threading.Lock)


class Selector:
    """Per-process indexes over the shared store, refreshed at most every `refresh_seconds`.

    Each project's index is an immutable `LexicalIndex` snapshot. A task takes the current one and
    searches it without a lock. A refresh reads the rows changed since the snapshot's seq, builds the
    next snapshot from the old one and swaps the reference; the lock that guards the references is
    never held across the query. Refreshes of one project run one at a time: a task that finds the
    project due while another thread refreshes it waits at most `refresh_wait` seconds for that refresh
    (a hanging store cannot hold every task), then uses the newest snapshot. When the store is down,
    tasks keep the last snapshot (none loaded yet: no examples, zero-shot) and one warning line is
    logged per outage. `clock` is injectable so tests advance time instead of sleeping."""

    def __init__(
        self,
        store: ExampleStore,
        k: int,
        token_budget: int,
        refresh_seconds: float = 1.0,
        shortlist: ShortlistPolicy = ShortlistPolicy(),
        vectors: CandidateSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        refresh_wait: float = 2.0,
        gazetteers: GazetteerBook | None = None,
        lead: LeadSource | None = None,
    ) -> None:
        self.store = store
        self.lead = lead  # the student's top labels lead a label shortlist (None: no student)
        self.k = k
        self.token_budget = token_budget
        self.refresh_seconds = refresh_seconds
        self.shortlist = shortlist
        self.vectors = vectors
        self.clock = clock
        self.refresh_wait = refresh_wait
        self.gazetteers = gazetteers  # span candidates from reviewed examples (STUDENT_MODE hint/cascade)
        self._projects: dict[str, _ProjectIndex] = {}
        self._lock = threading.Lock()  # guards the dict and the snapshot references, never held across I/O
        self._lexicon = functools.lru_cache(maxsize=256)(Lexicon)  # label words, once per control

    def index(self, project_id: str) -> LexicalIndex:
        """The project's current snapshot, refreshed first when it is older than `refresh_seconds`."""
        with self._lock:
            project = self._projects.setdefault(project_id, _ProjectIndex())
            snapshot, checked = project.snapshot, project.checked
        if checked is not None and self.clock() - checked < self.refresh_seconds:
            return snapshot
        if not project.refreshing.acquire(timeout=self.refresh_wait):
            with self._lock:
                return project.snapshot  # another thread's refresh is slow (a hanging store): use what we have
        try:
            with self._lock:  # another thread may have refreshed while this one waited
                snapshot, checked = project.snapshot, project.checked
            started = self.clock()
            if checked is not None and started - checked < self.refresh_seconds:
                return snapshot
            try:
                rows = self.store.changed_since(project_id, snapshot.seq)
            except SQLAlchemyError as exc:
                if not project.store_down:
                    log.warning(
                        "project %s: example store unavailable (%s); few-shot examples come from the last "
                        "snapshot (%d examples; none: zero-shot) until it answers",
                        project_id,
                        type(exc).__name__,
                        len(snapshot.entries),
                    )
                with self._lock:
                    project.checked, project.store_down = started, True
                return snapshot
            fresh = snapshot.updated(rows)
            with self._lock:
                project.snapshot, project.checked = fresh, started
                recovered, project.store_down = project.store_down, False
            if recovered:
                log.info("project %s: example store available again", project_id)
            return fresh
        finally:
            project.refreshing.release()

    def choose(
        self, project_id: str | None, index: LexicalIndex, spec: TaskSpec, text: str, held_out: bool = False
    ) -> tuple[TaskSpec, list[Entry]]:
        """Embeddings similarity when configured and reachable, else the lexical default (the vector
        source logs one warning line per outage). `held_out`: the task is a reviewed example asked again,
        so examples with its very text are left out and the student (trained on it) does not lead."""
        lead = None
        if (self.lead is not None and not held_out
                and any(needs_shortlist(c, self.shortlist.threshold) for c in spec.controls)):
            lead = self.lead(project_id, spec, text)
        candidates = None
        if self.vectors is not None:
            try:
                candidates = self.vectors.candidates(project_id, index, text, self.k + int(held_out))
            except self.vectors.unavailable:
                log.debug("project %s: lexical selection for this task (embeddings unavailable)", project_id)
        if candidates is None:
            candidates = lexical_candidates(index, text, self.k + int(held_out), self._lexicon)
        if held_out:
            candidates = replace(candidates, hits=[(s, a) for s, a in candidates.hits
                                                   if _entry_text(index.entries[a], spec) != text])
        return choose_for_task(index.entries, candidates, spec, self.k, self.token_budget, self.shortlist, lead)

    def context(self, project_id: str | None, spec: TaskSpec, texts: Mapping[str, str],
                held_out: bool = False) -> TaskContext:
        """The (possibly shortlisted) spec and the few-shot examples for one task (`held_out`: see choose)."""
        shortlisting = any(needs_shortlist(c, self.shortlist.threshold) for c in spec.controls)
        index = self.index(project_id) if project_id is not None and self.k > 0 else LexicalIndex()
        if not index.entries and not shortlisting:
            return TaskContext(spec, ())
        narrowed, chosen = self.choose(project_id, index, spec, " ".join(texts.values()), held_out)
        out = [ex for ex in (entry_to_example(e, narrowed) for e in chosen) if ex is not None]
        if out:
            log.debug(
                "project %s: %d examples selected (annotations %s)",
                project_id,
                len(out),
                [e.example.annotation_id for e in chosen],
            )
        return TaskContext(narrowed, tuple(out), self._candidates(project_id, narrowed, index, texts))

    def _candidates(
        self, project_id: str | None, spec: TaskSpec, index: LexicalIndex, texts: Mapping[str, str]
    ) -> tuple[SpanCandidate, ...]:
        """The gazetteers' matches in this task (none without a gazetteer book or a project)."""
        if self.gazetteers is None or project_id is None:
            return ()
        rows = [entry.example for entry in index.entries.values()]
        return self.gazetteers.candidates(project_id, spec, index.seq, rows, texts)
