"""Few-shot selection (`backend.learning.selection`): the rules of `choose` on hand-made examples, the
immutable index snapshots, and the selector under concurrent refreshes against a real SQLite store."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from conftest import config
from scripted_provider import hashed_bag_of_words

from backend.learning.selection import Entry, LexicalIndex, Selector, choose, tokenize
from backend.learning.vector_index import VectorSource
from backend.store.db import make_engine, migrate, write
from backend.store.example_store import ExampleStore, StoredExample
from backend.store.project_store import next_generation
from converters.task_spec import build_task_spec

SENT = build_task_spec(config("sentiment"))
NER = build_task_spec(config("ner"))
PID = "7"


def result(label: str | None) -> list[dict[str, Any]]:
    if label is None:
        return []
    return [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def row(aid: int, text: str, label: str | None = "positive", corrected: bool = False, seq: int = 1,
        status: str = "live") -> StoredExample:
    labels = [label] if label else []
    return StoredExample(aid, aid, {"text": text}, result(label), labels, corrected, None, 0.0, status, seq)


def entry(aid: int, text: str = "some text", label: str | None = "positive", corrected: bool = False) -> Entry:
    words = frozenset(tokenize(text))
    return Entry(row(aid, text, label, corrected), words, 1.0)


def no_overlap(a: int, b: int) -> float:
    return 0.0


def ids(chosen: list[Entry]) -> list[int]:
    return [e.example.annotation_id for e in chosen]


# --- choose: the rules, on hand-made hits ----------------------------------------------------------


def test_choose_nothing_for_no_hits_or_no_k() -> None:
    entries = {1: entry(1)}
    assert choose(entries, [], SENT, 4, 1000, no_overlap) == []
    assert choose(entries, [(1.0, 1)], SENT, 0, 1000, no_overlap) == []


def test_choose_covers_every_single_choice_label_before_repeating_one() -> None:
    # six very similar positives, then a negative and a neutral that are much less similar
    entries = {a: entry(a, label="positive") for a in range(1, 7)}
    entries[7] = entry(7, label="negative")
    entries[8] = entry(8, label="neutral")
    hits = [(1.0 - a / 100, a) for a in range(1, 7)] + [(0.2, 7), (0.1, 8)]
    chosen = choose(entries, hits, SENT, 3, 10_000, no_overlap)
    # cap = ceil(3 / 3 labels) = 1 per label: the best positive, then the negative and the neutral
    assert sorted(ids(chosen)) == [1, 7, 8]
    # k=4: cap = ceil(4 / 3) = 2 per label: two positives, and both other labels still appear
    assert sorted(ids(choose(entries, hits, SENT, 4, 10_000, no_overlap))) == [1, 2, 7, 8]
    # k=6: once the negative and the neutral are used up, the rest is filled by relevance
    assert sorted(ids(choose(entries, hits, SENT, 6, 10_000, no_overlap))) == [1, 2, 3, 4, 7, 8]


def test_choose_falls_back_to_any_label_when_the_capped_ones_are_exhausted() -> None:
    entries = {1: entry(1, label="positive"), 2: entry(2, label="positive"), 3: entry(3, label="negative")}
    hits = [(1.0, 1), (0.9, 2), (0.8, 3)]
    # 2 labels, k=3: cap = ceil(3/2) = 2, so both positives and the negative
    assert sorted(ids(choose(entries, hits, SENT, 3, 10_000, no_overlap))) == [1, 2, 3]
    # k=2 and a 3-label control: more labels than k, no coverage: the two most similar (both positive)
    assert sorted(ids(choose(entries, hits, SENT, 2, 10_000, no_overlap))) == [1, 2]


def test_choose_covers_labels_only_when_the_control_has_no_more_labels_than_k() -> None:
    # a 2-label control and k=2: the cap (1 per label) keeps the less similar negative in the prompt
    two = build_task_spec(
        '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
        '<Choice value="positive"/><Choice value="negative"/></Choices></View>'
    )
    entries = {1: entry(1, label="positive"), 2: entry(2, label="positive"), 3: entry(3, label="negative")}
    hits = [(1.0, 1), (0.9, 2), (0.8, 3)]
    assert sorted(ids(choose(entries, hits, two, 2, 10_000, no_overlap))) == [1, 3]


def test_choose_keeps_the_nearest_same_intent_examples_of_a_large_label_set() -> None:
    # 20 intents, k=8: the five nearest examples share one intent, the next ones span 5 others. The old
    # cap (ceil(8/6) = 2 per label) kept only two of the five; relevance alone keeps all five.
    intents = [f"intent{i}" for i in range(20)]
    many = build_task_spec(
        '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
        + "".join(f'<Choice value="{v}"/>' for v in intents) + "</Choices></View>"
    )
    entries = {a: entry(a, label="intent0") for a in range(1, 6)}
    entries.update({a: entry(a, label=intents[a - 5]) for a in range(6, 12)})
    hits = [(1.0 - a / 100, a) for a in range(1, 12)]
    chosen = ids(choose(entries, hits, many, 8, 10_000, no_overlap))
    assert {1, 2, 3, 4, 5} <= set(chosen)
    assert len(chosen) == 8


def test_choose_prefers_corrections() -> None:
    entries = {1: entry(1, corrected=False), 2: entry(2, corrected=True)}
    # equal similarity: the reviewer's correction wins (without the boost the lower id would)
    assert ids(choose(entries, [(1.0, 1), (1.0, 2)], SENT, 1, 10_000, no_overlap)) == [2]
    assert ids(choose(entries, [(1.0, 1), (1.0, 2)], SENT, 1, 10_000, no_overlap, correction_boost=1.0)) == [1]
    # a correction a little less similar (0.9 * 1.15 > 1.0) still wins; a much less similar one does not
    assert ids(choose(entries, [(1.0, 1), (0.9, 2)], SENT, 1, 10_000, no_overlap)) == [2]
    assert ids(choose(entries, [(1.0, 1), (0.8, 2)], SENT, 1, 10_000, no_overlap)) == [1]


def test_choose_penalises_redundancy_mmr() -> None:
    # 2 is a near-duplicate of 1; 3 is less similar to the task but says something different
    entries = {a: entry(a) for a in (1, 2, 3)}
    hits = [(1.0, 1), (0.95, 2), (0.8, 3)]

    def overlap(a: int, b: int) -> float:
        return 1.0 if {a, b} == {1, 2} else 0.0

    # after 1: 0.7 * 0.95 - 0.3 * 1.0 = 0.365 for 2, 0.7 * 0.8 = 0.56 for 3
    assert sorted(ids(choose(entries, hits, SENT, 2, 10_000, overlap))) == [1, 3]
    # without diversity, pure relevance
    assert sorted(ids(choose(entries, hits, SENT, 2, 10_000, overlap, diversity=0.0))) == [1, 2]


def test_choose_order_is_least_to_most_relevant_and_deterministic() -> None:
    entries = {a: entry(a, label=None) for a in (3, 5, 8, 9)}
    hits = [(0.9, 8), (0.5, 3), (0.5, 5), (0.2, 9)]
    chosen = ids(choose(entries, hits, NER, 4, 10_000, no_overlap))
    # the most relevant sits last (right before the task); equal relevance: the lower id nearer the task
    assert chosen == [9, 5, 3, 8]
    for shuffled in (list(reversed(hits)), hits[1:] + hits[:1]):
        assert ids(choose(entries, shuffled, NER, 4, 10_000, no_overlap)) == chosen
    # a tie for the last place goes to the lower annotation id
    assert sorted(ids(choose(entries, hits, NER, 2, 10_000, no_overlap))) == [3, 8]


def test_choose_negative_similarity_counts_as_zero() -> None:
    entries = {1: entry(1, label=None), 2: entry(2, label=None)}
    # clamped to 0: a tie broken by id, not by how negative the score is
    assert ids(choose(entries, [(-0.1, 2), (-0.5, 1)], NER, 1, 10_000, no_overlap)) == [1]


def test_choose_stays_within_the_token_budget() -> None:
    # tokens per example: (characters of data + 40 per region) // 4 + 8
    long_text = "x" * 400  # (400 + 40) // 4 + 8 = 118 tokens
    short_text = "y" * 20  # (20 + 40) // 4 + 8 = 23 tokens
    entries = {1: entry(1, long_text, label=None)}
    entries.update({a: entry(a, short_text, label=None) for a in range(2, 8)})
    hits = [(1.0, 1)] + [(0.9 - a / 100, a) for a in range(2, 8)]
    chosen = choose(entries, hits, NER, 8, 100, no_overlap)
    # the most similar example does not fit at all; four short ones do (92 tokens), a fifth would not
    assert ids(chosen) == [5, 4, 3, 2]
    assert ids(choose(entries, hits, NER, 8, 118, no_overlap))[-1] == 1


# --- the index snapshots -------------------------------------------------------------------------


def test_updated_leaves_the_old_snapshot_untouched() -> None:
    old = LexicalIndex.build([row(1, "red apple", seq=1), row(2, "green apple", seq=1)])
    before = ({a: e.tokens for a, e in old.entries.items()}, {w: set(p) for w, p in old.postings.items()}, old.seq)
    new = old.updated([row(3, "red car", seq=2), row(1, "", status="deleted", seq=2)])
    after = ({a: e.tokens for a, e in old.entries.items()}, {w: set(p) for w, p in old.postings.items()}, old.seq)
    assert after == before  # a reader holding the old snapshot never sees it change
    assert set(new.entries) == {2, 3} and new.seq == 2
    assert {w: set(p) for w, p in new.postings.items()} == {"green": {2}, "apple": {2}, "red": {3}, "car": {3}}
    assert old.updated([]) is old


def index_is_consistent(index: LexicalIndex) -> bool:
    expected: dict[str, set[int]] = {}
    for aid, e in index.entries.items():
        for word in e.tokens:
            expected.setdefault(word, set()).add(aid)
    return {w: set(p) for w, p in index.postings.items()} == expected


# --- the selector against a real store -------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ExampleStore]:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    yield ExampleStore(engine)
    engine.dispose()


def add(store: ExampleStore, examples: list[tuple[int, str, str]], deleted: tuple[int, ...] = ()) -> None:
    """Write examples (annotation id, text, label) and deletions in one transaction, as the learner does."""
    with write(store.engine) as conn:
        seq = next_generation(conn, PID)
        for aid, text, label in examples:
            values = {
                "task_id": aid,
                "data": json.dumps({"text": text}),
                "result": json.dumps(result(label)),
                "labels": json.dumps([label]),
                "corrected": 0,
                "completed_by": None,
                "updated_at": float(seq),
                "status": "live",
            }
            store.upsert(conn, PID, aid, values, seq)
        if deleted:
            store.delete(conn, PID, deleted, seq)


def live_ids(store: ExampleStore) -> set[int]:
    with store.engine.connect() as conn:
        return {r.annotation_id for r in store.all_rows(conn, PID, ("live",))}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(ExampleStore):
    def __init__(self, inner: ExampleStore) -> None:
        super().__init__(inner.engine)
        self.queries = 0

    def changed_since(self, project_id: str, seq: int) -> list[StoredExample]:
        self.queries += 1
        return super().changed_since(project_id, seq)


def test_selector_refreshes_at_most_every_refresh_seconds(store: ExampleStore) -> None:
    clock = FakeClock()
    counting = CountingStore(store)
    selector = Selector(counting, k=2, token_budget=1000, refresh_seconds=1.0, clock=clock)
    add(store, [(1, "the battery died", "negative")])
    assert set(selector.index(PID).entries) == {1} and counting.queries == 1
    add(store, [(2, "a lovely day", "positive")])
    clock.now += 0.9
    assert set(selector.index(PID).entries) == {1} and counting.queries == 1  # within the TTL: no query
    clock.now += 0.1
    assert set(selector.index(PID).entries) == {1, 2} and counting.queries == 2


def test_concurrent_refresh_and_selection_never_break_a_task(store: ExampleStore) -> None:
    """Bug 1 (the index race): tasks searched the index while another thread's refresh mutated its sets
    ("Set changed size during iteration", KeyError) and the task answered []. Here a writer adds, changes
    and deletes examples through the real store while reader threads select (every call refreshes):
    no call may fail, every task gets 1..k examples, and the final index matches the store."""
    words = ["battery", "screen", "phone", "price", "delivery", "service", "quality", "refund"]
    # every example shares the common words, so each search walks large posting sets the refresh changes
    seed = [(aid, f"common shared {words[aid % 8]} {words[(aid * 3) % 8]} item{aid}", "positive")
            for aid in range(1, 401)]
    for start in range(0, len(seed), 100):
        add(store, seed[start : start + 100])
    selector = Selector(store, k=4, token_budget=10_000, refresh_seconds=0)
    selector.index(PID)
    rounds, written = 80, {aid for aid, _, _ in seed}
    errors: list[BaseException] = []
    done = threading.Event()
    calls = [0]

    def writer() -> None:
        try:
            next_id = 1000
            for i in range(rounds):
                batch = []
                for _ in range(6):
                    next_id += 1
                    batch.append((next_id, f"common shared {words[next_id % 8]} new{next_id}", "negative"))
                changed = (1 + (i * 7) % 400, f"common shared rewritten {i}", "neutral")
                written.update(aid for aid, _, _ in batch)
                add(store, batch + [changed], deleted=(next_id - 12,) if i % 2 else ())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            done.set()

    def reader(query: str) -> None:
        try:
            while not done.is_set():
                context = selector.context(PID, SENT, {"text": query})
                calls[0] += 1
                assert 0 < len(context.examples) <= 4, context
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    queries = ["common shared battery", "shared phone price common", "common delivery refund", "quality common"]
    threads = [threading.Thread(target=reader, args=(q,)) for q in queries] + [threading.Thread(target=writer)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that an unguarded iteration meets a change
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, f"{len(errors)} failures, first: {errors[0]!r}"
    assert calls[0] > 50
    final = selector.index(PID)
    assert set(final.entries) == live_ids(store)
    assert set(final.entries) <= written
    assert index_is_consistent(final)



# --- the embeddings source under concurrency -------------------------------------------------------


class FakeEmbedder:
    """The Embedder interface over hashed bags of words; texts containing "slow" wait for `gate`."""

    model = "fake-embeddings"
    batch_size = 16

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if any("slow" in t for t in texts):
            assert self.gate.wait(30)
        return np.asarray([hashed_bag_of_words(t) for t in texts], dtype=np.float32)


def test_concurrent_refresh_and_embeddings_selection_never_break_a_task(store: ExampleStore) -> None:
    """A guard for the embeddings path under the lexical stress test's load (vectors follow the index's
    snapshots). It passed on the old code too; what failed there is the next test."""
    seed = [(aid, f"common shared words item{aid}", "positive") for aid in range(1, 201)]
    add(store, seed)
    vectors = VectorSource(cast(Any, FakeEmbedder()))
    selector = Selector(store, k=4, token_budget=10_000, refresh_seconds=0, vectors=vectors)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for i in range(80):
                base = 1000 + 5 * i
                add(store, [(base + j, f"common shared words new{base + j}", "negative") for j in range(5)],
                    deleted=(base - 10,) if i % 2 else ())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            done.set()

    def reader() -> None:
        try:
            while not done.is_set():
                assert 0 < len(selector.context(PID, SENT, {"text": "common shared words"}).examples) <= 4
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, f"{len(errors)} failures, first: {errors[0]!r}"


def test_a_slow_embeddings_sync_does_not_hold_up_other_tasks() -> None:
    """No lock is held across the embedder or the store for everyone: while one task embeds new
    examples, another waits at most `sync_wait` and then uses the vectors already there."""
    embedder = FakeEmbedder()
    source = VectorSource(cast(Any, embedder), sync_wait=0.2)
    first = LexicalIndex.build([row(a, f"battery phone {a}", seq=1) for a in range(1, 6)])
    assert len(source.candidates(PID, first, "battery", 2).hits) == 5
    second = first.updated([row(6, "slow battery phone", seq=2)])
    embedder.gate.clear()
    syncing = threading.Thread(target=source.candidates, args=(PID, second, "battery", 2))
    answers: list[list[tuple[float, int]]] = []
    waiting = threading.Thread(target=lambda: answers.append(source.candidates(PID, second, "battery", 2).hits))
    try:
        syncing.start()
        time.sleep(0.1)  # the first thread is now inside the slow embedding call
        started = time.monotonic()
        waiting.start()
        waiting.join(timeout=5)
        assert not waiting.is_alive(), "a task waited for another task's embedding call"
        assert time.monotonic() - started < 2.0
    finally:
        embedder.gate.set()
        syncing.join(timeout=10)
        waiting.join(timeout=10)
    assert {a for _, a in answers[0]} == {1, 2, 3, 4, 5}  # the vectors there were, the new one not yet
    assert {a for _, a in source.candidates(PID, second, "battery", 2).hits} == {1, 2, 3, 4, 5, 6}
