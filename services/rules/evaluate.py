"""Evaluate a rule set against one event: a pure function, no I/O.

Semantics (Alertmanager-style routing tree flattened to a list):
rules run in priority order; the first ``enforce`` match stops evaluation
unless it says ``continue: true``; ``shadow`` matches are recorded and never
stop anything; ``disabled`` rules are skipped. A failing rule is recorded as
an error and evaluation goes on: an evaluation error is never a silent false.

Rules with ``for:`` (debounce) are evaluated once per window of the call (the
windows of a captioned event, grouped by time: one slot holds every channel's
window over the same span). In each slot ``caption`` is that slot's caption
and ``facets`` holds only that slot's facets; ``acoustics``, ``context``,
``event`` and ``data`` are the whole event's. The rule fires when its
condition held in ``windows`` consecutive slots, or for ``duration`` of call
time. The streak carries over to the next event of the same call (the engine
keeps it in NATS KV); an event without windows counts as one window.

Speed (see bench/rules.py): conditions inside the native subset run as Python
closures on the event's own dicts and lists (:mod:`services.rules.native`),
when the values the candidate rules read are plain JSON; the rest use the
``cel`` library: one CEL context per rule set and thread with the stdlib and
helpers registered once, and per event only the variables, and of them only
the fields, that those rules read are converted into CEL (only when some rule
needs the library). A pre-filter skips rules whose trigger facts (emotion or
sound labels, caption words) the event lacks.

Guardrails, since the CEL library has no cost limits: captions and the lists
of facets and windows are capped before evaluation (recorded in
``Evaluation.truncated``), a rule slower than ``max_rule_ms`` is an error, and
rules not evaluated within the event's ``max_event_ms`` are errors too (both
measured as CPU time of the evaluating thread, so a busy host does not turn
into rule errors).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .decisions import DEFAULT_PREFIX, Decision, DecisionBuilder, check_prefix
from .expr import runtime_message
from .helpers import Facts, clock
from .native import plain_values
from .ruleset import CompiledRule, EvalContext, RuleSet, Segment, _labels

_UNSET = object()
# Attributes that are the event's payload, not its metadata: exposed as `data`.
_PAYLOAD_ATTRIBUTES = ("data", "data_base64")
#: Windows further apart than this (seconds) break a debounce streak.
STREAK_GAP_S = 1.0
_NUMBER = (int, float)  # isinstance() with a tuple: faster than with `int | float`, same answer


@dataclass(frozen=True)
class Limits:
    max_caption_chars: int = 100_000
    max_list_items: int = 1_000
    max_rule_ms: float = 250.0
    max_event_ms: float = 2_000.0


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class RuleMatch:
    rule_id: str
    mode: Literal["enforce", "shadow"]


@dataclass(frozen=True)
class RuleError:
    """A rule that could not be evaluated for this event (a record, not an exception)."""

    rule_id: str
    message: str


@dataclass
class Streak:
    """Debounce state of one rule on one call."""

    windows: int = 0  # consecutive slots the condition held in
    since_s: float | None = None  # call time the streak began
    last_end_s: float | None = None  # end of the last slot evaluated
    evidence: dict[str, Any] = field(default_factory=dict)  # what the first slot of the streak matched

    def to_json(self) -> dict[str, Any]:
        return {"windows": self.windows, "since_s": self.since_s, "last_end_s": self.last_end_s, "evidence": self.evidence}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Streak:
        return cls(
            windows=int(value.get("windows", 0)),
            since_s=value.get("since_s"),
            last_end_s=value.get("last_end_s"),
            evidence=dict(value.get("evidence") or {}),
        )


@dataclass(frozen=True)
class Evaluation:
    ruleset_version: str
    #: Every output event, in evaluation order: actions of enforce matches,
    #: shadow-match notices and rule-failure notices.
    decisions: list[Decision]
    matches: list[RuleMatch]
    errors: list[RuleError]
    evaluated: int = 0  # rules whose condition ran (a batch runs all its conditions)
    skipped: int = 0  # applicable rules the pre-filter proved false
    truncated: tuple[str, ...] = ()
    callid: str | None = None
    #: Debounce state after this event, for the `for:` rules that were evaluated.
    streaks: dict[str, Streak] = field(default_factory=dict)

    @property
    def actions(self) -> list[Decision]:
        """Only the effects (route, alert, tag, emit), without shadow and error notices."""
        return [d for d in self.decisions if d.kind in ("route", "alert", "tag", "emit")]


def rule_variables(event_attributes: Mapping[str, Any], data: Any) -> dict[str, Any]:
    """The names a rule's ``when`` and templates see."""
    payload = data if type(data) is dict or isinstance(data, Mapping) else {}

    def mapping(name: str) -> Any:
        value = payload.get(name)
        return value if value is not None else {}

    caption = payload.get("caption")
    return {
        "event": {k: v for k, v in event_attributes.items() if k not in _PAYLOAD_ATTRIBUTES},
        "data": data if data is not None else {},
        "facets": mapping("facets"),
        "acoustics": mapping("acoustics"),
        "context": mapping("context"),
        "caption": caption if caption is not None else "",
    }


