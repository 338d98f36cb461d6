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

Speed (see bench/rules.py): conditions inside the native subset run as generated
Python code on the event's own dicts and lists (:mod:`services.rules.codegen`,
:mod:`services.rules.native`),
when the values the candidate rules read are plain JSON; the rest use the
``cel`` library: one CEL context per rule set and thread with the stdlib and
helpers registered once, and per event only the variables, and of them only
the fields, that those rules read are converted into CEL (only when some rule
needs the library). A pre-filter skips rules whose trigger facts (emotion or
sound labels graded by the rule's floor, caption words, context values) the
event lacks, and `for:` rules whose floor no facet item reaches (their streak
ends without walking the call; see :meth:`_Run.may_hold`). Skipping never hides
an error: an item that cannot be compared makes the rule run.

Guardrails, since the CEL library has no cost limits: captions and the lists
of facets and windows are capped before evaluation (recorded in
``Evaluation.truncated``), a rule slower than ``max_rule_ms`` is an error, and
rules not evaluated within the event's ``max_event_ms`` are errors too (both
measured as CPU time of the evaluating thread, so a busy host does not turn
into rule errors).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

from .decisions import DEFAULT_PREFIX, Decision, DecisionBuilder, check_prefix
from .expr import runtime_message
from .helpers import FACET_LIST, GRADED_FIELD, Facts, clock, item_evidence
from .analysis import FloorTest, ItemFields
from .native import plain_values
from .ruleset import CompiledRule, EvalContext, RuleSet, Segment, item_keys
from .slots import Slot, by_slot, highest_by_slot, slots_of, window_index, window_slots

# Attributes that are the event's payload, not its metadata: exposed as `data`.
_PAYLOAD_ATTRIBUTES = ("data", "data_base64")
#: The facet lists capped to Limits.max_list_items.
_CAPPED_FACETS = ("emotions", "sound_events", "languages")
#: Windows further apart than this (seconds) break a debounce streak.
STREAK_GAP_S = 1.0


@dataclass(frozen=True)
class Limits:
    max_caption_chars: int = 100_000
    max_list_items: int = 1_000
    max_rule_ms: float = 250.0
    max_event_ms: float = 2_000.0


DEFAULT_LIMITS = Limits()


class RuleMatch(NamedTuple):
    rule_id: str
    mode: Literal["enforce", "shadow"]


class RuleError(NamedTuple):
    """A rule that could not be evaluated for this event (a record, not an exception)."""

    rule_id: str
    message: str


