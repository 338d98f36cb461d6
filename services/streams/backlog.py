"""What to drop when the Captioner is behind: live audio cannot wait, so the windows waiting for
a caption are bounded, and a policy decides which to lose.

- ``oldest``: keep the newest windows (what is said now matters most); the oldest waiting one goes.
- ``alternate``: while the backlog is full, every other new window is dropped on arrival,
  starting with the first; a kept one makes room by dropping the oldest waiting, so the bound
  always holds. The captions that do come span the whole stretch at half the density, and with
  a Captioner at half the windows' pace nothing waiting is ever dropped: a new window meets
  either a free slot (kept) or a full backlog (dropped), in turn.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum
from typing import Generic, TypeVar

T = TypeVar("T")


class DropPolicy(StrEnum):
    oldest = "oldest"
    alternate = "alternate"


class WindowBacklog(Generic[T]):
    """A FIFO of at most ``max_waiting`` items; :meth:`offer` says what it dropped."""

    def __init__(self, policy: DropPolicy, max_waiting: int) -> None:
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be 1 or more, not {max_waiting}")
        self.policy = DropPolicy(policy)
        self.max_waiting = max_waiting
        self.dropped = 0
        self._waiting: deque[T] = deque()
        self._drop_next = True  # alternate: the next offer while full is dropped on arrival

    def __len__(self) -> int:
        return len(self._waiting)

    def offer(self, item: T) -> list[T]:
        """Queue ``item``; the items this offer dropped (possibly ``item`` itself), oldest first."""
        full = len(self._waiting) >= self.max_waiting
        if self.policy is DropPolicy.alternate:
            if not full:
                self._drop_next = True  # caught up: the next time it is full starts with a dropped window
            elif self._drop_next:
                self._drop_next = False
                self.dropped += 1
                return [item]
            else:
                self._drop_next = True
        self._waiting.append(item)
        dropped = []
        while len(self._waiting) > self.max_waiting:
            dropped.append(self._waiting.popleft())
        self.dropped += len(dropped)
        return dropped

    def take(self) -> T | None:
        """The oldest waiting item, or None."""
        return self._waiting.popleft() if self._waiting else None