def applies(rule: CompiledRule, event_type: str, source: str) -> bool:
    return rule.applies(event_type, source)


def cap_input(data: Any, limits: Limits) -> tuple[Any, tuple[str, ...]]:
    """``data`` with the caption and the lists rules iterate cut to the limits (copied only if cut)."""
    if not (type(data) is dict or isinstance(data, Mapping)):
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
        long = [k for k in ("emotions", "sound_events", "languages") if isinstance(facets.get(k), list) and len(facets[k]) > limits.max_list_items]
        if long:
            setdata("facets", {**facets, **{k: facets[k][: limits.max_list_items] for k in long}})
            cut.extend(f"facets.{k}" for k in long)
    return (out if out is not None else data), tuple(cut)


def _long_caption(windows: list[Any], longest: int) -> bool:
    for w in windows:
        if type(w) is dict:
            c = w.get("caption")
            if type(c) is str and len(c) > longest:
                return True
    return False


def _project(value: Any, fields: frozenset[str] | None) -> Any:
    if fields is None or not (type(value) is dict or isinstance(value, Mapping)):
        return value
    return {k: value[k] for k in fields if k in value}


class Slot:
    """One time span of the call: every channel's window over it."""

    __slots__ = ("start", "end", "windows", "indices", "_caption")

    def __init__(self, start: float | None, end: float | None, windows: list[Mapping[str, Any]], indices: frozenset[Any], caption: str | None = None) -> None:
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
    spans: dict[tuple[float, float], list[Mapping[str, Any]]] = {}
    for w in windows:
        if not (type(w) is dict or isinstance(w, Mapping)):
            return []
        start, end = w.get("start"), w.get("end")
        if not isinstance(start, _NUMBER) or not isinstance(end, _NUMBER):
            return []
        key = (round(start if type(start) is float else float(start), 3), round(end if type(end) is float else float(end), 3))
        members = spans.get(key)
        if members is None:
            spans[key] = [w]
        else:
            members.append(w)
    slots = []
    for (start, end), members in sorted(spans.items()):
        if len(members) > 1:
            members.sort(key=_member_order)
        slots.append(Slot(start, end, members, frozenset({i for w in members if (i := w.get("index")) is not None})))
    return slots


def _member_order(w: Mapping[str, Any]) -> tuple[str, str]:
    return (str(w.get("channel")), str(w.get("role")))


def _in_slot(item: Any, slot: Slot) -> bool:
    if not (type(item) is dict or isinstance(item, Mapping)):
        return True  # keep malformed items: the rule must see (and fail on) them
    window = item.get("window")
    if window is not None:
        return window in slot.indices
    start, end = item.get("start"), item.get("end")
    if isinstance(start, _NUMBER) and isinstance(end, _NUMBER) and slot.start is not None and slot.end is not None:
        return start < slot.end and end > slot.start
    return False


def _slot_view(facets: Any, slot: Slot) -> Any:
    if not (type(facets) is dict or isinstance(facets, Mapping)):
        return facets
    view = dict(facets)
    for key in ("emotions", "sound_events"):
        items = facets.get(key)
        if type(items) is list:
            view[key] = [item for item in items if _in_slot(item, slot)] if items else items
    return view


