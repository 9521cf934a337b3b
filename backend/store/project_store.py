"""Per-project settings that /setup receives and /predict needs, shared by all workers and replicas.

Label Studio calls /setup (with extra_params, hostname and access token) before /predict, but under
several gunicorn workers the two can land in different processes, so the values live in the database.

The access token is stored encrypted (backend.store.secrets) and belongs to the hostname it came with:
a /setup that names another hostname without a token of its own clears it, so a stored token is never
sent to a host it was not given for. A /setup without a token for the same hostname keeps it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from backend.store.db import insert_ignore, projects, write
from backend.store.project_id import normalise_project_id
from backend.store.secrets import Secrets, SecretsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProjectInfo:
    project_id: str
    label_config: str | None
    extra_params: dict[str, Any]
    hostname: str | None
    access_token: str | None = field(default=None, repr=False)  # clear text, in memory only
    webhook_auth: str | None = None  # "installed": Label Studio's webhook carries our secret header


class ProjectStore:
    """Project settings and example-set versions, with short per-process caches (a project's info for 5 s,
    its examples_version for 1 s) so /setup and /predict do not read the database on every call.
    `clock` is injectable so tests advance time instead of sleeping; `secrets` encrypts tokens (without
    one, a random key of this instance: tokens then do not survive it)."""

    def __init__(
        self, engine: Engine, clock: Callable[[], float] = time.monotonic, secrets: Secrets | None = None
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.secrets = secrets or Secrets(os.urandom(32))
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
        hostname = hostname or None
        access_token = access_token or None
        with self._lock:
            cached = self._cache.get(project_id)
        if cached and self.clock() - cached[0] < 5:
            info = self._merged(cached[1], label_config, extra_params, hostname, access_token)
            if info == cached[1]:
                return info  # /setup is called before every /predict: skip identical writes
        with write(self.engine) as conn:
            row = conn.execute(select(projects).where(projects.c.project_id == project_id)).mappings().first()
            current = self._info(row) if row is not None else None
            info = self._merged(current or ProjectInfo(project_id, None, {}, None, None), label_config,
                                extra_params, hostname, access_token)
            values: dict[str, Any] = {
                "label_config": label_config,
                "extra_params": json.dumps(info.extra_params),
                "hostname": info.hostname,
                "updated_at": time.time(),
            }
            stored_token = row["access_token"] if row is not None else None
            if info.access_token != (current.access_token if current else None) or (
                stored_token and not self.secrets.is_encrypted(stored_token)
            ):
                try:
                    values["access_token"] = self.secrets.encrypt(info.access_token)
                except SecretsError as exc:  # never clear text: without encryption, no token at all
                    log.error("project %s: the Label Studio token is not stored: %s", project_id, exc)
                    values["access_token"] = None
                    info = replace(info, access_token=None)
            if info.webhook_auth != (current.webhook_auth if current else None):
                values["webhook_auth"] = info.webhook_auth
            upsert_project(conn, project_id, values)
        if current is not None and current.access_token and not info.access_token:
            log.warning("project %s: /setup named another Label Studio host without a token; the stored "
                        "token is forgotten rather than sent there", project_id)
        with self._lock:
            self._cache[project_id] = (self.clock(), info)
        return info

    @staticmethod
    def _merged(
        current: ProjectInfo,
        label_config: str | None,
        extra_params: dict[str, Any] | None,
        hostname: str | None,
        access_token: str | None,
    ) -> ProjectInfo:
        """What a /setup makes of the stored row: a token belongs to the hostname it came with."""
        token: str | None
        host: str | None
        if access_token is not None:
            token, host = access_token, hostname
        elif hostname is None or hostname == current.hostname:
            token, host = current.access_token, current.hostname
        else:  # another host, no token of its own: never hand it the stored one
            token, host = None, hostname
        # webhook_auth stays whatever /setup says: a forged /setup must not switch the check off
        return ProjectInfo(current.project_id, label_config, dict(extra_params or {}), host, token,
                           current.webhook_auth)

    def mark_webhook_auth(self, project: Any, state: str | None) -> None:
        """Record that Label Studio's webhook for the project now carries the secret header (or not)."""
        project_id = normalise_project_id(project)
        with write(self.engine) as conn:
            upsert_project(conn, project_id, {"webhook_auth": state, "updated_at": time.time()})
        with self._lock:
            self._cache.pop(project_id, None)

    def encrypt_clear_tokens(self) -> int:
        """Encrypt the clear-text tokens an older store holds (at start); returns how many."""
        with write(self.engine) as conn:
            rows = conn.execute(
                select(projects.c.project_id, projects.c.access_token).where(projects.c.access_token.isnot(None))
            ).all()
            clear = [(pid, token) for pid, token in rows if token and not self.secrets.is_encrypted(token)]
            for project_id, token in clear:
                conn.execute(projects.update().where(projects.c.project_id == project_id)
                             .values(access_token=self.secrets.encrypt(token)))
        if clear:
            log.info("encrypted %d Label Studio tokens stored in clear text by an older version", len(clear))
        return len(clear)

    def _info(self, row: Any) -> ProjectInfo:
        try:
            token = self.secrets.decrypt(row["access_token"])
        except SecretsError as exc:
            log.warning("project %s: %s", row["project_id"], exc)
            token = None
        return ProjectInfo(
            row["project_id"],
            row["label_config"],
            json.loads(row["extra_params"] or "{}"),
            row["hostname"],
            token,
            row["webhook_auth"],
        )

    def examples_version(self, project_id: str, fresh: bool = False) -> int:
        """The project's example-set version, read at most once a second per process (`fresh`: read now,
        for work that must meet the newest version, like a refresh's students)."""
        now = self.clock()
        with self._lock:
            cached = self._versions.get(project_id)
            if cached and now - cached[0] < 1.0 and not fresh:
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
        info = self._info(row)
        if row["access_token"] and not self.secrets.is_encrypted(row["access_token"]):
            with write(self.engine) as conn:  # a clear-text row written by an older version
                conn.execute(projects.update().where(projects.c.project_id == project_id)
                             .values(access_token=self.secrets.encrypt(info.access_token)))
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
