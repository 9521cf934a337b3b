"""Review outcomes (live agreement) in the shared store: one row per reviewed annotation.

Written by the event worker inside the transaction that applies the annotation's event, so the
outcome and the example change together; read by /projects/<id>/quality, /metrics and `lsllm report`
in any worker or replica. Figures are recomputed from the rows (backend.learning.agreement), so a
re-delivered or updated annotation replaces its row and a deleted one removes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection, Engine

from backend.store.db import examples, insert_ignore, review_outcomes


@dataclass(frozen=True)
class ReviewOutcome:
    """One reviewed prediction: per control, what the model said (`predicted`) and what the reviewer
    kept (`reviewed`): {"type": "choices", "choice": str | None} or {"type": "labels", "spans": [[s, e, l]]}."""

    model_version: str
    score: float | None
    accepted: bool
    right: bool
    predicted: dict[str, dict[str, Any]] = field(default_factory=dict)
    reviewed: dict[str, dict[str, Any]] = field(default_factory=dict)
    prediction_id: int | None = None
    examples_before: int = 0


class QualityStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self, conn: Connection, project_id: str, annotation_id: int, task_id: int | None, outcome: ReviewOutcome,
        updated_at: float,
    ) -> None:
        """Store (or replace) one annotation's outcome. `examples_before` is set at the first delivery:
        the project's live examples other than this annotation, i.e. what the backend had learnt."""
        key = and_(review_outcomes.c.project_id == project_id, review_outcomes.c.annotation_id == annotation_id)
        values = {
            "task_id": task_id,
            "model_version": outcome.model_version[:200],
            "prediction_id": outcome.prediction_id,
            "score": outcome.score,
            "accepted": int(outcome.accepted),
            "is_right": int(outcome.right),
            "predicted": json.dumps(outcome.predicted, ensure_ascii=False),
            "reviewed": json.dumps(outcome.reviewed, ensure_ascii=False),
            "updated_at": float(updated_at),
            "recorded_at": time.time(),
        }
        if conn.execute(review_outcomes.update().where(key).values(**values)).rowcount:
            return
        before = conn.execute(
            select(func.count())
            .select_from(examples)
            .where(examples.c.project_id == project_id)
            .where(examples.c.status == "live")
            .where(examples.c.annotation_id != annotation_id)
        ).scalar_one()
        row = {"project_id": project_id, "annotation_id": annotation_id, "examples_before": int(before), **values}
        if not insert_ignore(conn, review_outcomes, row):  # another worker inserted it meanwhile
            conn.execute(review_outcomes.update().where(key).values(**values))

    def remove(self, conn: Connection, project_id: str, annotation_ids: Iterable[int]) -> int:
        """Forget the outcomes of deleted (or skipped) annotations; returns rows removed."""
        ids = [int(a) for a in annotation_ids]
        if not ids:
            return 0
        return int(
            conn.execute(
                review_outcomes.delete()
                .where(review_outcomes.c.project_id == project_id)
                .where(review_outcomes.c.annotation_id.in_(ids))
            ).rowcount
        )

    def outcomes(self, project_id: str) -> tuple[list[ReviewOutcome], list[str]]:
        """A project's outcomes (by annotation id) and its model versions, oldest first (by first review)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(review_outcomes)
                .where(review_outcomes.c.project_id == project_id)
                .order_by(review_outcomes.c.annotation_id)
            ).all()
        return [_outcome(r) for r in rows], _versions(rows)

    def fingerprint(self) -> tuple[int, float]:
        """(rows, newest recorded_at): changes whenever an outcome is recorded, updated or removed, so
        the /metrics gauges are recomputed only then, not on every scrape."""
        with self.engine.connect() as conn:
            n, newest = conn.execute(select(func.count(), func.max(review_outcomes.c.recorded_at))).one()
        return int(n or 0), float(newest or 0.0)

    def all_outcomes(self) -> dict[str, list[ReviewOutcome]]:
        """Every project's outcomes (for the /metrics gauges)."""
        out: dict[str, list[ReviewOutcome]] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(select(review_outcomes).order_by(review_outcomes.c.annotation_id)):
                out.setdefault(r.project_id, []).append(_outcome(r))
        return out


def _outcome(row: Any) -> ReviewOutcome:
    return ReviewOutcome(
        model_version=row.model_version,
        score=row.score,
        accepted=bool(row.accepted),
        right=bool(row.is_right),
        predicted=json.loads(row.predicted),
        reviewed=json.loads(row.reviewed),
        prediction_id=None if row.prediction_id is None else int(row.prediction_id),
        examples_before=int(row.examples_before),
    )


def _versions(rows: Iterable[Any]) -> list[str]:
    first: dict[str, tuple[int, float]] = {}
    for r in rows:
        seen = (int(r.examples_before), float(r.recorded_at))
        first[r.model_version] = min(first.get(r.model_version, seen), seen)
    return sorted(first, key=lambda v: first[v])
