"""How many provider calls may be in flight at once, learned from the provider's answers.

The limit starts at the configured maximum. A 429 tells us the provider had too many of our calls:
the limit drops to one below the number in flight when the refusal came back (so a burst of 429s from
one over-full wave settles just under the provider's cap instead of collapsing to 1), and a
Retry-After longer than a second also holds back new calls until it has passed. Every `limit`
successes in a row raise it by one again, never above the maximum (additive increase, so a cap that
was lifted is found again within a few round trips).
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
        self._cond = threading.Condition()

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for a free slot; False when `timeout` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                wait_for = self._paused_until - now
                if wait_for <= 0 and self.in_flight < self.limit:
                    self.in_flight += 1
                    return True
                if deadline is not None:
                    if now >= deadline:
                        self._wake()  # a wake-up this thread took must not be lost to the others
                        return False
                    wait_for = min(wait_for if wait_for > 0 else deadline - now, deadline - now)
                self._cond.wait(wait_for if wait_for > 0 else None)

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
        """Wake as many waiters as there are free slots (not all of them: with 32 threads waiting
        for 16 slots, waking all on every release cost measurable CPU)."""
        free = self.limit - self.in_flight
        if free > 0:
            self._cond.notify(free)
