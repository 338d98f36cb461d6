"""Chunks back in sequence order: a live stream's chunks may arrive out of order (several
publishers, a reconnecting client), twice (a client's retry, a redelivery) or never (a lost
packet upstream). Audio cannot be placed until the chunks before it are, but it cannot wait
for ever either: after ``max_held`` chunks are waiting, a missing one is given up.

Counts, for the stream's events and metrics:

- ``duplicates``: chunks dropped because their turn had passed (a copy of a delivered chunk,
  a second copy of a held one, or one that came after it was given up);
- ``out_of_order``: chunks that arrived after a higher-numbered chunk and were still used (a
  late chunk that filled its hole). Counting the late chunk, not the ones ahead of it, keeps a
  loss from counting as reordering: after a lost chunk, those that follow are in order;
- ``missing``: chunks never received, given up when too many were held or at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class SequenceCounts:
    duplicates: int = 0
    out_of_order: int = 0
    missing: int = 0


class Reorderer(Generic[T]):
    """Items numbered 1, 2, 3, ... in, the same items out in order, each once."""

    def __init__(self, max_held: int) -> None:
        if max_held < 0:
            raise ValueError(f"max_held must be 0 or more, not {max_held}")
        self._max_held = max_held
        self._next = 1
        self._highest = 0  # the highest sequence number seen so far (0: none yet)
        self._held: dict[int, T] = {}
        self._duplicates = 0
        self._out_of_order = 0
        self._missing = 0

    @property
    def next_seq(self) -> int:
        """The sequence number delivered next."""
        return self._next

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def counts(self) -> SequenceCounts:
        return SequenceCounts(duplicates=self._duplicates, out_of_order=self._out_of_order, missing=self._missing)

    def resume_at(self, next_seq: int) -> None:
        """Start from ``next_seq`` instead of 1 (a restarted owner reading from a checkpoint); before any push."""
        if next_seq < 1:
            raise ValueError(f"sequence numbers start at 1, not {next_seq}")
        if self._held:
            raise RuntimeError("resume_at must be called before any chunk is held")
        self._next = next_seq
        self._highest = max(self._highest, next_seq - 1)

    def push(self, seq: int, item: T) -> list[tuple[int, T]]:
        """One arrival; the items now deliverable, in order (none while a lower one is missing)."""
        if seq < self._next or seq in self._held:
            self._duplicates += 1
            return []
        if seq < self._highest:
            self._out_of_order += 1
        self._highest = max(self._highest, seq)
        self._held[seq] = item
        released = self._release()
        if len(self._held) > self._max_held:
            released += self._give_up()
        return released

    def flush(self) -> list[tuple[int, T]]:
        """Everything held, in order, the holes between counted as missing (the stream's end or an idle stream)."""
        released: list[tuple[int, T]] = []
        while self._held:
            released += self._give_up()
        return released

    def _give_up(self) -> list[tuple[int, T]]:
        lowest = min(self._held)
        self._missing += lowest - self._next
        self._next = lowest
        return self._release()

    def _release(self) -> list[tuple[int, T]]:
        released = []
        while self._next in self._held:
            released.append((self._next, self._held.pop(self._next)))
            self._next += 1
        return released
