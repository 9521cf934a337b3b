"""The store's schema (SQLAlchemy Core), engine creation and migrations.

SQLite (a file in DATA_DIR) by default; PostgreSQL via DATABASE_URL for several replicas. Migrations
are ordered functions recorded in `meta.schema_version`, so a new version can open an old store.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

log = logging.getLogger(__name__)

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

projects = Table(
    "projects",
    metadata,
    Column("project_id", String(64), primary_key=True),
    Column("label_config", Text, nullable=True),
    Column("extra_params", Text, nullable=True),
    Column("hostname", String(512), nullable=True),
    Column("access_token", Text, nullable=True),  # encrypted (backend.store.secrets); Text since migration 6
    Column("updated_at", Float, nullable=False),
    # added by migration 2
    Column("examples_version", Integer, nullable=False, server_default="0"),
    Column("changes_since_version", Integer, nullable=False, server_default="0"),
    Column("generation", BigInteger, nullable=False, server_default="0"),
    # added by migration 6: "installed" once Label Studio's webhook carries the project's secret header
    Column("webhook_auth", String(16), nullable=True),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("lease_until", Float, nullable=True),
    Column("lease_owner", String(32), nullable=True),
    Column("applied_at", Float, nullable=True),
    Column("outcome", String(32), nullable=True),
    Column("error", Text, nullable=True),
    Index("ix_events_pending", "applied_at", "id"),
)

examples = Table(
    "examples",
    metadata,
    Column("project_id", String(64), primary_key=True),
    Column("annotation_id", BigInteger, primary_key=True, autoincrement=False),
    Column("task_id", BigInteger, nullable=True),
    Column("data", Text, nullable=True),  # JSON: the task data fields the config reads
    Column("result", Text, nullable=True),  # JSON: the reviewed Label Studio result
    Column("labels", Text, nullable=True),  # JSON list of label values in the result
    Column("corrected", Integer, nullable=True),  # 1 changed the prediction, 0 accepted, NULL no prediction
    Column("completed_by", String(128), nullable=True),
    Column("updated_at", Float, nullable=False),  # Label Studio's annotation.updated_at
    Column("status", String(16), nullable=False),  # live, skipped, deleted, set_aside
    Column("seq", BigInteger, nullable=False),  # projects.generation when last written
    Column("stored_at", Float, nullable=False),
    Index("ix_examples_seq", "project_id", "seq"),
    Index("ix_examples_task", "project_id", "task_id"),
)

push_jobs = Table(
    "push_jobs",
    metadata,
    Column("project_id", String(64), primary_key=True),
    Column("task_id", BigInteger, primary_key=True, autoincrement=False),
    Column("model_version", String(200), primary_key=True),
    Column("status", String(16), nullable=False),  # queued, pushed
    Column("updated_at", Float, nullable=False),
)

llm_cache = Table(
    "llm_cache",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("answer", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_llm_cache_created", "created_at"),
)

example_embeddings = Table(
    "example_embeddings",
    metadata,
    Column("project_id", String(64), primary_key=True),
    Column("annotation_id", BigInteger, primary_key=True, autoincrement=False),
    Column("model", String(200), primary_key=True),
    Column("text_hash", String(64), nullable=False),  # of the embedded text: a changed text is re-embedded
    Column("vector", LargeBinary, nullable=False),  # float32 little-endian, unit length
    Column("created_at", Float, nullable=False),
)

review_outcomes = Table(
    "review_outcomes",
    metadata,
    Column("project_id", String(64), primary_key=True),
    Column("annotation_id", BigInteger, primary_key=True, autoincrement=False),
    Column("task_id", BigInteger, nullable=True),
    Column("model_version", String(200), nullable=False),  # of the prediction the review started from
    Column("prediction_id", BigInteger, nullable=True),
    Column("score", Float, nullable=True),  # the prediction's score
    Column("accepted", Integer, nullable=False),  # 1: the reviewer kept the prediction unchanged
    Column("is_right", Integer, nullable=False),  # 1: every scored control equals the review
    Column("predicted", Text, nullable=False),  # JSON: per control, what the model said
    Column("reviewed", Text, nullable=False),  # JSON: per control, what the reviewer kept
    Column("examples_before", Integer, nullable=False),  # live examples of the project at the first delivery
    Column("updated_at", Float, nullable=False),  # Label Studio's annotation.updated_at
    Column("recorded_at", Float, nullable=False),
    Index("ix_review_outcomes_version", "project_id", "model_version"),
)

students = Table(
    "students",
    metadata,
    Column("project_id", String(64), primary_key=True),
    Column("control", String(200), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),  # the project's examples_version
    Column("status", String(16), nullable=False),  # training (claimed), ready, empty (too few), failed
    Column("owner", String(32), nullable=True),  # the process that claimed the training
    Column("claimed_at", Float, nullable=False),
    Column("embedder", String(200), nullable=True),
    Column("classes", Text, nullable=True),  # JSON list of label values, the columns of coef
    Column("coef", LargeBinary, nullable=True),  # float32 little-endian, dims x classes
    Column("intercept", LargeBinary, nullable=True),  # float32 little-endian, classes
    Column("dims", Integer, nullable=True),
    Column("calibration", Text, nullable=True),  # JSON {"top": curve, "any": curve, "threshold": t}
    Column("n_examples", Integer, nullable=True),
    Column("stats", Text, nullable=True),  # JSON: cross-validated accuracy, seconds, folds
    Column("created_at", Float, nullable=True),
    Column("features", Text, nullable=True),  # JSON: the text features' vocabulary and idf (None: vectors only)
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # retrieve (a pushed "Retrieve predictions") | refresh
    Column("model_version", String(200), nullable=False),
    Column("status", String(16), nullable=False),  # queued, running, done, failed, cancelled, interrupted...
    Column("total", Integer, nullable=False),
    Column("running", Integer, nullable=False),
    Column("done", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("skipped", Integer, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("llm_calls", Integer, nullable=False),
    Column("cancel_requested", Integer, nullable=False),
    Column("owner", String(64), nullable=True),  # the process running it
    Column("claim_key", String(300), nullable=True, unique=True),  # one refresh per project and version
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),  # the heartbeat of the process running it
    Column("finished_at", Float, nullable=True),
    Column("detail", Text, nullable=True),
    Index("ix_jobs_project", "project_id", "id"),
)

review_tabs = Table(
    "review_tabs",
    metadata,
    Column("project_id", String(64), primary_key=True),
    Column("view_id", BigInteger, nullable=True),  # Label Studio's Data Manager view; NULL while being created
    Column("claimed_at", Float, nullable=False),
)

SCHEMA_VERSION = 10


def _insert_ignoring(conn: Connection, table: Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING in the connection's dialect (SQLite or PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    return insert(table).on_conflict_do_nothing()


def insert_ignore(conn: Connection, table: Table, values: dict[str, Any]) -> int:
    """Insert one row unless its key exists; returns rows inserted (0 or 1)."""
    return conn.execute(_insert_ignoring(conn, table).values(**values)).rowcount


def insert_ignore_many(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """insert_ignore for many rows in one executemany."""
    if rows:
        conn.execute(_insert_ignoring(conn, table), rows)


def make_engine(url: str) -> Engine:
    """An engine for the store; SQLite gets WAL and a busy timeout so several processes can share it."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            # SQLAlchemy emits BEGIN itself (below), so pysqlite must not (its legacy mode defers it
            # and breaks SAVEPOINTs)
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Writers take the write lock up front (BEGIN IMMEDIATE): a deferred transaction that reads
            # and then writes can fail or wait out sqlite's backoff when another process wrote meanwhile.
            immediate = conn.get_execution_options().get("sqlite_immediate", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_timeout=5)


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A write transaction: `with write(engine) as conn:`.

    On SQLite, writers of one process queue on a lock before they take the database's write lock
    (BEGIN IMMEDIATE): sqlite's own busy wait is a backoff without order, which under load let some
    /webhook calls wait a second while others overtook them (measured)."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    lock = engine.__dict__.get("_lsllm_write_lock")
    if lock is None:
        lock = engine.__dict__.setdefault("_lsllm_write_lock", _SQLiteWriteLock(engine.url.database))
    with lock, engine.execution_options(sqlite_immediate=True).begin() as conn:
        yield conn


