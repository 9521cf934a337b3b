"""Examples' embeddings in the store, keyed by project, annotation and model, so that each example is
embedded once: a restart, another worker or another replica loads the vector instead of paying again.

A vector is kept with a hash of the text it was made from; a changed text is embedded anew. Vectors are
float32 little-endian bytes (portable between machines and between SQLite and PostgreSQL).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence

import numpy as np
from sqlalchemy import and_, func, select
from sqlalchemy.engine import Engine

from backend.store.db import example_embeddings, insert_ignore, write

_CHUNK = 500  # ids per IN (...) query, well under SQLite's variable limit


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pack(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def unpack(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


class EmbeddingStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load(self, project_id: str, model: str, annotation_ids: Iterable[int]) -> dict[int, tuple[str, np.ndarray]]:
        """annotation id -> (text hash, vector) for the ids that have one for this model."""
        ids = list(annotation_ids)
        out: dict[int, tuple[str, np.ndarray]] = {}
        t = example_embeddings.c
        with self.engine.connect() as conn:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                rows = conn.execute(
                    select(t.annotation_id, t.text_hash, t.vector).where(
                        and_(t.project_id == project_id, t.model == model, t.annotation_id.in_(chunk))
                    )
                )
                for row in rows:
                    out[int(row.annotation_id)] = (row.text_hash, unpack(row.vector))
        return out

    def save(self, project_id: str, model: str, rows: Sequence[tuple[int, str, np.ndarray]]) -> None:
        """Store (annotation id, text hash, vector) rows, replacing what was stored for those examples
        (a changed text, or a redeployed model answering another length)."""
        if not rows:
            return
        t = example_embeddings.c
        now = time.time()
        with write(self.engine) as conn:
            for annotation_id, digest, vector in rows:
                key = and_(t.project_id == project_id, t.annotation_id == annotation_id, t.model == model)
                conn.execute(
                    example_embeddings.update().where(key).values(text_hash=digest, vector=pack(vector), created_at=now)
                )
                insert_ignore(
                    conn,
                    example_embeddings,
                    {
                        "project_id": project_id,
                        "annotation_id": annotation_id,
                        "model": model,
                        "text_hash": digest,
                        "vector": pack(vector),
                        "created_at": now,
                    },
                )

    def count(self, project_id: str, model: str) -> int:
        t = example_embeddings.c
        with self.engine.connect() as conn:
            query = select(func.count()).where(and_(t.project_id == project_id, t.model == model))
            return int(conn.execute(query).scalar_one())
