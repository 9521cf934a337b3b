"""Embeddings similarity for few-shot selection and label shortlists: a provider's model (EMBEDDINGS_MODEL)
or, by default, the bundled WordLlama vectors (`backend.llm.local_embeddings`; SELECTION_SIMILARITY=lexical
turns embeddings off).

`VectorSource.candidates` embeds the task text once and answers the same questions the lexical index
does: the nearest examples (cosine), how similar two examples are (for MMR), and how close the task is
to each label's own words. Examples' vectors are kept per project in memory, loaded from the store
(`backend.store.embedding_store`) or embedded once and stored there; label vectors are kept per label text.
Any failure raises EmbeddingsUnavailable, and the selector falls back to lexical for that task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from backend.learning.selection import Candidates, Entry, Hit, LexicalIndex, example_text, pool_size
from backend.llm.embeddings import Embedder, EmbeddingsConfig, EmbeddingsUnavailable
from backend.store.embedding_store import EmbeddingStore, text_hash
from converters.shortlist import label_text
from converters.task_spec import ControlSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VectorSnapshot:
    """Unit vectors of one project's live examples, for one embeddings model; never changed once built.

    A sync builds the next snapshot and swaps the reference, so a search never sees the vectors change
    under it (the lexical index works the same way)."""

    vectors: Mapping[int, np.ndarray] = field(default_factory=dict)
    hashes: Mapping[int, str] = field(default_factory=dict)
    seq: int = -1  # the lexical index's seq these vectors match
    ids: tuple[int, ...] = ()
    matrix: np.ndarray | None = None

    @classmethod
    def of(cls, vectors: Mapping[int, np.ndarray], hashes: Mapping[int, str], seq: int) -> VectorSnapshot:
        ids = tuple(sorted(vectors))
        matrix = np.stack([vectors[a] for a in ids]) if ids else None
        return cls(dict(vectors), dict(hashes), seq, ids, matrix)

    @property
    def dims(self) -> int | None:
        return None if self.matrix is None else int(self.matrix.shape[1])

    def stale(self, entries: Mapping[int, Entry]) -> list[tuple[int, str, str]]:
        """(annotation id, text, text hash) of live entries without a current vector."""
        out = []
        for annotation_id, entry in entries.items():
            if annotation_id in self.vectors and entry.example.seq <= self.seq:
                continue
            text = example_text(entry.example.data)
            digest = text_hash(text)
            if self.hashes.get(annotation_id) != digest:
                out.append((annotation_id, text, digest))
        return out

    def search(self, query: np.ndarray, pool: int) -> list[Hit]:
        """The `pool` nearest examples by cosine, best first, ties by annotation id."""
        if self.matrix is None:
            return []
        scores = self.matrix @ query
        order = np.lexsort((np.asarray(self.ids), -scores))[:pool]
        return [(float(scores[i]), self.ids[i]) for i in order]


@dataclass
class ProjectVectors:
    """A project's current vector snapshot; `syncing` lets one thread at a time build the next one."""

    snapshot: VectorSnapshot = field(default_factory=VectorSnapshot)
    syncing: threading.Lock = field(default_factory=threading.Lock)


