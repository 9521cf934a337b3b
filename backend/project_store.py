"""Per-project settings that /setup receives and /predict needs, shared by all workers and replicas.

Label Studio calls /setup (with extra_params, hostname and access token) before /predict, but under
several gunicorn workers the two can land in different processes, so the values live in the database.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Float, MetaData, String, Table, Text, create_engine, event, select
from sqlalchemy.engine import Engine

from backend.project_id import normalise_project_id

metadata = MetaData()

projects = Table(
    "projects",
    metadata,
    Column("project_id", String(64), primary_key=True),
    Column("label_config", Text, nullable=True),
    Column("extra_params", Text, nullable=True),
    Column("hostname", String(512), nullable=True),
    Column("access_token", String(512), nullable=True),
    Column("updated_at", Float, nullable=False),
)


@dataclass(frozen=True)
class ProjectInfo:
    project_id: str
    label_config: str | None
    extra_params: dict[str, Any]
    hostname: str | None
    access_token: str | None


def make_engine(url: str) -> Engine:
    """An engine for the store; SQLite gets WAL and a busy timeout so several processes can share it."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


class ProjectStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cache: dict[str, tuple[float, ProjectInfo]] = {}
        self._lock = threading.Lock()
        metadata.create_all(engine)

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
            if cached and cached[1] == info and time.monotonic() - cached[0] < 5:
                return info  # /setup is called before every /predict: skip identical writes
        row = {
            "label_config": label_config,
            "extra_params": json.dumps(info.extra_params),
            "hostname": hostname,
            "access_token": access_token,
            "updated_at": time.time(),
        }
        with self.engine.begin() as conn:
            updated = conn.execute(
                projects.update().where(projects.c.project_id == project_id).values(**row)
            ).rowcount
            if not updated:
                try:
                    conn.execute(projects.insert().values(project_id=project_id, **row))
                except Exception:  # another worker inserted it first
                    conn.execute(projects.update().where(projects.c.project_id == project_id).values(**row))
        with self._lock:
            self._cache[project_id] = (time.monotonic(), info)
        return info

    def get(self, project: Any) -> ProjectInfo | None:
        project_id = normalise_project_id(project)
        with self._lock:
            cached = self._cache.get(project_id)
            if cached and time.monotonic() - cached[0] < 5:
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
            self._cache[project_id] = (time.monotonic(), info)
        return info