def _event_time(attributes: Mapping[str, Any]) -> float | None:
    value = attributes.get("time")
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


class _Run:
    """The state of one evaluation: the event's views and the shared CEL context."""

    def __init__(
        self,
        ruleset: RuleSet,
        attributes: Mapping[str, Any],
        data: Any,
        prefix: str,
        limits: Limits,
        prefilter: bool,
        native: bool = True,
    ) -> None:
        self.ruleset = ruleset
        self.attributes = attributes
        self.prefix = prefix
        self.limits = limits
        self.data, self.truncated = cap_input(data, limits)
        self.variables = rule_variables(attributes, self.data)
        facets = self.variables["facets"]
        facets_map = facets if (type(facets) is dict or isinstance(facets, Mapping)) else {}
        windows = self.data.get("windows") if (type(self.data) is dict or isinstance(self.data, Mapping)) else None
        self.windows = windows if type(windows) is list else []
        self.facts = Facts(facets_map.get("emotions"), facets_map.get("sound_events"), self.variables["caption"], self.windows)
        self.plan = ruleset.plan(str(attributes.get("type", "")), str(attributes.get("source", "")))
        if prefilter:
            self.present = self.plan.present_keys(self.facts, self.variables["context"])
            self.candidates = self.plan.candidates(self.present)
        else:
            # Every key "present": nothing is skipped, not even a `for:` rule's windows.
            self.present = frozenset(f"{kind}:*" for kind in ("emotion", "sound", "word", *self.plan.context_kinds))
            self.candidates = self.plan.subset(self.plan.rules)
        self.rules, self.needed = self.candidates.rules, self.candidates.variables
        self._builder: DecisionBuilder | None = None
        self._slots: list[Slot] | None = None
        self._views: dict[int, tuple[Any, Facts]] | None = None
        self._slot_keys: dict[int, frozenset[str]] | None = None
        self.prefiltered = prefilter
        self._envs: dict[int, dict[str, Any]] = {}  # native programs' variables, per slot
        self._changed: set[str] = set()
        self._last_end: Any = _UNSET
        self.ctx: EvalContext | None = None
        self.context_error: str | None = None
        self.allow_native = native
        #: Whether this event's rules may run natively: set by enter() (plain JSON values only).
        self.native = False
        self._cel_ready = False

    @property
    def builder(self) -> DecisionBuilder:
        if self._builder is None:
            self._builder = DecisionBuilder(self.ruleset.version, self.attributes, self.variables, self.prefix)
        return self._builder

    @property
    def slots(self) -> list[Slot]:
        if self._slots is None:
            self._slots = window_slots(self.data)
        return self._slots

    def enter(self) -> None:
        """Prepare evaluation: native when the values the rules read are plain JSON, and the
        CEL context only if some candidate rule needs the library (converting is the cost)."""
        self.ctx = self.ruleset.context()
        self.ctx.current.facts = self.facts
        self._cel_ready = False
        self.native = self.allow_native and self._plain()
        if not self.native or self.candidates.needs_library:
            self.cel_context()

    def _plain(self) -> bool:
        """Whether every value the candidate rules may read is plain JSON. Otherwise the
        library evaluates every rule of the event: it owns the conversion, and the error
        "event cannot be given to CEL" that fails every rule, as without native programs."""
        projections = self.plan.projections
        for name in self.needed:
            value = self.variables[name]
            fields = projections.get(name)
            if fields is None or type(value) is not dict:
                if not plain_values(value):
                    return False
            else:
                for key in fields:
                    if key in value and not plain_values(value[key]):
                        return False
        return True

    def cel_context(self) -> None:
        """Give the candidate rules' variables to this thread's CEL context (once per event)."""
        assert self.ctx is not None
        if self._cel_ready:
            return
        self._cel_ready = True
        projections = self.plan.projections
        try:
            self.ctx.context.update({name: _project(self.variables[name], projections.get(name)) for name in self.needed})
        except Exception as exc:  # noqa: BLE001 -- a value CEL cannot represent: every rule fails, visibly
            self.context_error = f"event cannot be given to CEL: {runtime_message(exc)}"

    def leave(self) -> None:
        if self.ctx is not None:
            self.ctx.current.facts = None

    def execute(self, rule: CompiledRule) -> tuple[Any, str | None]:
        """(result, None) or (None, error message)."""
        assert self.ctx is not None
        self.facts.evidence.clear()
        native = rule.native if self.native else None
        try:
            if native is not None:
                result = native(self.variables, self.facts)
            else:
                result = rule.program.execute(self.ctx.context)
        except Exception as exc:  # noqa: BLE001 -- the library raises KeyError, TypeError, RuntimeError...: all are rule errors
            return None, runtime_message(exc)
        if not isinstance(result, bool):
            return None, _not_bool(result)
        return result, None

    def slot_view(self, index: int) -> tuple[Any, Facts]:
        """The facets and helper facts of one slot, built once per event."""
        if self._views is None:
            self._views = {}
        view = self._views.get(index)
        if view is None:
            slot = self.slots[index]
            facets = _slot_view(self.variables["facets"], slot)
            is_map = (type(facets) is dict or isinstance(facets, Mapping))
            facts = Facts(
                facets.get("emotions") if is_map else None,
                facets.get("sound_events") if is_map else None,
                slot.caption,
                slot.windows,
            )
            view = self._views[index] = (facets, facts)
        return view

    def slot_present(self, index: int) -> frozenset[str]:
        """The pre-filter keys of one slot: the event's context and word keys, the slot's
        own emotion and sound labels (built once per slot and event)."""
        if self._slot_keys is None:
            self._slot_keys = {}
        keys = self._slot_keys.get(index)
        if keys is None:
            # What slot_view() would give the slot's Facts, without building the view.
            slot = self.slots[index]
            found = {k for k in self.present if not k.startswith(("emotion:", "sound:"))}
            facets = self.variables["facets"]
            is_map = type(facets) is dict or isinstance(facets, Mapping)
            kinds = self.plan.kinds
            for name, kind in (("emotions", "emotion"), ("sound_events", "sound")):
                if kind in kinds:
                    items = facets.get(name) if is_map else None
                    if type(items) is list and items:
                        items = [item for item in items if _in_slot(item, slot)]
                    _labels(items, kind, found)
            keys = self._slot_keys[index] = frozenset(found)
        return keys

    def execute_in(self, rule: CompiledRule, index: int) -> tuple[Any, str | None, dict[str, Any]]:
        """Evaluate ``rule`` on one slot of the call; :meth:`restore` puts the event-wide view back."""
        assert self.ctx is not None
        slot = self.slots[index]
        facets, facts = self.slot_view(index)
        facts.evidence.clear()
        self.ctx.current.facts = facts
        native = rule.native if self.native else None
        try:
            if native is not None:
                env = self._envs.get(index)
                if env is None:
                    # The slot's view, once per slot and event (the event's own stays as it is).
                    env = self._envs[index] = {**self.variables, "facets": facets, "caption": slot.caption}
                result = native(env, facts)
            else:
                update = {}
                if "facets" in rule.variables:
                    update["facets"] = _project(facets, self.plan.projections.get("facets"))
                if "caption" in rule.variables:
                    update["caption"] = slot.caption
                if update:
                    self.ctx.context.update(update)
                    self._changed.update(update)
                result = rule.program.execute(self.ctx.context)
        except Exception as exc:  # noqa: BLE001
            return None, runtime_message(exc), {}
        if not isinstance(result, bool):
            return None, f"when returned {type(result).__name__} {_short(result)}, not a bool", {}
        if not result:
            return False, None, {}
        evidence = dict(facts.evidence[0]) if facts.evidence else {}
        if "window" not in evidence and slot.indices:
            evidence["window"] = sorted(slot.indices, key=str)[0]
        if slot.start is not None:
            evidence.setdefault("start", slot.start)
            evidence.setdefault("end", slot.end)
            evidence.setdefault("at", clock(slot.start))
        evidence.setdefault("caption", slot.caption)
        evidence.setdefault("span", slot.caption[:200])
        return True, None, evidence

    def execute_batch(self, segment: Segment) -> list[Any] | None:
        """The conditions of a segment in one call; None when one of them raised (then: one by one)."""
        assert self.ctx is not None
        try:
            results = segment.program.execute(self.ctx.context)
        except Exception:  # noqa: BLE001 -- some rule failed: the caller evaluates them alone for exact errors
            return None
        return results if isinstance(results, list) and len(results) == len(segment.rules) else None

    def evidence_of(self, rule: CompiledRule) -> dict[str, Any]:
        """What a matched rule's helpers recorded: evaluate it once more, alone."""
        if not rule.condition.analysis.helpers:
            return {}
        result, _ = self.execute(rule)
        return dict(self.facts.evidence[0]) if result and self.facts.evidence else {}

    def restore(self) -> None:
        assert self.ctx is not None
        self.ctx.current.facts = self.facts
        if self._changed:
            names = [name for name in self._changed if name in self.needed]
            if names:
                self.ctx.context.update({name: _project(self.variables[name], self.plan.projections.get(name)) for name in names})
            self._changed.clear()

    def debounce(self, rule: CompiledRule, streak: Streak) -> tuple[bool, str | None, Streak, dict[str, Any]]:
        """Walk the call's slots; (fired, error, streak after, evidence)."""
        spec = rule.debounce
        assert spec is not None
        need_windows, need_s = spec.windows, rule.debounce_s
        streak = Streak(streak.windows, streak.since_s, streak.last_end_s, dict(streak.evidence))
        fired, evidence = False, {}
        if rule.cannot_hold(self.present):
            # False in every window (its trigger facts are absent): the streak ends here.
            return False, None, Streak(last_end_s=self.last_end()), {}
        windowed = bool(self.slots)
        slots = self.slots if windowed else [_whole_event_slot(self)]
        try:
            for index, slot in enumerate(slots):
                contiguous = (
                    not windowed  # events without windows follow each other
                    or slot.start is None
                    or streak.last_end_s is None
                    or abs(slot.start - streak.last_end_s) <= STREAK_GAP_S
                )
                if not contiguous:
                    streak = Streak()
                if windowed:
                    if self.prefiltered and rule.cannot_hold(self.slot_present(index)):
                        # Its trigger facts are absent from this slot's facets (the same proof
                        # as cannot_hold() for the whole event): false here, no need to run it.
                        held, error, seen = False, None, {}
                    else:
                        held, error, seen = self.execute_in(rule, index)
                else:
                    held, error = self.execute(rule)
                    seen = dict(self.facts.evidence[0]) if held and self.facts.evidence else {}
                if error is not None:
                    return False, error, streak, {}
                if held:
                    if streak.windows == 0:
                        streak.since_s, streak.evidence = slot.start, seen
                    streak.windows += 1
                    held_s = (slot.end - streak.since_s) if slot.end is not None and streak.since_s is not None else 0.0
                    if (need_windows is not None and streak.windows >= need_windows) or (
                        need_s is not None and held_s >= need_s
                    ):
                        if not fired:
                            evidence = {**streak.evidence, "windows": streak.windows, "held_s": round(held_s, 3)}
                        fired = True
                else:
                    streak = Streak()
                streak.last_end_s = slot.end
        finally:
            if windowed:
                self.restore()
        return fired, None, streak, evidence

    def last_end(self) -> float | None:
        """The end of the call's last slot, without building the slots (as window_slots orders them)."""
        if self._last_end is _UNSET:
            self._last_end = self._find_last_end()
        return self._last_end  # type: ignore[return-value]

    def _find_last_end(self) -> float | None:
        if self._slots is None and any(r.debounce is not None and not r.cannot_hold(self.present) for r in self.rules):
            _ = self.slots  # a `for:` rule will walk them anyway: their last end is at hand
        if self._slots is not None:
            return self._slots[-1].end if self._slots else _event_time(self.attributes)
        windows = self.data.get("windows") if (type(self.data) is dict or isinstance(self.data, Mapping)) else None
        last: tuple[float, float] | None = None
        if isinstance(windows, list):
            for w in windows:
                if not (type(w) is dict or isinstance(w, Mapping)):
                    return _event_time(self.attributes)
                start, end = w.get("start"), w.get("end")
                if not isinstance(start, _NUMBER) or not isinstance(end, _NUMBER):
                    return _event_time(self.attributes)
                span = (round(start if type(start) is float else float(start), 3), round(end if type(end) is float else float(end), 3))
                if last is None or span > last:
                    last = span
        return last[1] if last is not None else _event_time(self.attributes)

    def window_evidence(self, rule: CompiledRule) -> dict[str, Any]:
        """For a match without helper evidence: the first window where the condition holds."""
        if len(self.slots) < 2 or not ({"facets", "caption"} & rule.variables):
            return {}
        try:
            for index in range(len(self.slots)):
                held, error, evidence = self.execute_in(rule, index)
                if held and error is None:
                    return evidence
        finally:
            self.restore()
        return {}


