"""The guardrails of one evaluation: input caps and time budgets.

The CEL library has no cost limits, so the engine sets its own: captions and the lists of
facets and windows are cut before evaluation (recorded in ``Evaluation.truncated``), a
rule slower than ``max_rule_ms`` is an error, and rules not evaluated within the event's
``max_event_ms`` are errors too. Time is measured as CPU time of the evaluating thread, so
a busy host does not turn into rule errors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.rules.analysis import Loop
from services.settings import RulesSettings

#: The facet lists capped to Limits.max_list_items.
_CAPPED_FACETS = ("emotions", "sound_events", "languages")


@dataclass(frozen=True)
class Limits:
    max_caption_chars: int = 100_000
    max_list_items: int = 1_000
    max_rule_ms: float = 250.0
    max_event_ms: float = 2_000.0
    #: Comprehension steps a rule may take on one event (its loops times the event's list
    #: sizes, counted before it runs): the library cannot be interrupted once it runs.
    max_rule_iterations: int = 100_000

    @classmethod
    def from_settings(cls, settings: RulesSettings) -> Limits:
        """The limits ``LISTENPOST_RULES__MAX_*`` set."""
        return cls(
            max_caption_chars=settings.max_caption_chars,
            max_list_items=settings.max_list_items,
            max_rule_ms=settings.max_rule_ms,
            max_event_ms=settings.max_event_ms,
            max_rule_iterations=settings.max_rule_iterations,
        )


DEFAULT_LIMITS = Limits()


def comprehension_steps(loops: tuple[Loop, ...], values: Mapping[str, Any], unknown_size: int) -> int:
    """How many steps ``loops`` take on these values: each loop's list size times (one plus
    the steps of the loops inside it). A size that cannot be known before running (an item's
    own list, another comprehension's result) counts as ``unknown_size``."""
    steps = 0
    for loop in loops:
        if loop.size is not None:
            size = loop.size
        elif loop.path is None:
            size = unknown_size
        else:
            size = _size_at(values, loop.path)
        steps += size * (1 + comprehension_steps(loop.inner, values, unknown_size)) if size else 0
    return steps


def _size_at(values: Mapping[str, Any], path: tuple[str, ...]) -> int:
    value: Any = values
    for name in path:
        if not (type(value) is dict or isinstance(value, Mapping)) or name not in value:
            return 0  # missing: the rule fails on its own, at once
        value = value[name]
    return len(value) if isinstance(value, list | dict | Mapping) else 0


def cap_input(data: Any, limits: Limits) -> tuple[Any, tuple[str, ...]]:
    """``data`` with the caption and the lists rules iterate cut to the limits (copied only if cut)."""
    if not (type(data) is dict or isinstance(data, Mapping)):
        return data, ()
    if _within(data, limits):
        return data, ()
    cut: list[str] = []
    out: dict[str, Any] | None = None

    def setdata(key: str, value: Any) -> None:
        nonlocal out
        if out is None:
            out = dict(data)
        out[key] = value

    caption = data.get("caption")
    if isinstance(caption, str) and len(caption) > limits.max_caption_chars:
        setdata("caption", caption[: limits.max_caption_chars])
        cut.append("caption")
    windows = data.get("windows")
    if type(windows) is list:
        longest = limits.max_caption_chars
        capped = windows[: limits.max_list_items] if len(windows) > limits.max_list_items else windows
        if capped is not windows:
            cut.append("windows")
        if _long_caption(capped, longest):
            capped = [
                {**w, "caption": w["caption"][:longest]} if type(w) is dict and type(w.get("caption")) is str else w
                for w in capped
            ]
            cut.append("windows.caption")
        if capped is not windows:
            setdata("windows", capped)
    facets = data.get("facets")
    if (type(facets) is dict or isinstance(facets, Mapping)):
        long = [k for k in _CAPPED_FACETS if isinstance(facets.get(k), list) and len(facets[k]) > limits.max_list_items]
        if long:
            setdata("facets", {**facets, **{k: facets[k][: limits.max_list_items] for k in long}})
            cut.extend(f"facets.{k}" for k in long)
    return (out if out is not None else data), tuple(cut)


def _within(data: Mapping[str, Any], limits: Limits) -> bool:
    """Whether cap_input() has nothing to cut (the usual case, checked without copying)."""
    caption, windows, facets = data.get("caption"), data.get("windows"), data.get("facets")
    if isinstance(caption, str) and len(caption) > limits.max_caption_chars:
        return False
    if type(windows) is list and (len(windows) > limits.max_list_items or _long_caption(windows, limits.max_caption_chars)):
        return False
    if type(facets) is dict or isinstance(facets, Mapping):
        most = limits.max_list_items
        for key in _CAPPED_FACETS:
            if key in facets:
                items = facets[key]
                if isinstance(items, list) and len(items) > most:
                    return False
    return True


def _long_caption(windows: list[Any], longest: int) -> bool:
    for w in windows:
        if type(w) is dict and "caption" in w:
            c = w["caption"]
            if type(c) is str and len(c) > longest:
                return True
    return False


class Budget:
    """The time limits of one evaluation.

    Wall time per rule is cheap to read; CPU time is not (a syscall, half a microsecond,
    1 % of an event). A limit is crossed only if the wall time says so AND the thread's
    CPU time for the whole event so far agrees: a replica descheduled on a busy host is
    not a slow rule. The CPU time at the start is not read for every event: a sample of
    this thread's (wall, CPU) time up to a tenth of the smallest limit old bounds it (the
    CPU time cannot grow faster than the wall time), so a limit is enforced once the CPU
    time passes it by at most a tenth.
    """

    __slots__ = ("budget_s", "cpu_started", "limits", "rule_budget_s", "spent", "started")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.budget_s = limits.max_event_ms / 1000.0
        self.rule_budget_s = limits.max_rule_ms / 1000.0
        self.spent = self.budget_s < 0 or self.rule_budget_s < 0  # (limits below zero: tests of the guardrails)
        self.started = started = time.perf_counter()
        sample = getattr(_CPU_SAMPLE, "last", None)
        if sample is None or started - sample[0] > min(self.budget_s, self.rule_budget_s) / 10:
            sample = _CPU_SAMPLE.last = (started, time.thread_time())
        # An upper bound of the CPU time at the start: what elapsed CPU time is measured from.
        self.cpu_started = sample[1] + (started - sample[0])

    def over_event(self, now: float) -> str | None:
        """The error of a rule not evaluated because the event's budget is spent by ``now``."""
        if now - self.started > self.budget_s and time.thread_time() - self.cpu_started > self.budget_s:
            return f"not evaluated: the event's evaluation budget of {self.limits.max_event_ms:g} ms was spent"
        return None

    def over_rule(self, took: float) -> str | None:
        """The error of a rule whose evaluation took ``took`` seconds, if that is too slow."""
        if took > self.rule_budget_s and time.thread_time() - self.cpu_started > self.rule_budget_s:
            return f"evaluation took {took * 1000:.0f} ms, over the limit of {self.limits.max_rule_ms:g} ms"
        return None


#: Per thread: (wall, CPU) time when the CPU time was last read (see Budget).
_CPU_SAMPLE = threading.local()
