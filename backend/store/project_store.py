"""Per-project settings that /setup receives and /predict needs, shared by all workers and replicas.

Label Studio calls /setup (with extra_params, hostname and access token) before /predict, but under
several gunicorn workers the two can land in different processes, so the values live in the database.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from backend.store.db import insert_ignore, projects, write
from backend.store.project_id import normalise_project_id


@dataclass(frozen=True)
class ProjectInfo:
    project_id: str
    label_config: str | None
    extra_params: dict[str, Any]
    hostname: str | None
    access_token: str | None


class ProjectStore:
    """Project settings and example-set versions, with short per-process caches (a project's info for 5 s,
    its examples_version for 1 s) so /setup and /predict do not read the database on every call.
    `clock` is injectable so tests advance time instead of sleeping."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.clock = clock
        self._cache: dict[str, tuple[float, ProjectInfo]] = {}
        self._lock = threading.Lock()
        self._versions: dict[str, tuple[float, int]] = {}

    def save(
        self,
        project: Any,
        label_config: str | None,
        extra_params: dict[str, Any] | None,
        hostname: str | None,
        access_token: str | None,
    ) -> ProjectInfo:
        project_id = normalise_project_id(project)
        info = ProjectInfo(project_id, label_config, dict(extra_params or {}), hostname, access_token)
        with self._lock:
            cached = self._cache.get(project_id)
            if cached and cached[1] == info and self.clock() - cached[0] < 5:
                return info  # /setup is called before every /predict: skip identical writes
        row = {
            "label_config": label_config,
            "extra_params": json.dumps(info.extra_params),
            "hostname": hostname,
            "access_token": access_token,
            "updated_at": time.time(),
        }
        with write(self.engine) as conn:
            upsert_project(conn, project_id, row)
        with self._lock:
            self._cache[project_id] = (self.clock(), info)
        return info

    def examples_version(self, project_id: str) -> int:
        """The project's example-set version, read at most once a second per process."""
        now = self.clock()
        with self._lock:
            cached = self._versions.get(project_id)
            if cached and now - cached[0] < 1.0:
                return cached[1]
        with self.engine.connect() as conn:
            version, _ = examples_state(conn, project_id)
        with self._lock:
            self._versions[project_id] = (now, version)
        return version

    def get(self, project: Any) -> ProjectInfo | None:
        project_id = normalise_project_id(project)
        with self._lock:
            cached = self._cache.get(project_id)
            if cached and self.clock() - cached[0] < 5:
                return cached[1]
        with self.engine.connect() as conn:
            row = conn.execute(select(projects).where(projects.c.project_id == project_id)).mappings().first()
        if row is None:
            return None
        info = ProjectInfo(
            project_id,
            row["label_config"],
            json.loads(row["extra_params"] or "{}"),
            row["hostname"],
            row["access_token"],
        )
        with self._lock:
            self._cache[project_id] = (self.clock(), info)
        return info


def upsert_project(conn: Connection, project_id: str, values: dict[str, Any]) -> None:
    """Update the project's row, creating a bare one first if needed (race-safe across processes)."""
    insert_ignore(conn, projects, {"project_id": project_id, "updated_at": time.time()})
    conn.execute(projects.update().where(projects.c.project_id == project_id).values(**values))


def next_generation(conn: Connection, project_id: str) -> int:
    """Increment and return the project's change counter (orders example writes for index refresh)."""
    upsert_project(conn, project_id, {"generation": projects.c.generation + 1})
    return int(conn.execute(select(projects.c.generation).where(projects.c.project_id == project_id)).scalar_one())


def examples_state(conn: Connection, project_id: str) -> tuple[int, int]:
    """(examples_version, generation) of a project; (0, 0) when unknown."""
    row = conn.execute(
        select(projects.c.examples_version, projects.c.generation).where(projects.c.project_id == project_id)
    ).first()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def count_changes(conn: Connection, project_id: str, changes: int, policy: str, every: int, force: bool) -> int:
    """Record `changes` example changes and bump the example-set version when the policy says so.

    policy: "every" (each change), "count" (every `every` changes), "training" (only on force).
    Returns the current examples_version."""
    where = projects.c.project_id == project_id
    upsert_project(conn, project_id, {"changes_since_version": projects.c.changes_since_version + changes})
    pending = int(conn.execute(select(projects.c.changes_since_version).where(where)).scalar_one())
    bump = force or (pending > 0 and (policy == "every" or (policy == "count" and pending >= every)))
    if bump:
        conn.execute(
            projects.update().where(where).values(
                examples_version=projects.c.examples_version + 1, changes_since_version=0
            )
        )
    return int(conn.execute(select(projects.c.examples_version).where(where)).scalar_one())