class _SQLiteWriteLock:
    """One writer at a time across threads (a lock) and across processes (flock on `<db>.write-lock`).

    Waiters on flock sleep in the kernel and wake the moment the holder releases; sqlite's own busy
    handler polls with sleeps growing to 100 ms, which put 100-300 ms tails into /webhook when two
    gunicorn workers and their event workers wrote at once (measured). A process killed while holding
    it releases it with its file descriptors."""

    def __init__(self, database: str | None) -> None:
        self._thread_lock = threading.Lock()
        self._path = f"{database}.write-lock" if database and database != ":memory:" else None
        self._fd: int | None = None

    def __enter__(self) -> _SQLiteWriteLock:
        self._thread_lock.acquire()
        if self._path is not None:
            try:
                if self._fd is None:
                    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except OSError:
                pass  # an unlockable directory: sqlite's busy timeout still keeps writes correct
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


def _add_missing_columns(conn: Connection, table: Table) -> None:
    present = {c["name"] for c in inspect(conn).get_columns(table.name)}
    for column in table.columns:
        if column.name in present:
            continue
        ddl = column.type.compile(dialect=conn.dialect)
        server_default: Any = column.server_default  # a DefaultClause here; typed as its base class
        default = f" DEFAULT {server_default.arg}" if server_default is not None else ""
        null = "" if column.nullable else " NOT NULL"
        conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {ddl}{default}{null}"))


