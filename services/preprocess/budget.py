"""A replica's memory budget for prepares: reservations taken before decoding, grown while it runs.

Thread-safe and non-blocking: a decoding thread grows its reservation or is told
there is no room (it never waits, so two growing prepares cannot deadlock). Waiting
for room before a prepare starts is the event loop's business (:mod:`.gate`).
"""

from __future__ import annotations

import threading


class MemoryBudget:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def take(self, nbytes: int) -> bool:
        with self._lock:
            if self._used + nbytes > self.capacity:
                return False
            self._used += nbytes
            return True

    def give(self, nbytes: int) -> None:
        with self._lock:
            self._used = max(0, self._used - nbytes)

    def try_reserve(self, nbytes: int) -> Reservation | None:
        return Reservation(self, nbytes) if self.take(nbytes) else None


class Reservation:
    """Bytes held from a :class:`MemoryBudget` until :meth:`release`."""

    def __init__(self, budget: MemoryBudget, nbytes: int) -> None:
        self._budget = budget
        self.bytes = nbytes
        self._released = False

    def grow(self, total: int) -> bool:
        """Hold ``total`` bytes instead, if the budget has room; never waits."""
        extra = total - self.bytes
        if extra <= 0:
            return True
        if not self._budget.take(extra):
            return False
        self.bytes = total
        return True

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._budget.give(self.bytes)