def _whole_event_slot(run: _Run) -> Slot:
    t = _event_time(run.attributes)
    return Slot(t, t, run.windows, frozenset(), caption=str(run.variables["caption"]))


def evaluate(
    ruleset: RuleSet,
    event_attributes: Mapping[str, Any],
    data: Any,
    *,
    prefix: str = DEFAULT_PREFIX,
    limits: Limits = DEFAULT_LIMITS,
    streaks: Mapping[str, Streak] | None = None,
    prefilter: bool = True,
    batch: bool = True,
    native: bool = True,
) -> Evaluation:
    """Run every applicable rule of ``ruleset`` on one event (attributes incl. extensions, and data).

    ``streaks``: the debounce state of the event's call, by rule id (none: a fresh call).
    ``prefilter=False, batch=False`` evaluates every applicable rule alone: the reference
    the fast path is tested against (same results), and what ``rules explain`` uses.
    ``native=False`` evaluates every condition with the ``cel`` library (the reference
    the native programs are tested against).
    """
    check_prefix(prefix)
    run = _Run(ruleset, event_attributes, data, prefix, limits, prefilter, native)
    decisions: list[Decision] = []
    matches: list[RuleMatch] = []
    errors: list[RuleError] = []
    after: dict[str, Streak] = {}
    evaluated = 0

    def fail(rule: CompiledRule, message: str) -> None:
        errors.append(RuleError(rule_id=rule.id, message=message))
        decisions.append(run.builder.error(rule, message))

    if run.rules:
        run.enter()
    budget_s = limits.max_event_ms / 1000.0
    rule_budget_s = limits.max_rule_ms / 1000.0
    # Wall time per rule is cheap to read; CPU time is not (a syscall). A limit is
    # crossed only if the wall time says so AND the thread's CPU time for the whole
    # event so far agrees: a replica descheduled on a busy host is not a slow rule.
    cpu_started = time.thread_time()
    started = last = time.perf_counter()
    plan = run.plan
    results: list[Any] | None = None
    spent = budget_s < 0 or rule_budget_s < 0  # (limits below zero: tests of the guardrails)
    if batch and plan.batch is not None and run.rules and run.context_error is None and not spent:
        results = run.execute_batch(plan.batch)
        last = time.perf_counter()
        if results is not None and last - started > rule_budget_s and time.thread_time() - cpu_started > rule_budget_s:
            results = None  # too slow as a whole: evaluate one by one to name the slow rule
    rules = run.rules
    facts, variables = run.facts, run.variables
    if results is not None:
        # Only what needs work, in order: batched conditions that are not plainly false,
        # and the rules evaluated one by one.
        candidates = run.candidates
        walk: Any = sorted(
            [candidates.in_batch[i] for i, value in enumerate(results) if value is not False] + list(candidates.alone)
        )
        evaluated += len(candidates.in_batch)
        batched = {pos: results[i] for i, pos in enumerate(candidates.in_batch)}
    else:
        walk, batched = range(len(rules)), {}
    try:
        for position in walk:
            rule = rules[position]
            if run.context_error is not None:
                fail(rule, run.context_error)
                continue
            evidence: dict[str, Any] | None = None
            if position in batched:
                value = batched[position]
                result, error = (value, None) if isinstance(value, bool) else (None, _not_bool(value))
            else:
                if last - started > budget_s and time.thread_time() - cpu_started > budget_s:
                    fail(rule, f"not evaluated: the event's evaluation budget of {limits.max_event_ms:g} ms was spent")
                    continue
                evaluated += 1
                if rule.debounce is not None:
                    previous = (streaks or {}).get(rule.id) or Streak()
                    result, error, streak, evidence = run.debounce(rule, previous)
                    after[rule.id] = streak
                elif (native := rule.native if run.native else None) is not None:
                    # run.execute() inlined for native programs (the common case).
                    if facts.evidence:
                        facts.evidence.clear()
                    try:
                        result = native(variables, facts)
                    except Exception as exc:  # noqa: BLE001 -- as in execute()
                        result, error = None, runtime_message(exc)
                    else:
                        result, error = (result, None) if isinstance(result, bool) else (None, _not_bool(result))
                    evidence = dict(facts.evidence[0]) if result and facts.evidence else {}
                else:
                    result, error = run.execute(rule)
                    evidence = dict(run.facts.evidence[0]) if result and run.facts.evidence else {}
                now = time.perf_counter()
                took, last = now - last, now
                if error is None and took > rule_budget_s and time.thread_time() - cpu_started > rule_budget_s:
                    error = f"evaluation took {took * 1000:.0f} ms, over the limit of {limits.max_rule_ms:g} ms"
            if error is not None:
                fail(rule, error)
                continue
            if not result:
                continue
            if evidence is None:  # matched inside the batch: collect what its helpers saw
                evidence = run.evidence_of(rule)
            if not evidence and rule.debounce is None and rule.quotes_match:
                evidence = run.window_evidence(rule)
                last = time.perf_counter()
            if rule.mode == "shadow":
                matches.append(RuleMatch(rule_id=rule.id, mode="shadow"))
                decisions.append(run.builder.shadow(rule, evidence))
                continue
            matches.append(RuleMatch(rule_id=rule.id, mode="enforce"))
            decisions.extend(run.builder.action(rule, action, evidence) for action in rule.actions)
            if not rule.continue_:
                break
    finally:
        run.leave()
    callid = run.builder.callid if (decisions or after) else _callid(run)
    return Evaluation(
        ruleset_version=ruleset.version,
        decisions=decisions,
        matches=matches,
        errors=errors,
        evaluated=evaluated,
        skipped=len(run.plan.rules) - len(run.rules),
        truncated=run.truncated,
        callid=None if callid is None else str(callid),
        streaks=after,
    )


