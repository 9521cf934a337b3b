"""Response cache in the store: identical work is never paid twice.

The key is a hash of everything that shapes the answer: the model, the full rendered messages (so any
change to the prompt template, instructions or selected examples misses naturally), the JSON schema,
the structured-output mode and the sampling parameters. Bounded in size: past `max_entries` the
oldest entries are dropped.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from typing import Any, Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine

from backend.db import insert_ignore, llm_cache, write
from converters.confidence import Token


def cache_key(
    model: str, messages: Sequence[dict[str, str]], schema: dict[str, Any], mode: str, params: dict[str, Any]
) -> str:
    blob = json.dumps(
        {"model": model, "messages": list(messages), "schema": schema, "mode": mode, "params": params},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, engine: Engine, max_entries: int = 100_000) -> None:
        self.engine = engine
        self.max_entries = max_entries
        self._writes = 0

    def get(self, key: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(llm_cache.c.answer).where(llm_cache.c.key == key)).first()
        if row is None:
            return None
        answer = json.loads(row[0])
        if answer.get("tokens") is not None:
            answer["tokens"] = [Token(t["text"], t["logprob"], tuple(map(tuple, t["alternatives"])))
                                for t in answer["tokens"]]
        return answer

    def put(self, key: str, content: str, tokens: list[Token] | None, prompt_tokens: int, completion_tokens: int) -> None:
        answer = {
            "content": content,
            "tokens": [asdict(t) for t in tokens] if tokens is not None else None,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
        }
        with write(self.engine) as conn:
            insert_ignore(conn, llm_cache, {"key": key, "answer": json.dumps(answer, ensure_ascii=False),
                                            "created_at": time.time()})
        self._writes += 1
        if self._writes % 500 == 0:
            self.trim()

    def trim(self) -> int:
        """Drop the oldest entries beyond max_entries; returns how many were dropped."""
        with write(self.engine) as conn:
            total = int(conn.execute(select(func.count()).select_from(llm_cache)).scalar_one())
            excess = total - self.max_entries
            if excess <= 0:
                return 0
            oldest = select(llm_cache.c.key).order_by(llm_cache.c.created_at).limit(excess)
            return int(conn.execute(delete(llm_cache).where(llm_cache.c.key.in_(oldest))).rowcount)