@dataclass(frozen=True, slots=True)
class Streak:
    """Debounce state of one rule on one call (one of no windows is the same as none)."""

    windows: int = 0  # consecutive slots the condition held in
    since_s: float | None = None  # call time the streak began
    last_end_s: float | None = None  # end of the last slot evaluated
    evidence: dict[str, Any] = field(default_factory=dict)  # what the first slot of the streak matched

    def to_json(self) -> dict[str, Any]:
        return {"windows": self.windows, "since_s": self.since_s, "last_end_s": self.last_end_s, "evidence": dict(self.evidence)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Streak:
        return cls(
            windows=int(value.get("windows", 0)),
            since_s=value.get("since_s"),
            last_end_s=value.get("last_end_s"),
            evidence=dict(value.get("evidence") or {}),
        )


#: The streak of a rule that did not hold (no windows): shared, since a Streak never changes.
NO_STREAK = Streak()


@dataclass(slots=True)
class Evaluation:
    """What evaluate() found for one event (read-only by convention: a frozen dataclass costs
    a microsecond more per event to build)."""

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
    get = payload.get
    facets, acoustics, context, caption = get("facets"), get("acoustics"), get("context"), get("caption")
    return {
        "event": _metadata(event_attributes),
        "data": data if data is not None else {},
        "facets": facets if facets is not None else {},
        "acoustics": acoustics if acoustics is not None else {},
        "context": context if context is not None else {},
        "caption": caption if caption is not None else "",
    }


def _metadata(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes without the payload (``event`` in conditions)."""
    metadata = dict(attributes)
    for name in _PAYLOAD_ATTRIBUTES:
        if name in metadata:
            del metadata[name]
    return metadata


def applies(rule: CompiledRule, event_type: str, source: str) -> bool:
    return rule.applies(event_type, source)


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


def _project(value: Any, fields: frozenset[str] | None, name: str, item_fields: ItemFields) -> Any:
    """``value`` (variable ``name``) cut to the ``fields`` read, and lists of ``item_fields`` to their items' fields."""
    if fields is None or not (type(value) is dict or isinstance(value, Mapping)):
        return value
    out = {k: value[k] for k in fields if k in value}
    for key in fields:
        read = item_fields.get((name, key))
        if read is not None and type(out.get(key)) is list:
            out[key] = [{f: item[f] for f in read if f in item} if type(item) is dict else item for item in out[key]]
    return out


def _plain_fields(items: list[Any], read: frozenset[str]) -> bool:
    """plain_values() of what _project() keeps of ``items``: the ``read`` fields of each map."""
    for item in items:
        if type(item) is dict:
            for f in read:
                if f in item:
                    v = item[f]
                    if type(v) is not float and not (type(v) is str and v.isascii()) and not plain_values(v):
                        return False
        elif not plain_values(item):
            return False
    return True


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

    __slots__ = (
        "ruleset", "attributes", "prefix", "limits", "data", "truncated", "variables", "windows", "facts",
        "plan", "present", "candidates", "rules", "needed", "prefiltered", "ctx", "context_error",
        "allow_native", "native", "_builder", "_slots", "_views", "_slot_keys", "_slot_items", "_changed",
        "_cel_ready", "_slot_facts", "_slot_highest", "_where",
    )  # fmt: skip

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
            self.candidates = self.plan.subset(range(len(self.plan.rules)))
        self.rules, self.needed = self.candidates.rules, self.candidates.variables
        self._builder: DecisionBuilder | None = None
        self._slots: list[Slot] | None = None
        self._views: dict[int, tuple[Any, Facts, dict[str, Any]]] | None = None
        self._slot_keys: list[frozenset[str]] | None = None
        self._slot_items: dict[str, list[Any]] | None = None
        self._slot_facts: list[Facts | None] | None = None
        self._slot_highest: dict[tuple[str, str | None, frozenset[str]], list[float]] | None = None
        self._where: dict[Any, tuple[int, ...]] | None = None
        self.prefiltered = prefilter
        self._changed: set[str] = set()
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
        self._cel_ready = False
        self.native = self.allow_native and self._plain()
        if not self.native or self.candidates.needs_library:
            self.ctx = self.ruleset.context()
            self.ctx.current.facts = self.facts
            self.cel_context()

    def _plain(self) -> bool:
        """Whether every value the candidate rules may read is plain JSON. Otherwise the
        library evaluates every rule of the event: it owns the conversion, and the error
        "event cannot be given to CEL" that fails every rule, as without native programs."""
        projections, item_fields = self.plan.projections, self.plan.item_fields
        for name in self.needed:
            value = self.variables[name]
            fields = projections.get(name)
            if fields is None or type(value) is not dict:
                if not plain_values(value):
                    return False
            else:
                for key in fields:
                    if key in value:
                        field = value[key]
                        # A double (most fields rules read) is plain: no call to say so.
                        if type(field) is float:
                            continue
                        read = item_fields.get((name, key)) if type(field) is list else None
                        if read is None:
                            if not plain_values(field):
                                return False
                        elif not _plain_fields(field, read):
                            return False
        return True

    def cel_context(self) -> None:
        """Give the candidate rules' variables to this thread's CEL context (once per event)."""
        assert self.ctx is not None
        if self._cel_ready:
            return
        self._cel_ready = True
        try:
            self.ctx.context.update({name: self.given(name, self.variables[name]) for name in self.needed})
        except Exception as exc:  # noqa: BLE001 -- a value CEL cannot represent: every rule fails, visibly
            self.context_error = f"event cannot be given to CEL: {runtime_message(exc)}"

    def given(self, name: str, value: Any) -> Any:
        """What the library is given of variable ``name``: the fields the rules read, and of
        lists whose items they read only fields of, those fields of each item."""
        return _project(value, self.plan.projections.get(name), name, self.plan.item_fields)

    def leave(self) -> None:
        if self.ctx is not None:
            self.ctx.current.facts = None

    def execute(self, rule: CompiledRule) -> tuple[Any, str | None]:
        """(result, None) or (None, error message)."""
        self.facts.evidence.clear()
        native = rule.native if self.native else None
        try:
            if native is not None:
                result = native(self.variables, self.facts)
            else:
                assert self.ctx is not None, "the library's context is set up by enter()"
                result = rule.program.execute(self.ctx.context)
        except Exception as exc:  # noqa: BLE001 -- the library raises KeyError, TypeError, RuntimeError...: all are rule errors
            return None, runtime_message(exc)
        if not isinstance(result, bool):
            return None, _not_bool(result)
        return result, None

    def slot_items(self) -> dict[str, list[Any]]:
        """Per facet list ("emotions", "sound_events"), the items of each slot (built once per event)."""
        if self._slot_items is None:
            facets = self.variables["facets"]
            is_map = type(facets) is dict or isinstance(facets, Mapping)
            slots = self.slots
            where = self.window_index()
            self._slot_items = {
                name: by_slot(facets.get(name) if is_map else None, slots, where) for name in ("emotions", "sound_events")
            }
        return self._slot_items

    def slot_facts(self, index: int) -> Facts:
        """The helper facts of one slot: its own facets and caption (built once per event and slot)."""
        if self._slot_facts is None:
            self._slot_facts = [None] * len(self.slots)
        facts = self._slot_facts[index]
        if facts is None:
            slot, facets = self.slots[index], self.variables["facets"]
            if type(facets) is dict or isinstance(facets, Mapping):
                items = self.slot_items()
                emotions, sounds = facets.get("emotions"), facets.get("sound_events")
                facts = Facts(
                    items["emotions"][index] if type(emotions) is list else emotions,
                    items["sound_events"][index] if type(sounds) is list else sounds,
                    slot.caption,
                    slot.windows,
                )
            else:
                facts = Facts(None, None, slot.caption, slot.windows)
            self._slot_facts[index] = facts
        return facts

    def slot_highest(self, test: FloorTest) -> list[float]:
        """Per slot, what slot_facts(i).highest() gives for ``test`` (in one pass over the
        event's items, without building the slots' facts; once per event and test)."""
        key = (test.kind, test.role, test.labels)
        if self._slot_highest is None:
            self._slot_highest = {}
        found = self._slot_highest.get(key)
        if found is None:
            found = self._slot_highest[key] = highest_by_slot(
                self.facet_items(test.kind), GRADED_FIELD[test.kind], test.role, test.labels, self.slots, self.window_index()
            )
        return found

    def facet_items(self, kind: str) -> Any:
        """The event's facet list of ``kind`` ("emotion", "sound"), as it is (None: no facets map)."""
        facets = self.variables["facets"]
        return facets.get(FACET_LIST[kind]) if type(facets) is dict or isinstance(facets, Mapping) else None

    def first_reaching(self, test: FloorTest, index: int) -> dict[str, Any]:
        """What emotion() or sound() records in slot ``index`` for ``test`` (its first item that
        reaches the floor, in the slot's order), without building the slot's facts. Only for a
        slot whose slot_highest() is finite: its items of ``test`` are maps with doubles."""
        field, slots, where, labels, role = GRADED_FIELD[test.kind], self.slots, self.window_index(), test.labels, test.role
        for item in self.facet_items(test.kind):
            if type(item) is not dict:
                continue  # (not in this slot: its highest would be +inf)
            label = item.get("label")
            if type(label) is not str or label not in labels or (role is not None and item.get("role") != role):
                continue
            if index in slots_of(item, slots, where):
                value = item.get(field)
                if value >= test.floor:
                    return item_evidence(item, test.kind, field, value)
        raise AssertionError("first_reaching() on a slot no item reaches")  # pragma: no cover

    def window_index(self) -> dict[Any, tuple[int, ...]]:
        """Window index -> the slots that hold it (once per event)."""
        if self._where is None:
            self._where = window_index(self.slots)
        return self._where

    def slot_view(self, index: int) -> tuple[Any, Facts, dict[str, Any]]:
        """The facets, helper facts and native variables of one slot, built once per event
        (the slot's own facets and caption; the rest is the event's)."""
        if self._views is None:
            self._views = {}
        view = self._views.get(index)
        if view is None:
            slot, facts = self.slots[index], self.slot_facts(index)
            facets = self.variables["facets"]
            if type(facets) is dict or isinstance(facets, Mapping):
                facets = dict(facets)
                for name, own in (("emotions", facts.emotions), ("sound_events", facts.sounds)):
                    if type(facets.get(name)) is list:
                        facets[name] = own
            env = {**self.variables, "facets": facets, "caption": slot.caption}
            view = self._views[index] = (facets, facts, env)
        return view

    def slot_present(self) -> list[frozenset[str]]:
        """The pre-filter keys of each slot: the event's context and word keys, and the
        trigger labels among the slot's own facets (built once per event; what
        present_keys() would give each slot's facets, without building them)."""
        if self._slot_keys is None:
            slots = self.slots
            shared = frozenset(k for k in self.present if not k.startswith(("emotion:", "sound:")))
            found: list[set[str]] = [set() for _ in slots]
            facets = self.variables["facets"]
            is_map = type(facets) is dict or isinstance(facets, Mapping)
            known = self.plan.label_keys
            where: dict[Any, tuple[int, ...]] | None = None
            for name, kind in (("emotions", "emotion"), ("sound_events", "sound")):
                if kind not in self.plan.kinds:
                    continue
                items = facets.get(name) if is_map else None
                any_key = f"{kind}:*"
                if type(items) is not list:
                    for slot_keys in found:
                        slot_keys.add(any_key)
                    continue
                for item in items:
                    keys: tuple[str, ...]
                    if type(item) is not dict:
                        keys, targets = (any_key,), range(len(slots))  # not a map: in every slot, the rules decide
                    else:
                        label = item.get("label")
                        if type(label) is not str:
                            keys = (any_key,)  # malformed: the rules decide
                        else:
                            keys = item_keys(item, label, any_key, known[any_key])
                            if not keys:
                                continue  # a label no trigger names
                        if where is None:
                            where = self.window_index()
                        targets = slots_of(item, slots, where)
                    for n in targets:
                        found[n].update(keys)
            self._slot_keys = [shared | slot_keys if slot_keys else shared for slot_keys in found]
        return self._slot_keys

    def execute_in(self, rule: CompiledRule, index: int) -> tuple[Any, str | None, dict[str, Any]]:
        """Evaluate ``rule`` on one slot of the call; :meth:`restore` puts the event-wide view back."""
        held, error = self.held_in(rule, index)
        return held, error, (self.evidence_in(index) if held else {})

    def held_in(self, rule: CompiledRule, index: int) -> tuple[Any, str | None]:
        """(True or False, None) or (None, error): ``rule`` on one slot of the call (what its
        helpers saw stays in the slot's facts until the next evaluation: evidence_in())."""
        facets, facts, env = self.slot_view(index)
        if facts.evidence:
            facts.evidence.clear()
        native = rule.native if self.native else None
        try:
            if native is not None:
                result = native(env, facts)
            else:
                assert self.ctx is not None, "the library's context is set up by enter()"
                self.ctx.current.facts = facts
                update = {}
                if "facets" in rule.variables:
                    update["facets"] = self.given("facets", facets)
                if "caption" in rule.variables:
                    update["caption"] = env["caption"]
                if update:
                    self.ctx.context.update(update)
                    self._changed.update(update)
                result = rule.program.execute(self.ctx.context)
        except Exception as exc:  # noqa: BLE001
            return None, runtime_message(exc)
        if result is True or result is False:
            return result, None
        return None, _not_bool(result)

    def evidence_in(self, index: int, seen: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What a rule that held in slot ``index`` matched: its helpers' record (``seen``, else
        what they left in the slot's facts), the slot's time and caption."""
        slot = self.slots[index]
        if seen is None:
            facts = self.slot_view(index)[1]
            seen = facts.evidence[0] if facts.evidence else {}
        evidence = dict(seen)
        if "window" not in evidence and slot.indices:
            evidence["window"] = sorted(slot.indices, key=str)[0]
        if slot.start is not None:
            evidence.setdefault("start", slot.start)
            evidence.setdefault("end", slot.end)
            evidence.setdefault("at", clock(slot.start))
        evidence.setdefault("caption", slot.caption)
        evidence.setdefault("span", slot.caption[:200])
        return evidence

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
        if self.ctx is None:
            return  # native programs only: nothing of the library's to put back
        self.ctx.current.facts = self.facts
        if self._changed:
            names = [name for name in self._changed if name in self.needed]
            if names:
                self.ctx.context.update({name: self.given(name, self.variables[name]) for name in names})
            self._changed.clear()

    def debounce(self, rule: CompiledRule, streak: Streak) -> tuple[bool, str | None, Streak, dict[str, Any]]:
        """Walk the call's slots; (fired, error, streak after, evidence). The caller checks
        may_hold() first (see _Outcome.debounce): a rule that cannot hold ends its streak
        without a walk."""
        spec = rule.debounce
        assert spec is not None
        need_windows, need_s = spec.windows, rule.debounce_s
        # The streak as locals while walking (a Streak at the end): (windows held, since, evidence).
        # `first` is None while the evidence of a streak begun in slot `first_at` is not quoted
        # yet: most streaks end before they fire or outlast the event, unquoted.
        count, since, first, first_at = streak.windows, streak.since_s, dict(streak.evidence), 0
        first_quoted: dict[str, Any]
        last_end = streak.last_end_s
        fired, evidence = False, {}
        windowed = bool(self.slots)
        slots = self.slots if windowed else [_whole_event_slot(self)]
        # What proves the rule false in a slot without running it: its floors (the highest
        # value per slot, against each floor), or else its trigger keys.
        floors = rule.floors if windowed and self.prefiltered else ()
        below: set[int] = set()
        for test in floors:
            floor = test.floor
            for i, value in enumerate(self.slot_highest(test)):
                if value < floor:
                    below.add(i)
        # A condition that is one floor holds where the slot's highest value reaches it: run
        # only where that value cannot tell (an item that cannot be compared: +inf).
        exact = rule.exact_floor if floors and self.native else None
        highest = self.slot_highest(exact) if exact is not None else None
        slot_keys = self.slot_present() if windowed and self.prefiltered and not floors else None
        cannot_hold = rule.cannot_hold
        try:
            for index, slot in enumerate(slots):
                start, end = slot.start, slot.end
                if windowed and start is not None and last_end is not None and abs(start - last_end) > STREAK_GAP_S:
                    count, since, first = 0, None, {}  # a gap in the call: the streak starts over
                if windowed:
                    if index in below:
                        held, error = False, None  # no item of the slot reaches a floor
                    elif highest is not None and highest[index] != math.inf:
                        held, error = True, None  # (not below the floor)
                    elif slot_keys is not None and cannot_hold(slot_keys[index]):
                        # Its trigger facts are absent from this slot's facets (the same proof
                        # as cannot_hold() for the whole event): false here, no need to run it.
                        held, error = False, None
                    else:
                        held, error = self.held_in(rule, index)
                else:  # events without windows follow each other
                    held, error = self.execute(rule)
                if error is not None:
                    first_quoted = self._quote_first(first, first_at, highest, exact)
                    return False, error, _streak(count, since, last_end, first_quoted), {}
                if held:
                    if count == 0:
                        # Only the first slot of a streak is quoted: its evidence, not the others'.
                        since = start
                        if windowed:
                            first, first_at = None, index
                        else:
                            first = dict(self.facts.evidence[0]) if self.facts.evidence else {}
                    count += 1
                    held_s = (end - since) if end is not None and since is not None else 0.0
                    if not fired and (
                        (need_windows is not None and count >= need_windows) or (need_s is not None and held_s >= need_s)
                    ):
                        first = self._quote_first(first, first_at, highest, exact)
                        evidence = {**first, "windows": count, "held_s": round(held_s, 3)}
                        fired = True
                else:
                    count, since, first = 0, None, {}
                last_end = end
            first_quoted = self._quote_first(first, first_at, highest, exact)
        finally:
            if windowed:
                self.restore()
        return fired, None, _streak(count, since, last_end, first_quoted), evidence

    def _quote_first(
        self, first: dict[str, Any] | None, index: int, highest: list[float] | None, exact: FloorTest | None
    ) -> dict[str, Any]:
        """``first``, or the evidence of slot ``index`` when it is not quoted yet (None)."""
        if first is not None:
            return first
        if highest is not None and highest[index] != math.inf:
            assert exact is not None
            return self.evidence_in(index, self.first_reaching(exact, index))
        return self.evidence_in(index)

    def may_hold(self, rule: CompiledRule) -> bool:
        """False when the pre-filter proves ``rule`` false on the whole event: its trigger facts
        are absent, or no facet item reaches one of its floors (then it is false in every
        window: a `for:` rule need not walk them)."""
        if rule.cannot_hold(self.present):
            return False
        if self.prefiltered:
            facts = self.facts
            for test in rule.floors:
                if facts.highest(test.kind, test.role, test.labels) < test.floor:
                    return False
        return True

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


def _streak(count: int, since: float | None, last_end: float | None, first: dict[str, Any]) -> Streak:
    # A streak of no windows is no streak: always the same empty one.
    return Streak(count, since, last_end, first) if count else NO_STREAK


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
    if prefix is not DEFAULT_PREFIX:
        check_prefix(prefix)
    run = _Run(ruleset, event_attributes, data, prefix, limits, prefilter, native)
    out = _Outcome(run, streaks or {})
    if run.rules:
        run.enter()
        clock = _Clock(limits)
        try:
            if run.native and not run.candidates.needs_library and run.context_error is None and not clock.spent:
                stop = _walk_native(run, out, clock)
            else:
                stop = _walk(run, out, clock, batch)
        finally:
            run.leave()
    else:
        stop = None
    # The `for:` rules the pre-filter proved false on the whole event, up to a stopping match.
    resets = run.candidates.resets
    if resets:
        end = len(run.plan.rules) if stop is None else run.candidates.order[stop]
        for position, rule_id in resets:
            if position > end:
                break
            out.after[rule_id] = NO_STREAK
    callid = _callid(run)
    return Evaluation(
        ruleset_version=ruleset.version,
        decisions=out.decisions,
        matches=out.matches,
        errors=out.errors,
        evaluated=out.evaluated,
        skipped=len(run.plan.rules) - len(run.rules) + out.proved_false,
        truncated=run.truncated,
        callid=None if callid is None else str(callid),
        streaks=out.after,
    )


#: _Outcome.debounce() of a rule proved false: not held, no error, no evidence (never changed).
_NOT_HELD: tuple[bool, None, dict[str, Any]] = (False, None, {})


class _Outcome:
    """What an evaluation produced so far: decisions, matches, errors, streaks."""

    __slots__ = ("after", "decisions", "errors", "evaluated", "matches", "proved_false", "run", "streaks")

    def __init__(self, run: _Run, streaks: Mapping[str, Streak]) -> None:
        self.run = run
        self.streaks = streaks
        self.decisions: list[Decision] = []
        self.matches: list[RuleMatch] = []
        self.errors: list[RuleError] = []
        self.after: dict[str, Streak] = {}
        self.evaluated = 0  # rules whose condition ran (a batch runs all its conditions)
        self.proved_false = 0  # `for:` rules the pre-filter proved false on this event (see may_hold())

    def debounce(self, rule: CompiledRule) -> tuple[bool, str | None, dict[str, Any]]:
        """Walk the call's windows for a `for:` rule (counted as evaluated unless proved false)."""
        if not self.run.may_hold(rule):
            # False in every window (its trigger facts are absent, or no item reaches its
            # floor): the streak ends here, with no windows (where it ended does not matter).
            self.proved_false += 1
            self.after[rule.id] = NO_STREAK
            return _NOT_HELD
        self.evaluated += 1
        held, error, streak, evidence = self.run.debounce(rule, self.streaks.get(rule.id) or NO_STREAK)
        self.after[rule.id] = streak
        return held, error, evidence

    def fail(self, rule: CompiledRule, message: str) -> None:
        self.errors.append(RuleError(rule_id=rule.id, message=message))
        self.decisions.append(self.run.builder.error(rule, message))

    def matched(self, rule: CompiledRule, evidence: dict[str, Any]) -> bool:
        """Record a match; whether evaluation stops here (an enforce match without ``continue``)."""
        if rule.mode == "shadow":
            self.matches.append(RuleMatch(rule.id, "shadow"))
            self.decisions.append(self.run.builder.shadow(rule, evidence))
            return False
        self.matches.append(RuleMatch(rule.id, "enforce"))
        builder, decisions = self.run.builder, self.decisions
        for action in rule.actions:  # (a loop: a comprehension is one more frame, for one or two actions)
            decisions.append(builder.action(rule, action, evidence))
        return not rule.continue_


class _Clock:
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


#: Per thread: (wall, CPU) time when the CPU time was last read (see _Clock).
_CPU_SAMPLE = threading.local()


def _walk_native(run: _Run, out: _Outcome, clock: _Clock) -> int | None:
    """The usual case: every candidate condition has a native program and the event is plain
    JSON. Returns the position of a stopping match in ``run.rules``, if one stopped."""
    facts, variables = run.facts, run.variables
    seen = facts.evidence
    started, budget_s, rule_budget_s = clock.started, clock.budget_s, clock.rule_budget_s
    last = started
    for position, rule in enumerate(run.rules):
        if last - started > budget_s and (error := clock.over_event(last)) is not None:
            out.fail(rule, error)
            continue
        evidence: dict[str, Any] | None = None
        if rule.debounce is not None:
            result, error, evidence = out.debounce(rule)
        else:
            out.evaluated += 1
            if seen:
                seen.clear()
            try:
                result = rule.native(variables, facts)  # type: ignore[misc]  # (needs_library is False)
            except Exception as exc:  # noqa: BLE001 -- as in _Run.execute()
                result, error = False, runtime_message(exc)
            else:
                error = None if result is True or result is False else _not_bool(result)
        now = time.perf_counter()
        if error is None and now - last > rule_budget_s:
            error = clock.over_rule(now - last)
        last = now
        if error is not None:
            out.fail(rule, error)
            continue
        if result is not True:
            continue
        if evidence is None:
            evidence = seen[0] if seen else {}  # the helper's own record: new for each call
            if not evidence and rule.quotes_match:
                evidence = run.window_evidence(rule)
                last = time.perf_counter()
        if out.matched(rule, evidence):
            return position
    return None


def _walk(run: _Run, out: _Outcome, clock: _Clock, batch: bool) -> int | None:
    """Any event and rules: the library for conditions without a native program (some
    in one batch), every rule on the library when the event is not plain JSON."""
    plan, rules = run.plan, run.rules
    results: list[Any] | None = None
    last = clock.started
    if batch and plan.batch is not None and run.context_error is None and not clock.spent:
        results = run.execute_batch(plan.batch)
        last = time.perf_counter()
        if results is not None and clock.over_rule(last - clock.started) is not None:
            results = None  # too slow as a whole: evaluate one by one to name the slow rule
    if results is not None:
        # Only what needs work, in order: batched conditions that are not plainly false,
        # and the rules evaluated one by one.
        candidates = run.candidates
        walk: Any = sorted(
            [candidates.in_batch[i] for i, value in enumerate(results) if value is not False] + list(candidates.alone)
        )
        out.evaluated += len(candidates.in_batch)
        batched = {pos: results[i] for i, pos in enumerate(candidates.in_batch)}
    else:
        walk, batched = range(len(rules)), {}
    for position in walk:
        rule = rules[position]
        if run.context_error is not None:
            out.fail(rule, run.context_error)
            continue
        evidence: dict[str, Any] | None = None
        if position in batched:
            value = batched[position]
            result, error = (value, None) if isinstance(value, bool) else (None, _not_bool(value))
        else:
            if (error := clock.over_event(last)) is not None:
                out.fail(rule, error)
                continue
            if rule.debounce is not None:
                result, error, evidence = out.debounce(rule)
            else:
                out.evaluated += 1
                result, error = run.execute(rule)
                evidence = dict(run.facts.evidence[0]) if result and run.facts.evidence else {}
            now = time.perf_counter()
            if error is None:
                error = clock.over_rule(now - last)
            last = now
        if error is not None:
            out.fail(rule, error)
            continue
        if not result:
            continue
        if evidence is None:  # matched inside the batch: collect what its helpers saw
            evidence = run.evidence_of(rule)
        if not evidence and rule.debounce is None and rule.quotes_match:
            evidence = run.window_evidence(rule)
            last = time.perf_counter()
        if out.matched(rule, evidence):
            return position
    return None


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
