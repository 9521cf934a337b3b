"""The durable event table and the example store, shared by every worker and replica.

Writes are conditional single statements, so applying an event twice, or two events for one annotation
in either order, leaves the state the newest event describes:
- an upsert only replaces a row whose `updated_at` is not newer than the incoming one;
- a deletion is final (Label Studio never reuses annotation ids), and a deletion that arrives before the
  creation leaves a tombstone the creation cannot overwrite.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection, Engine

from backend.store.db import events, examples, insert_ignore, write


@dataclass(frozen=True)
class PendingEvent:
    id: int
    project_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredExample:
    annotation_id: int
    task_id: int | None
    data: dict[str, Any]
    result: list[dict[str, Any]]
    labels: list[str]
    corrected: bool | None
    completed_by: str | None
    updated_at: float
    status: str
    seq: int

    def as_json(self) -> dict[str, Any]:
        return {
            "annotation_id": self.annotation_id,
            "task_id": self.task_id,
            "data": self.data,
            "result": self.result,
            "labels": self.labels,
            "corrected": self.corrected,
            "completed_by": self.completed_by,
            "updated_at": self.updated_at,
        }


def _row_to_example(row: Any) -> StoredExample:
    return StoredExample(
        annotation_id=int(row.annotation_id),
        task_id=int(row.task_id) if row.task_id is not None else None,
        data=json.loads(row.data or "{}"),
        result=json.loads(row.result or "[]"),
        labels=json.loads(row.labels or "[]"),
        corrected=None if row.corrected is None else bool(row.corrected),
        completed_by=row.completed_by,
        updated_at=float(row.updated_at),
        status=row.status,
        seq=int(row.seq),
    )


class ExampleStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- events --------------------------------------------------------------------------------
    def append_event(self, project_id: str, action: str, payload: dict[str, Any]) -> int:
        with write(self.engine) as conn:
            result = conn.execute(
                events.insert().values(
                    project_id=project_id,
                    action=action,
                    payload=json.dumps(payload, ensure_ascii=False),
                    received_at=time.time(),
                )
            )
            inserted = result.inserted_primary_key
            assert inserted is not None
            return int(inserted[0])

    def claim(self, limit: int = 50, lease_seconds: float = 30.0) -> list[PendingEvent]:
        """Lease the oldest unapplied events to this caller; expired leases (a killed worker) return."""
        owner = uuid.uuid4().hex
        now = time.time()
        with write(self.engine) as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    select(events.c.id)
                    .where(events.c.applied_at.is_(None))
                    .where(or_(events.c.lease_until.is_(None), events.c.lease_until < now))
                    .order_by(events.c.id)
                    .limit(limit)
                )
            ]
            if not ids:
                return []
            conn.execute(
                events.update()
                .where(events.c.id.in_(ids))
                .where(events.c.applied_at.is_(None))
                .where(or_(events.c.lease_until.is_(None), events.c.lease_until < now))
                .values(lease_until=now + lease_seconds, lease_owner=owner)
            )
            rows = conn.execute(
                select(events.c.id, events.c.project_id, events.c.action, events.c.payload)
                .where(events.c.lease_owner == owner)
                .where(events.c.applied_at.is_(None))
                .order_by(events.c.id)
            ).all()
        return [PendingEvent(r.id, r.project_id, r.action, json.loads(r.payload)) for r in rows]

    def mark_applied(self, conn: Connection, event_id: int, outcome: str, error: str | None = None) -> None:
        conn.execute(
            events.update()
            .where(events.c.id == event_id)
            .values(applied_at=time.time(), outcome=outcome, error=(error or None) and error[:2000])
        )

    def pending_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(events.c.applied_at.is_(None))).scalar_one())

    def event_counts(self, project_id: str | None = None) -> dict[str, int]:
        query = select(events.c.outcome, func.count()).group_by(events.c.outcome)
        if project_id is not None:
            query = query.where(events.c.project_id == project_id)
        with self.engine.connect() as conn:
            return {str(outcome or "pending"): int(n) for outcome, n in conn.execute(query)}

    # --- examples ------------------------------------------------------------------------------
    def upsert(
        self,
        conn: Connection,
        project_id: str,
        annotation_id: int,
        values: dict[str, Any],
        seq: int,
    ) -> bool:
        """Write one annotation's state unless a newer one or a deletion is stored; True if written."""
        now = time.time()
        row = {**values, "seq": seq, "stored_at": now}
        key = and_(examples.c.project_id == project_id, examples.c.annotation_id == annotation_id)
        conditional = (
            examples.update()
            .where(key)
            .where(examples.c.status != "deleted")
            .where(examples.c.updated_at <= values["updated_at"])
            .values(**row)
        )
        if conn.execute(conditional).rowcount:
            return True
        if insert_ignore(conn, examples, {"project_id": project_id, "annotation_id": annotation_id, **row}):
            return True
        # a row appeared meanwhile (another worker): apply the same conditional update once more
        return bool(conn.execute(conditional).rowcount)

    def delete(self, conn: Connection, project_id: str, annotation_ids: Iterable[int], seq: int) -> int:
        """Tombstone annotations: deleted stays deleted, also for a creation that arrives later."""
        changed = 0
        for annotation_id in annotation_ids:
            key = and_(examples.c.project_id == project_id, examples.c.annotation_id == annotation_id)
            tomb = {"status": "deleted", "seq": seq, "stored_at": time.time()}
            n = conn.execute(examples.update().where(key).where(examples.c.status != "deleted").values(**tomb)).rowcount
            if not n:
                n = insert_ignore(
                    conn,
                    examples,
                    {"project_id": project_id, "annotation_id": annotation_id, "updated_at": 0.0, **tomb},
                )
                if not n:
                    n = conn.execute(
                        examples.update().where(key).where(examples.c.status != "deleted").values(**tomb)
                    ).rowcount
            changed += n
        return changed

    def annotation_ids_for_tasks(self, conn: Connection, project_id: str, task_ids: Sequence[int]) -> list[int]:
        if not task_ids:
            return []
        return [
            int(r[0])
            for r in conn.execute(
                select(examples.c.annotation_id)
                .where(examples.c.project_id == project_id)
                .where(examples.c.task_id.in_(list(task_ids)))
            )
        ]

    def all_rows(self, conn: Connection, project_id: str, statuses: Sequence[str]) -> list[StoredExample]:
        rows = conn.execute(
            select(examples)
            .where(examples.c.project_id == project_id)
            .where(examples.c.status.in_(list(statuses)))
            .order_by(examples.c.annotation_id)
        )
        return [_row_to_example(r) for r in rows]

    def set_status(self, conn: Connection, project_id: str, annotation_id: int, status: str, seq: int) -> None:
        conn.execute(
            examples.update()
            .where(examples.c.project_id == project_id)
            .where(examples.c.annotation_id == annotation_id)
            .where(examples.c.status != "deleted")
            .values(status=status, seq=seq, stored_at=time.time())
        )

    def changed_since(self, project_id: str, seq: int) -> list[StoredExample]:
        """Rows written after `seq` (any status), for incremental index refresh."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(examples)
                .where(examples.c.project_id == project_id)
                .where(examples.c.seq > seq)
                .order_by(examples.c.seq, examples.c.annotation_id)
            )
            return [_row_to_example(r) for r in rows]

    def page(self, project_id: str, offset: int, limit: int, status: str = "live") -> tuple[int, list[StoredExample]]:
        with self.engine.connect() as conn:
            where = and_(examples.c.project_id == project_id, examples.c.status == status)
            total = int(conn.execute(select(func.count()).select_from(examples).where(where)).scalar_one())
            rows = conn.execute(
                select(examples).where(where).order_by(examples.c.annotation_id).offset(offset).limit(limit)
            )
            return total, [_row_to_example(r) for r in rows]

    def counts(self, project_id: str) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(examples.c.status, func.count())
                .where(examples.c.project_id == project_id)
                .group_by(examples.c.status)
            )
            return {str(status): int(n) for status, n in rows}

    def all_counts(self) -> list[tuple[str, str, int]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(examples.c.project_id, examples.c.status, func.count())
                .group_by(examples.c.project_id, examples.c.status)
                .order_by(examples.c.project_id, examples.c.status)
            )
            return [(str(p), str(s), int(n)) for p, s, n in rows]