def _not_bool(value: Any) -> str:
    return f"when returned {type(value).__name__} {_short(value)}, not a bool"


def _callid(run: _Run) -> Any:
    context = run.variables.get("context")
    callid = context.get("callid") if (type(context) is dict or isinstance(context, Mapping)) else None
    return callid if callid is not None else run.attributes.get("callid")


def debounced_rules(ruleset: RuleSet, event_attributes: Mapping[str, Any], data: Any = None) -> list[str]:
    """Ids of the `for:` rules whose stored streaks matter for this event (the engine loads those).

    With ``data``: a rule whose trigger facts the event lacks is left out when the
    event has windows. It is false in every window, so its streak ends; a stored
    streak it leaves behind cannot continue later, since the next event's windows
    start after this event's (a gap, see STREAK_GAP_S).
    """
    plan = ruleset.plan(str(event_attributes.get("type", "")), str(event_attributes.get("source", "")))
    rules = [r for r in plan.rules if r.debounce is not None]
    if not rules or data is None:
        return [r.id for r in rules]
    windows = data.get("windows") if type(data) is dict or isinstance(data, Mapping) else None
    if type(windows) is not list or not windows:
        return [r.id for r in rules]
    facets = data.get("facets")
    facets = facets if type(facets) is dict else {}
    facts = Facts(facets.get("emotions"), facets.get("sound_events"), data.get("caption") or "", windows)
    present = plan.present_keys(facts, data.get("context"))
    return [r.id for r in rules if not r.cannot_hold(present)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
