"""Trained students in the store, keyed by project, control and example-set version, so that every
gunicorn worker and every replica uses the same one and only one process trains each version.

A training starts with a claim: inserting the (project, control, version) row in status `training`.
The process whose insert lands trains, beating the claim (`beat`) until it is done; the others see the
row and wait for `ready`. A claim silent for `stale_seconds` (a killed trainer) can be taken over by one
process (a conditional update). Weights are float32 little-endian bytes and everything else JSON: no
pickle, readable by any process or machine.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import and_, select
from sqlalchemy.engine import Engine

from backend.store.db import insert_ignore, students, write


@dataclass(frozen=True)
class StudentRecord:
    """A trained student as the store keeps it: arrays and JSON-able values, no behaviour (the
    learning room turns it into its model, so the store need not know what a student computes)."""

    classes: tuple[str, ...]
    coef: np.ndarray  # (dims, classes)
    intercept: np.ndarray  # (classes,)
    calibration: dict[str, Any]  # JSON: the calibration curves and the cascade threshold
    n_examples: int
    version: int
    embedder: str
    stats: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] | None = None  # JSON: the text features' vocabulary and weights (None: vectors only)


@dataclass(frozen=True)
class StudentState:
    """What the store says about one version of a control's student."""

    version: int
    status: str  # training, ready, empty, failed
    claimed_at: float


class StudentStore:
    def __init__(self, engine: Engine, stale_seconds: float = 600.0) -> None:
        self.engine = engine
        self.stale_seconds = stale_seconds
        self.owner = uuid.uuid4().hex  # this process's claims

    def claim(self, project_id: str, control: str, version: int) -> bool:
        """True when this process is the one to train this version (a new claim, or a stale one taken over)."""
        now = time.time()
        t = students.c
        key = and_(t.project_id == project_id, t.control == control, t.version == version)
        with write(self.engine) as conn:
            if insert_ignore(conn, students, {"project_id": project_id, "control": control, "version": version,
                                              "status": "training", "owner": self.owner, "claimed_at": now}):
                return True
            taken = conn.execute(
                students.update()
                .where(key)
                .where(t.status == "training")
                .where(t.claimed_at < now - self.stale_seconds)
                .values(owner=self.owner, claimed_at=now)
            ).rowcount
            return bool(taken)

    def beat(self, project_id: str, control: str, version: int) -> None:
        """Keep this process's claim fresh while it trains (the referee asks the LLM for minutes on a
        small model): only a killed trainer's claim goes stale."""
        t = students.c
        with write(self.engine) as conn:
            conn.execute(students.update()
                         .where(and_(t.project_id == project_id, t.control == control, t.version == version,
                                     t.owner == self.owner, t.status == "training"))
                         .values(claimed_at=time.time()))

    def finish(self, project_id: str, control: str, version: int, model: StudentRecord | None,
               status: str | None = None) -> None:
        """Record the outcome of this process's claim: the model (ready), or none (`empty`/`failed`)."""
        t = students.c
        key = and_(t.project_id == project_id, t.control == control, t.version == version, t.owner == self.owner)
        values: dict[str, object] = {"status": status or ("ready" if model is not None else "empty"),
                                     "created_at": time.time()}
        if model is not None:
            values.update(
                embedder=model.embedder,
                classes=json.dumps(list(model.classes), ensure_ascii=False),
                coef=np.asarray(model.coef, dtype="<f4").tobytes(),
                intercept=np.asarray(model.intercept, dtype="<f4").tobytes(),
                dims=int(np.shape(model.coef)[0]),
                calibration=json.dumps(model.calibration),
                n_examples=model.n_examples,
                stats=json.dumps(model.stats),
                features=json.dumps(model.features, ensure_ascii=False) if model.features is not None else None,
            )
        with write(self.engine) as conn:
            conn.execute(students.update().where(key).values(**values))
            if model is not None:
                self._prune(conn, project_id, control, version)

    def _prune(self, conn: Any, project_id: str, control: str, version: int, keep: int = 2) -> None:
        """Drop the weights of ready students older than the `keep` newest: a student with words weighs
        megabytes, and a project retrains after every burst of reviews. The rows stay (status
        `replaced`), so a version is never claimed and trained again."""
        t = students.c
        mine = and_(t.project_id == project_id, t.control == control, t.status == "ready")
        kept = [r.version for r in conn.execute(
            select(t.version).where(mine).where(t.version <= version).order_by(t.version.desc()).limit(keep))]
        if len(kept) == keep:
            conn.execute(students.update().where(mine).where(t.version < kept[-1])
                         .values(status="replaced", coef=None, intercept=None, features=None))

    def state(self, project_id: str, control: str, version: int) -> StudentState | None:
        t = students.c
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t.version, t.status, t.claimed_at).where(
                    and_(t.project_id == project_id, t.control == control, t.version == version)
                )
            ).first()
        return StudentState(int(row.version), str(row.status), float(row.claimed_at)) if row else None

    def newest_version(self, project_id: str, control: str, at_most: int) -> int | None:
        """The newest version at most `at_most` whose student is ready (None: none yet)."""
        t = students.c
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t.version)
                .where(and_(t.project_id == project_id, t.control == control, t.status == "ready",
                            t.version <= at_most))
                .order_by(t.version.desc())
                .limit(1)
            ).first()
        return int(row.version) if row else None

    def calibration(self, project_id: str, control: str, version: int) -> dict[str, Any] | None:
        """The calibration JSON of a ready student, without its weights (megabytes with words)."""
        t = students.c
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t.calibration).where(
                    and_(t.project_id == project_id, t.control == control, t.version == version, t.status == "ready")
                )
            ).first()
        found = json.loads(row.calibration) if row is not None and row.calibration else None
        return found if isinstance(found, dict) else None

    def load(self, project_id: str, control: str, version: int) -> StudentRecord | None:
        """The ready student of that version; None when there is none. Raises ValueError for a row
        whose arrays do not fit together (a damaged row: better no student than a wrong one)."""
        t = students.c
        with self.engine.connect() as conn:
            row = conn.execute(
                select(students).where(
                    and_(t.project_id == project_id, t.control == control, t.version == version, t.status == "ready")
                )
            ).mappings().first()
        if row is None:
            return None
        classes = tuple(str(c) for c in json.loads(row["classes"]))
        dims = int(row["dims"])
        coef = np.frombuffer(row["coef"], dtype="<f4").astype(np.float32)
        intercept = np.frombuffer(row["intercept"], dtype="<f4").astype(np.float32)
        if coef.size != dims * len(classes) or intercept.size != len(classes):
            raise ValueError(f"student {project_id}/{control}/v{version}: arrays do not match its classes")
        calibration = json.loads(row["calibration"])
        if not isinstance(calibration, dict):
            raise ValueError(f"student {project_id}/{control}/v{version}: calibration is not an object")
        return StudentRecord(
            classes=classes,
            coef=coef.reshape(dims, len(classes)),
            intercept=intercept,
            calibration=calibration,
            n_examples=int(row["n_examples"]),
            version=int(row["version"]),
            embedder=str(row["embedder"] or ""),
            stats=json.loads(row["stats"] or "{}"),
            features=json.loads(row["features"]) if row["features"] else None,
        )
