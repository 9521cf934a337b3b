"""Several gunicorn workers start at once on a new SQLite store and all migrate it: none may fail.
(Seen: a worker failed to boot with "database is locked" on CREATE TABLE when create_all ran as a
deferred transaction of its own.)"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from sqlalchemy import inspect

from backend.store.db import SCHEMA_VERSION, make_engine, migrate


def _migrate_at(url: str, start_at: float, out: multiprocessing.Queue[str]) -> None:
    engine = make_engine(url)
    time.sleep(max(0.0, start_at - time.time()))  # every process starts within the same millisecond
    try:
        out.put(f"ok {migrate(engine)}")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out.put(f"error {type(exc).__name__}: {exc}"[:300])


def test_many_processes_migrating_a_new_sqlite_store_at_once_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'store{round_}.db'}"
        out: multiprocessing.Queue[str] = ctx.Queue()
        start_at = time.time() + 1.0
        procs = [ctx.Process(target=_migrate_at, args=(url, start_at, out)) for _ in range(6)]
        for p in procs:
            p.start()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(10)
        assert results == [f"ok {SCHEMA_VERSION}"] * len(procs), results
        assert "meta" in inspect(make_engine(url)).get_table_names()
