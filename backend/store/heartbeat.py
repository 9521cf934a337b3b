"""A heartbeat from a thread: while work is queued or running, call `beat` every few seconds.

Jobs and push claims in the store are taken for a dead process's when their `updated_at` is older than
a stale limit. Beating from the work's own loop leaves them silent through any wait that settles
nothing (a student training, a run queued behind another, one slow answer), and a second worker then
runs the same work. A thread beats for as long as the process lives and the work has not ended.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)


def beat_interval(stale_seconds: float) -> float:
    """How often to beat a row that goes stale after `stale_seconds`: a fifth of it (four beats may be
    lost to a slow store before it looks dead), at most 30 s."""
    return min(30.0, stale_seconds / 5)


class Heartbeat:
    """Calls `beat` every `every` seconds from a daemon thread between start() and stop() (or around a
    `with` block); a store outage is logged once and the next beat tried, the work going on meanwhile."""

    def __init__(self, beat: Callable[[], None], every: float, name: str) -> None:
        self._beat = beat
        self._every = every
        self._name = name
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"{name} heartbeat")

    def start(self) -> Heartbeat:
        """Idempotent (a run entering the heartbeat its submit started)."""
        if self._thread.ident is None:
            self._thread.start()
        return self

    def stop(self) -> None:
        """Idempotent; returns once no beat is in flight."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        told = False
        while not self._done.wait(self._every):
            try:
                self._beat()
            except SQLAlchemyError:
                if not told:
                    log.error("%s: store unavailable for the heartbeat", self._name)
                    told = True

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
