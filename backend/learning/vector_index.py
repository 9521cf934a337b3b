"""Embeddings similarity for few-shot selection and label shortlists (when EMBEDDINGS_MODEL is set).

`VectorSource.candidates` embeds the task text once and answers the same questions the lexical index
does: the nearest examples (cosine), how similar two examples are (for MMR), and how close the task is
to each label's own words. Examples' vectors are kept per project in memory, loaded from the store
(`backend.store.embedding_store`) or embedded once and stored there; label vectors are kept per label text.
Any failure raises EmbeddingsUnavailable, and the selector falls back to lexical for that task.
"""

from __future__ import annotations

import logging
import threading
from typing import Mapping

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from backend.store.embedding_store import EmbeddingStore, text_hash
from backend.llm.embeddings import Embedder, EmbeddingsUnavailable
from backend.learning.selection import Candidates, Entry, Hit, LexicalIndex, example_text, pool_size
from converters.shortlist import label_text
from converters.task_spec import ControlSpec

log = logging.getLogger(__name__)


class ProjectVectors:
    """Unit vectors of one project's live examples, for one embeddings model."""

    def __init__(self) -> None:
        self.vectors: dict[int, np.ndarray] = {}
        self.hashes: dict[int, str] = {}
        self.seq = -1  # the lexical index's seq these vectors match
        self.lock = threading.Lock()
        self._ids: list[int] = []
        self._matrix: np.ndarray | None = None

    def stale(self, entries: Mapping[int, Entry]) -> list[tuple[int, str, str]]:
        """(annotation id, text, text hash) of live entries without a current vector; forgets the
        vectors of examples that are no longer live."""
        for gone in [a for a in self.vectors if a not in entries]:
            del self.vectors[gone], self.hashes[gone]
            self._matrix = None
        out = []
        for annotation_id, entry in list(entries.items()):
            if annotation_id in self.vectors and entry.example.seq <= self.seq:
                continue
            text = example_text(entry.example.data)
            digest = text_hash(text)
            if self.hashes.get(annotation_id) != digest:
                out.append((annotation_id, text, digest))
        return out

    def reset_unless(self, dims: int) -> None:
        """Forget every vector when the model now answers with another length (a redeployed model)."""
        if self.vectors and next(iter(self.vectors.values())).shape[0] != dims:
            self.vectors.clear()
            self.hashes.clear()
            self.seq = -1
            self._matrix = None

    def add(self, annotation_id: int, digest: str, vector: np.ndarray) -> None:
        self.vectors[annotation_id] = vector
        self.hashes[annotation_id] = digest
        self._matrix = None

    def search(self, query: np.ndarray, pool: int) -> list[Hit]:
        """The `pool` nearest examples by cosine, best first, ties by annotation id."""
        if not self.vectors:
            return []
        if self._matrix is None:
            self._ids = sorted(self.vectors)
            self._matrix = np.stack([self.vectors[a] for a in self._ids])
        scores = self._matrix @ query
        order = np.lexsort((np.asarray(self._ids), -scores))[:pool]
        return [(float(scores[i]), self._ids[i]) for i in order]


class VectorSource:
    """The embeddings `CandidateSource` for `backend.learning.selection.Selector`."""

    unavailable = (EmbeddingsUnavailable,)

    def __init__(self, embedder: Embedder, store: EmbeddingStore | None = None) -> None:
        self.embedder = embedder
        self.store = store
        self._projects: dict[str, ProjectVectors] = {}
        self._labels: dict[str, np.ndarray] = {}  # label text -> vector
        self._lock = threading.Lock()

    def candidates(self, project_id: str | None, index: LexicalIndex, text: str, k: int) -> Candidates:
        query = self.embedder.embed([text])[0]
        hits: list[Hit] = []
        vectors: dict[int, np.ndarray] = {}
        if project_id is not None and index.entries:
            project = self._project(project_id)
            with project.lock:
                project.reset_unless(query.shape[0])
                self._sync(project_id, project, index, query.shape[0])
                hits = project.search(query, pool_size(k))
                vectors = {a: project.vectors[a] for _, a in hits}

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

    def _sync(self, project_id: str, project: ProjectVectors, index: LexicalIndex, dims: int) -> None:
        """Give every live example a vector of length `dims`: from memory, else the store, else the
        embedder (then stored). Raises EmbeddingsUnavailable; what was embedded before a failure is kept."""
        if project.seq == index.seq:
            return
        seq = index.seq
        stale = project.stale(index.entries)
        model = self.embedder.model
        if stale and self.store is not None:
            try:
                stored = self.store.load(project_id, model, [a for a, _, _ in stale])
            except SQLAlchemyError:
                stored = {}
            for annotation_id, _, digest in stale:
                found = stored.get(annotation_id)
                if found is not None and found[0] == digest and found[1].shape[0] == dims:
                    project.add(annotation_id, digest, found[1])
            stale = [s for s in stale if project.hashes.get(s[0]) != s[2]]
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
                project.add(annotation_id, digest, vector)
        project.seq = seq
