"""How many provider calls may be in flight at once, learned from the provider's answers.

The limit starts at the configured maximum. A 429 tells us the provider had too many of our calls:
the limit drops to one below the number in flight when the refusal came back (so a burst of 429s from
one over-full wave settles just under the provider's cap instead of collapsing to 1), and a
Retry-After longer than a second also holds back new calls until it has passed. Every `limit`
successes in a row raise it by one again, never above the maximum (additive increase, so a cap that
was lifted is found again within a few round trips).

Urgent callers (an annotator waiting on `/predict`) go first: while one waits, a freed slot is theirs
and no bulk caller (a pushed retrieve, a prelabel run) takes a slot, so a 400-task push in flight delays
an interactive call by at most one provider round trip instead of the whole queue.
"""

from __future__ import annotations

import threading
import time


class AdaptiveLimiter:
    def __init__(self, maximum: int, minimum: int = 1) -> None:
        if maximum < 1 or minimum < 1 or minimum > maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        self.maximum = maximum
        self.minimum = minimum
        self.limit = maximum
        self.in_flight = 0
        self.throttles = 0
        self._successes = 0
        self._paused_until = 0.0
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # bulk waiters
        self._urgent = threading.Condition(lock)  # urgent waiters, woken first
        self._urgent_waiting = 0

    def acquire(self, timeout: float | None = None, urgent: bool = False) -> bool:
        """Wait for a free slot; False when `timeout` seconds passed first. An urgent caller is served
        before every bulk caller that is waiting."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cond = self._urgent if urgent else self._cond
        with cond:
            if urgent:
                self._urgent_waiting += 1
            try:
                while True:
                    now = time.monotonic()
                    wait_for = self._paused_until - now
                    my_turn = urgent or self._urgent_waiting == 0
                    if wait_for <= 0 and self.in_flight < self.limit and my_turn:
                        self.in_flight += 1
                        return True
                    if deadline is not None:
                        if now >= deadline:
                            return False
                        wait_for = min(wait_for if wait_for > 0 else deadline - now, deadline - now)
                    cond.wait(wait_for if wait_for > 0 else None)
            finally:
                if urgent:
                    self._urgent_waiting -= 1
                self._wake()  # a wake-up this thread took (or left unused) must not be lost to the others

    def succeeded(self) -> None:
        with self._cond:
            self.in_flight -= 1
            self._successes += 1
            if self._successes >= self.limit and self.limit < self.maximum:
                self.limit += 1
                self._successes = 0
            self._wake()

    def throttled(self, retry_after: float | None = None) -> None:
        """The provider refused this call with 429 (the slot is released)."""
        with self._cond:
            self.throttles += 1
            self.limit = max(self.minimum, min(self.limit, self.in_flight - 1))
            self.in_flight -= 1
            self._successes = 0
            if retry_after is not None and retry_after > 1.0:
                self._paused_until = max(self._paused_until, time.monotonic() + retry_after)
            self._wake()

    def failed(self) -> None:
        """Any other outcome: the slot is released, the limit is left alone."""
        with self._cond:
            self.in_flight -= 1
            self._wake()

    def _wake(self) -> None:
        """Wake as many waiters as there are free slots, urgent ones first (not all of them: with 32
        threads waiting for 16 slots, waking all on every release cost measurable CPU)."""
        free = self.limit - self.in_flight
        if free <= 0:
            return
        if self._urgent_waiting:
            self._urgent.notify(min(free, self._urgent_waiting))
            free -= self._urgent_waiting
        if free > 0 and not self._urgent_waiting:
            self._cond.notify(free)