class VectorSource:
    """The embeddings `CandidateSource` for `backend.learning.selection.Selector`."""

    unavailable: tuple[type[Exception], ...] = (EmbeddingsUnavailable,)

    def __init__(self, embedder: Embedder, store: EmbeddingStore | None = None, sync_wait: float = 2.0) -> None:
        self.embedder = embedder
        self.store = store
        self.sync_wait = sync_wait  # how long a task waits for another thread's sync before using what is there
        self._projects: dict[str, ProjectVectors] = {}
        self._labels: dict[str, np.ndarray] = {}  # label text -> vector
        self._lock = threading.Lock()  # guards the dicts; never held across the store or the embedder

    def candidates(self, project_id: str | None, index: LexicalIndex, text: str, k: int) -> Candidates:
        query = self.embedder.embed([text])[0]
        hits: list[Hit] = []
        vectors: dict[int, np.ndarray] = {}
        if project_id is not None and index.entries:
            snapshot = self._current(project_id, index, query.shape[0])
            # a snapshot a step ahead of or behind this task's index: only the examples the index has
            hits = [(s, a) for s, a in snapshot.search(query, pool_size(k)) if a in index.entries]
            vectors = {a: snapshot.vectors[a] for _, a in hits}

        def overlap(a: int, b: int) -> float:
            return max(0.0, float(vectors[a] @ vectors[b]))

        return Candidates(hits, overlap, lambda control: self.label_similarity(control, query))

    def label_similarity(self, control: ControlSpec, query: np.ndarray) -> dict[str, float]:
        """Label value -> cosine of the task with the label's text (value, alias, description)."""
        texts = {label.value: label_text(label) for label in control.labels}
        with self._lock:
            known = {t for t, v in self._labels.items() if v.shape == query.shape}
            missing = sorted(set(texts.values()) - known)
        if missing:
            for t, vector in zip(missing, self.embedder.embed(missing)):
                with self._lock:
                    self._labels[t] = vector
        with self._lock:
            return {value: max(0.0, float(self._labels[t] @ query)) for value, t in texts.items()}

    def _project(self, project_id: str) -> ProjectVectors:
        with self._lock:
            return self._projects.setdefault(project_id, ProjectVectors())

    def _current(self, project_id: str, index: LexicalIndex, dims: int) -> VectorSnapshot:
        """The project's vector snapshot, synced to `index` first when it is behind (one thread at a
        time; another waits at most `sync_wait` s, then uses the snapshot there is). Raises
        EmbeddingsUnavailable when this thread's sync fails (what was embedded before is kept)."""
        project = self._project(project_id)
        snapshot = project.snapshot
        if snapshot.seq >= index.seq and snapshot.dims in (None, dims):
            return snapshot
        if not project.syncing.acquire(timeout=self.sync_wait):
            return project.snapshot
        try:
            snapshot = project.snapshot
            if snapshot.seq >= index.seq and snapshot.dims in (None, dims):
                return snapshot
            if snapshot.dims not in (None, dims):
                snapshot = VectorSnapshot()  # the model now answers with another length (a redeployed model)
            snapshot = self._sync(project_id, project, snapshot, index, dims)
            return snapshot
        finally:
            project.syncing.release()

    def _sync(
        self, project_id: str, project: ProjectVectors, old: VectorSnapshot, index: LexicalIndex, dims: int
    ) -> VectorSnapshot:
        """Give every live example of `index` a vector of length `dims`: from the old snapshot, else the
        store, else the embedder (then stored); publish the new snapshot. Raises EmbeddingsUnavailable;
        what was embedded before a failure is published (at the old seq, so the next sync goes on)."""
        vectors = {a: v for a, v in old.vectors.items() if a in index.entries}
        hashes = {a: h for a, h in old.hashes.items() if a in index.entries}
        stale = old.stale(index.entries)
        model = self.embedder.model
        done = False
        try:
            if stale and self.store is not None:
                try:
                    stored = self.store.load(project_id, model, [a for a, _, _ in stale])
                except SQLAlchemyError:
                    stored = {}
                for annotation_id, _, digest in stale:
                    found = stored.get(annotation_id)
                    if found is not None and found[0] == digest and found[1].shape[0] == dims:
                        vectors[annotation_id], hashes[annotation_id] = found[1], digest
                stale = [s for s in stale if hashes.get(s[0]) != s[2]]
            size = self.embedder.batch_size
            for start in range(0, len(stale), size):
                batch = stale[start : start + size]
                matrix = self.embedder.embed([t for _, t, _ in batch])
                rows = [(a, digest, matrix[i]) for i, (a, _, digest) in enumerate(batch)]
                if self.store is not None:
                    try:
                        self.store.save(project_id, model, rows)
                    except SQLAlchemyError:
                        log.warning("project %s: example embeddings not stored (store unavailable)", project_id)
                for annotation_id, digest, vector in rows:
                    vectors[annotation_id], hashes[annotation_id] = vector, digest
            done = True
        finally:
            snapshot = VectorSnapshot.of(vectors, hashes, index.seq if done else old.seq)
            project.snapshot = snapshot
        return snapshot


class TextEmbedder(Protocol):
    model: str
    batch_size: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class GuardedEmbedder:
    """An embedder whose every failure is EmbeddingsUnavailable, so that the selector falls back to lexical
    for the task (the bundled model missing or broken must never fail a prediction). Logs one line."""

    def __init__(self, inner: TextEmbedder) -> None:
        self.inner = inner
        self.model = inner.model
        self.batch_size = inner.batch_size
        self._warned = False

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        try:
            return self.inner.embed(texts)
        except Exception as exc:  # noqa: BLE001 - any failure of the embedded model
            if not self._warned:
                self._warned = True
                log.warning("embedded embeddings unavailable (%s: %s); selection is lexical", type(exc).__name__, exc)
            raise EmbeddingsUnavailable(type(exc).__name__) from exc


def vector_source(similarity: str, provider: EmbeddingsConfig | None, local: TextEmbedder,
                  store: EmbeddingStore | None) -> VectorSource | None:
    """The selector's embeddings source: the provider's model when EMBEDDINGS_MODEL is set, else the bundled
    WordLlama vectors; None (lexical) when SELECTION_SIMILARITY=lexical."""
    if similarity == "lexical":
        return None
    if provider is not None:
        return VectorSource(Embedder(provider), store)
    return VectorSource(GuardedEmbedder(local), store)  # type: ignore[arg-type]
