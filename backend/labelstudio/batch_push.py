"""Deliver predictions to Label Studio in as few `import/predictions` calls as possible.

Label Studio's cost is per call, not per item (1,000 predictions store in under 2 s, measured), so a
thread takes whatever batches are ready when the previous push returns and sends them as one call of
up to `max_batch` items, while the next results gather. A failed push is retried with backoff; after
that the items are reported undelivered, never dropped silently.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Items = list[dict[str, Any]]


def prediction_item(task_id: int, prediction: dict[str, Any], model_version: str) -> dict[str, Any]:
    """One entry of an import/predictions call for a task's prediction."""
    return {"task": int(task_id), "result": prediction["result"], "score": prediction.get("score"),
            "model_version": model_version}


class BatchPusher:
    def __init__(
        self,
        send: Callable[[Items], None],
        on_done: Callable[[Items, bool], None],
        max_batch: int = 1000,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        """`send(items)` raises on failure; `on_done(items, delivered)` is called once per call made."""
        self.send = send
        self.on_done = on_done
        self.max_batch = max_batch
        self.retries = retries
        self.backoff = backoff
        self._ready: queue.Queue[Items | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="push-send", daemon=True)
        self._thread.start()

    def put(self, items: Items) -> None:
        if items:
            self._ready.put(list(items))

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued, then stop."""
        self._ready.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        finished = False
        while not finished:
            items = self._ready.get()
            if items is None:
                return
            while len(items) < self.max_batch:
                try:
                    more = self._ready.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    finished = True
                    break
                items.extend(more)
            for start in range(0, len(items), self.max_batch):
                chunk = items[start:start + self.max_batch]
                self.on_done(chunk, self._deliver(chunk))

    def _deliver(self, items: Items) -> bool:
        for attempt in range(self.retries + 1):
            try:
                self.send(items)
                return True
            except Exception as exc:  # noqa: BLE001 - any transport or API error: retry, then report
                log.warning("push to Label Studio failed (attempt %d): %s", attempt + 1, type(exc).__name__)
                if attempt < self.retries:
                    time.sleep(min(8.0, self.backoff * 2**attempt))
        return False
