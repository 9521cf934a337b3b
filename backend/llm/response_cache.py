"""Response cache in the store: identical work is never paid twice.

The key is a hash of everything that shapes the answer: the model, the full rendered messages (so any
change to the prompt template, instructions or selected examples misses naturally), the JSON schema,
the structured-output mode and the sampling parameters. Bounded in size: past `max_entries` the
oldest entries are dropped.

New answers are written behind, in batches: one transaction per call cost more CPU than the rest of a
task together (measured), so `put` keeps them in memory (where `get` sees them at once) and writes
them in one transaction when `batch` are waiting or `linger` seconds after the first one; `flush()`
writes what is left (the CLI calls it at the end of a run). A crash loses at most those few answers,
which only means paying for them again.

Reads skip the database on a certain miss: each process keeps the set of keys the store holds (as 64-bit
hashes, ~6 MB per 100,000 entries), read once and then topped up with the keys written since, at
most every `sync_seconds`. Only a key in that set (a likely hit) costs a query; a first run's misses
cost none. A key another process wrote less than `sync_seconds` ago can be missed, which costs one
extra call, never a wrong answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from backend.store.db import insert_ignore_many, llm_cache, write
from converters.confidence import Token

log = logging.getLogger(__name__)


def cache_key(
    model: str, messages: Sequence[dict[str, str]], schema: dict[str, Any], mode: str, params: dict[str, Any]
) -> str:
    blob = json.dumps(
        {"model": model, "messages": list(messages), "schema": schema, "mode": mode, "params": params},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _short(key: str) -> int:
    return hash(key)  # the set lives in one process, so the per-process hash seed is fine


class ResponseCache:
    def __init__(
        self, engine: Engine, max_entries: int = 100_000, batch: int = 64, linger: float = 0.5,
        sync_seconds: float = 0.5,
    ) -> None:
        self.engine = engine
        self.max_entries = max_entries
        self.batch = batch
        self.linger = linger
        self.sync_seconds = sync_seconds
        self._writes = 0
        self._pending: dict[str, str] = {}
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._known: set[int] | None = None  # read on first use
        self._synced_at = 0.0  # time.monotonic() of the last top-up
        self._seen_until = 0.0  # created_at up to which keys were read

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            text = self._pending.get(key)
        if text is None:
            if not self._maybe_stored(key):
                return None
            with self.engine.connect() as conn:
                row = conn.execute(select(llm_cache.c.answer).where(llm_cache.c.key == key)).first()
            if row is None:
                return None
            text = row[0]
        answer = json.loads(text)
        if answer.get("tokens") is not None:
            answer["tokens"] = [Token(t["text"], t["logprob"], tuple(map(tuple, t["alternatives"])))
                                for t in answer["tokens"]]
        return answer

    def _maybe_stored(self, key: str) -> bool:
        short = _short(key)
        if self._known is not None and short in self._known:
            return True
        if self._known is not None and time.monotonic() - self._synced_at < self.sync_seconds:
            return False
        self._sync()
        return short in (self._known or ())

    def _sync(self) -> None:
        """Read the keys written since the last top-up (all of them the first time)."""
        with self._lock:
            since = self._seen_until - 5.0  # other processes' clocks and in-flight commits
            self._synced_at = time.monotonic()
        query = select(llm_cache.c.key, llm_cache.c.created_at)
        if self._known is not None:
            query = query.where(llm_cache.c.created_at >= since)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        with self._lock:
            known = self._known if self._known is not None else set()
            known.update(_short(k) for k, _ in rows)
            self._seen_until = max([self._seen_until, *(c for _, c in rows)])
            self._known = known

    def put(
        self, key: str, content: str, tokens: list[Token] | None, prompt_tokens: int, completion_tokens: int
    ) -> None:
        answer = {
            "content": content,
            "tokens": [{"text": t.text, "logprob": t.logprob, "alternatives": t.alternatives} for t in tokens]
            if tokens is not None else None,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
        }
        with self._lock:
            self._pending[key] = json.dumps(answer, ensure_ascii=False)
            full = len(self._pending) >= self.batch
            if not full and self._timer is None:
                self._timer = threading.Timer(self.linger, self._flush_quietly)
                self._timer.daemon = True
                self._timer.start()
        if full:
            self.flush()

    def flush(self) -> int:
        """Write every pending answer in one transaction; returns how many. Raises SQLAlchemyError (the
        newest 16 batches' worth stay pending for the next try)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            pending = dict(self._pending)
        if not pending:
            return 0
        now = time.time()
        try:
            with write(self.engine) as conn:
                insert_ignore_many(conn, llm_cache,
                                   [{"key": k, "answer": t, "created_at": now} for k, t in pending.items()])
        except SQLAlchemyError:
            with self._lock:  # the store is down: keep the newest answers, never grow without bound
                for key in list(self._pending)[: max(0, len(self._pending) - self.batch * 16)]:
                    del self._pending[key]
            raise
        with self._lock:
            for key in pending:
                self._pending.pop(key, None)
                if self._known is not None:
                    self._known.add(_short(key))
        before, self._writes = self._writes, self._writes + len(pending)
        if before // 500 != self._writes // 500:
            self.trim()
        return len(pending)

    def _flush_quietly(self) -> None:
        with self._lock:
            self._timer = None
        try:
            self.flush()
        except SQLAlchemyError:
            log.warning("response cache unavailable: %d answers not written yet", len(self._pending))

    def trim(self) -> int:
        """Drop the oldest entries beyond max_entries; returns how many were dropped."""
        with write(self.engine) as conn:
            total = int(conn.execute(select(func.count()).select_from(llm_cache)).scalar_one())
            excess = total - self.max_entries
            if excess <= 0:
                return 0
            oldest = select(llm_cache.c.key).order_by(llm_cache.c.created_at).limit(excess)
            return int(conn.execute(delete(llm_cache).where(llm_cache.c.key.in_(oldest))).rowcount)
