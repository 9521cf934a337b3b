"""A heartbeat from a thread: while a block of work runs, call `beat` every few seconds.

Jobs and push claims in the store are taken for a dead process's when their `updated_at` is older than
a stale limit. Beating from the work's own loop leaves them silent through any wait that settles
nothing (a student training, a queue ahead of them, one slow answer), and a second worker then runs the
same work. A thread beats for as long as the process lives and the block has not ended.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)


@contextmanager
def beating(beat: Callable[[], None], every: float, name: str) -> Iterator[None]:
    """Run the block while a daemon thread calls `beat` every `every` seconds; a store outage is
    logged once and the next beat tried (the work goes on meanwhile)."""
    done = threading.Event()

    def loop() -> None:
        told = False
        while not done.wait(every):
            try:
                beat()
            except SQLAlchemyError:
                if not told:
                    log.error("%s: store unavailable for the heartbeat", name)
                    told = True

    thread = threading.Thread(target=loop, daemon=True, name=f"{name} heartbeat")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
