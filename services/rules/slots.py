"""The windows of a call grouped by time span ("slots"), and the facet items of each.

A `for:` rule is evaluated per slot: one slot holds every channel's window over
the same span of the call, and only the facets that belong to it (by their
``window`` index, or else by their time).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from services.rules.helpers import item_value

_NUMBER = (int, float)  # isinstance() with a tuple: faster than with `int | float`, same answer


class Slot:
    """One time span of the call: every channel's window over it."""

    __slots__ = ("start", "end", "windows", "indices", "_caption")

    def __init__(
        self,
        start: float | None,
        end: float | None,
        windows: list[Mapping[str, Any]],
        indices: frozenset[Any],
        caption: str | None = None,
    ) -> None:
        self.start, self.end, self.windows, self.indices, self._caption = start, end, windows, indices, caption

    @property
    def caption(self) -> str:
        """The slot's window captions, one per line (built on first use)."""
        if self._caption is None:
            self._caption = "\n".join(c for w in self.windows if (c := str(w.get("caption") or "")))
        return self._caption


def window_slots(data: Any) -> list[Slot]:
    """The call's windows grouped by time span, in order; [] when the event has none."""
    windows = data.get("windows") if (type(data) is dict or isinstance(data, Mapping)) else None
    if type(windows) is not list or not windows:
        return []
    # The captioner lists windows in time order: group runs of equal spans in one pass,
    # and fall back to grouping and sorting when the order is not that.
    groups: list[tuple[tuple[float, float], list[Mapping[str, Any]]]] = []
    previous: tuple[float, float] | None = None
    members: list[Mapping[str, Any]] = []
    for w in windows:
        key = _span(w)
        if key is None:
            return []
        if key == previous:
            members.append(w)
        elif previous is None or key > previous:
            members = [w]
            groups.append((key, members))
            previous = key
        else:
            return _unordered_slots(windows)
    return [_slot(key, members) for key, members in groups]


def _unordered_slots(windows: list[Any]) -> list[Slot]:
    spans: dict[tuple[float, float], list[Mapping[str, Any]]] = {}
    for w in windows:
        key = _span(w)
        if key is None:
            return []
        members = spans.get(key)
        if members is None:
            spans[key] = [w]
        else:
            members.append(w)
    return [_slot(key, spans[key]) for key in sorted(spans)]


def _slot(key: tuple[float, float], members: list[Mapping[str, Any]]) -> Slot:
    if len(members) == 1:
        index = members[0].get("index")
        return Slot(key[0], key[1], members, frozenset() if index is None else frozenset((index,)))
    if len(members) == 2:  # the usual agent + customer pair: one comparison, not a sort
        first, second = members[0].get("channel"), members[1].get("channel")
        # Channels 0-9 in order are in order as strings too (what _member_order compares).
        in_order = type(first) is int and type(second) is int and 0 <= first < second < 10
        if not in_order and _member_order(members[1]) < _member_order(members[0]):
            members.reverse()
        first_index, second_index = members[0].get("index"), members[1].get("index")
        if first_index is not None and second_index is not None:  # (no comprehension for two)
            return Slot(key[0], key[1], members, frozenset((first_index, second_index)))
    else:
        members.sort(key=_member_order)
    return Slot(key[0], key[1], members, frozenset([i for w in members if (i := w.get("index")) is not None]))


#: round(x, 3) of the window times seen lately: calls reuse the same few times, and
#: round() with digits costs more than the dict lookup.
_ROUNDED: dict[float, float] = {}


def _rounded(value: int | float) -> float:
    out = round(value if type(value) is float else float(value), 3)
    if type(value) is float:
        if len(_ROUNDED) > 4096:
            _ROUNDED.clear()
        _ROUNDED[value] = out
    return out


def _span(window: Any) -> tuple[float, float] | None:
    """A window's (start, end), rounded to the millisecond: the key of its slot (None: no span)."""
    if not (type(window) is dict or isinstance(window, Mapping)):
        return None
    start, end = window.get("start"), window.get("end")
    if type(start) is float and type(end) is float:
        first, last = _ROUNDED.get(start), _ROUNDED.get(end)
        if first is not None and last is not None:
            return (first, last)
    elif not isinstance(start, _NUMBER) or not isinstance(end, _NUMBER):
        return None
    return (_rounded(start), _rounded(end))


def _member_order(w: Mapping[str, Any]) -> tuple[str, str]:
    return (str(w.get("channel")), str(w.get("role")))


def by_slot(items: Any, slots: list[Slot], where: Mapping[Any, tuple[int, ...]]) -> list[Any]:
    """Per slot, the facet items that belong to it (see :func:`_slots_of`), in order;
    ``items`` itself for every slot when it is not a non-empty list."""
    if type(items) is not list or not items:
        return [items] * len(slots)
    out: list[list[Any]] = [[] for _ in slots]
    everywhere = range(len(slots))
    for item in items:
        targets = slots_of(item, slots, where) if type(item) is dict or isinstance(item, Mapping) else everywhere
        for n in targets:
            out[n].append(item)
    return out


def highest_by_slot(
    items: Any, field: str, role: str | None, labels: Collection[str], slots: list[Slot], where: Mapping[Any, tuple[int, ...]]
) -> list[float]:
    """Per slot, helpers.highest() over the items :func:`by_slot` gives it, in one pass: the
    highest ``field`` of the items with a label in ``labels`` (and of ``role``), -inf when
    none, +inf when one of them cannot be compared (only the rule can tell then)."""
    count = len(slots)
    if type(items) is not list:
        return [math.inf] * count
    best = [-math.inf] * count
    everywhere = range(count)
    for item in items:
        value = item_value(item, field, role, labels)
        if value is None:
            continue
        # (An item that is not a map is in every slot, unless it is a Mapping: see by_slot().)
        targets = slots_of(item, slots, where) if type(item) is dict or isinstance(item, Mapping) else everywhere
        for n in targets:
            if value > best[n]:
                best[n] = value
    return best


def slots_of(item: Mapping[str, Any], slots: list[Slot], where: Mapping[Any, tuple[int, ...]]) -> Iterable[int]:
    """The slots a facet item belongs to: that of its ``window`` (``where``: window index ->
    slots), or else those its ``start``/``end`` overlap. (An item that is not a map
    belongs to every slot: the rule must see, and fail on, it.)"""
    window = item.get("window")
    if window is not None:
        try:
            return where.get(window, ())
        except TypeError:  # an unhashable index names no window
            return ()
    start, end = item.get("start"), item.get("end")
    if not (isinstance(start, _NUMBER) and isinstance(end, _NUMBER)):
        return ()
    return [
        n for n, slot in enumerate(slots)
        if slot.start is not None and slot.end is not None and start < slot.end and end > slot.start
    ]  # fmt: skip


def window_index(slots: list[Slot]) -> dict[Any, tuple[int, ...]]:
    where: dict[Any, tuple[int, ...]] = {}
    for n, slot in enumerate(slots):
        for index in slot.indices:
            where[index] = (*where[index], n) if index in where else (n,)
    return where