def _migration_1(conn: Connection) -> None:
    """Baseline: the tables exist (create_all made them)."""


def _migration_2(conn: Connection) -> None:
    """Version-0.1 stores had `projects` without the example-set version columns."""
    _add_missing_columns(conn, projects)


def _migration_3(conn: Connection) -> None:
    """push_jobs (pushed delivery of large /predict batches): a new table, made by create_all."""


def _migration_4(conn: Connection) -> None:
    """llm_cache (the response cache): a new table, made by create_all."""


def _migration_5(conn: Connection) -> None:
    """example_embeddings (EMBEDDINGS_MODEL vectors of examples): a new table, made by create_all."""


def _migration_6(conn: Connection) -> None:
    """projects.webhook_auth (authenticated webhooks); access_token becomes Text, as an encrypted token is
    longer than the 512 characters a clear one fitted in (SQLite does not enforce lengths). The tokens
    themselves are encrypted by ProjectStore.encrypt_clear_tokens at start, where the key is known."""
    _add_missing_columns(conn, projects)
    if conn.dialect.name == "postgresql":
        conn.execute(text("ALTER TABLE projects ALTER COLUMN access_token TYPE TEXT"))


def _migration_7(conn: Connection) -> None:
    """review_outcomes (live agreement of reviews with predictions): a new table, made by create_all."""


def _migration_8(conn: Connection) -> None:
    """students (a classifier per <Choices> control, shared by all workers): a new table, made by create_all."""


def _migration_9(conn: Connection) -> None:
    """jobs (pushed retrieves and refreshes with per-task counts) and review_tabs (the Data Manager tab
    each project got): new tables, made by create_all."""


def _migration_10(conn: Connection) -> None:
    """students.features (the words a student reads beside the vector)."""
    _add_missing_columns(conn, students)


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _migration_1),
    (2, _migration_2),
    (3, _migration_3),
    (4, _migration_4),
    (5, _migration_5),
    (6, _migration_6),
    (7, _migration_7),
    (8, _migration_8),
    (9, _migration_9),
    (10, _migration_10),
]


def schema_version(conn: Connection) -> int:
    row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
    return int(row[0]) if row else 0


def migrate(engine: Engine) -> int:
    """Bring any older store up to SCHEMA_VERSION; safe when several processes start at once."""
    for attempt in range(5):
        try:
            # create_all inside the write transaction: as a deferred transaction of its own it read the
            # schema, then asked for the write lock, and two workers starting on a new SQLite file
            # deadlocked there ("database is locked" at once, no busy wait; a worker failed to boot)
            with write(engine) as conn:
                metadata.create_all(conn)
                current = schema_version(conn)
                for version, step in MIGRATIONS:
                    if version > current:
                        step(conn)
                        current = version
                stored = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
                if stored is None:
                    conn.execute(meta.insert().values(key="schema_version", value=str(current)))
                else:
                    conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(current)))
            return current
        except (IntegrityError, OperationalError, ProgrammingError) as exc:
            # another process migrated at the same moment (duplicate column/row): look again
            if attempt == 4:
                raise
            log.info("migration race, retrying: %s", type(exc).__name__)
    return SCHEMA_VERSION
