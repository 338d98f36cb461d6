"""A loaded, compiled rule set: what the engine evaluates and swaps atomically.

Besides the rules, a rule set builds (lazily, once per event type and source)
an evaluation plan (:mod:`services.rules.plan`): the rules that apply, the
pre-filter index of their triggers, and which variables and fields CEL must be
given. Plans and the per-thread CEL contexts are caches; the rule set itself
never changes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import cel

from services.rules.analysis import FloorTest, Loop
from services.rules.conditions import EvalContext
from services.rules.expr import Condition, DataTemplate, Template
from services.rules.plan import Plan
from services.rules.schema import ActionKind, ActionSpec, AlertSpec, ForSpec, Mode, RuleSpec


@dataclass(frozen=True)
class CompiledAction:
    index: int  # position in the rule's actions: part of the decision id
    spec: ActionSpec
    summary: Template | None = None  # alerts only
    description: Template | None = None  # alerts only
    labels: tuple[tuple[str, Template], ...] = ()  # alerts only, sorted by name
    data: DataTemplate | None = None  # emit only
    #: spec.spec (the route/alert/tag/emit model), read once: a pydantic property per decision otherwise.
    inner: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inner", self.spec.spec)

    @property
    def kind(self) -> ActionKind:
        return self.spec.kind

    @property
    def alert(self) -> AlertSpec:
        assert self.spec.alert is not None, f"action {self.index} is a {self.kind}"
        return self.spec.alert


@dataclass(frozen=True)
class CompiledRule:
    spec: RuleSpec
    path: Path
    position: int  # index in its file: the tie-breaker after priority and file
    condition: Condition = field(repr=False, compare=False)
    actions: tuple[CompiledAction, ...]
    owner: str
    # Plain copies of what evaluation reads per event (pydantic attribute access is slow).
    id: str = field(init=False)
    mode: Mode = field(init=False)
    continue_: bool = field(init=False)
    program: cel.Program = field(init=False, repr=False, compare=False)
    debounce: ForSpec | None = field(init=False, repr=False, compare=False)
    debounce_s: float | None = field(init=False, repr=False, compare=False)
    variables: frozenset[str] = field(init=False, repr=False, compare=False)
    trigger: frozenset[str] | None = field(init=False, repr=False, compare=False)
    #: Whether a template of the rule quotes ``{{ match.* }}`` (then a match without
    #: helper evidence looks for the window where the condition holds).
    quotes_match: bool = field(init=False, repr=False, compare=False)
    #: cannot_hold()'s view of the trigger: its keys, and their "<kind>:*" keys; None when it never applies.
    _holds_on: tuple[frozenset[str], frozenset[str]] | None = field(init=False, repr=False, compare=False)
    #: The necessary triggers besides ``trigger`` (one per other top-level conjunct), as
    #: (keys, their "<kind>:*" keys): the pre-filter drops a candidate when one is absent.
    also_requires: tuple[tuple[frozenset[str], frozenset[str]], ...] = field(init=False, repr=False, compare=False)
    #: ``{{ rule.* }}`` of the templates (read-only there), built once.
    template_view: dict[str, Any] = field(init=False, repr=False, compare=False)
    #: Necessary facet floors (see analysis.FloorTest): the pre-filter proves a rule false without them.
    floors: tuple[FloorTest, ...] = field(init=False, repr=False, compare=False)
    #: The condition's comprehensions (analysis.Loop): their steps on an event are counted first.
    loops: tuple[Loop, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "id", self.spec.id)
        put(self, "mode", self.spec.mode)
        put(self, "continue_", self.spec.continue_)
        put(self, "program", self.condition.program)
        put(self, "debounce", self.spec.for_)
        put(self, "debounce_s", self.spec.for_.seconds if self.spec.for_ is not None else None)
        put(self, "variables", self.condition.analysis.variables)
        put(self, "trigger", self.condition.analysis.trigger)
        put(self, "floors", self.condition.analysis.floors)
        put(self, "loops", self.condition.analysis.loops)
        put(self, "quotes_match", any(_quotes_match(a) for a in self.actions))
        trigger = self.trigger
        put(
            self,
            "_holds_on",
            None
            if trigger is None or any(key.startswith("word:") for key in trigger)
            else (trigger, frozenset(f"{key.split(':', 1)[0]}:*" for key in trigger)),
        )

        put(
            self,
            "also_requires",
            tuple(
                (keys, frozenset(f"{key.split(':', 1)[0]}:*" for key in keys))
                for keys in self.condition.analysis.requires
                if keys != trigger
            ),
        )

        put(
            self,
            "template_view",
            {"id": self.spec.id, "owner": self.owner, "description": self.spec.description, "priority": self.spec.priority},
        )

    def requirements_met(self, present: frozenset[str]) -> bool:
        """Whether each of ``also_requires`` has a key (or its kind's ``*``) in ``present``."""
        for keys, any_of_kind in self.also_requires:
            if keys.isdisjoint(present) and any_of_kind.isdisjoint(present):
                return False
        return True

    def applies(self, event_type: str, source: str) -> bool:
        match = self.spec.match
        return any(fnmatchcase(event_type, p) for p in match.types) and any(fnmatchcase(source, p) for p in match.sources)

    def cannot_hold(self, present: frozenset[str]) -> bool:
        """True when the rule's trigger facts are absent from the event, so it is false in
        every window too (a window's facets are a subset of the event's; its caption is not,
        so word triggers do not count here)."""
        holds_on = self._holds_on
        if holds_on is None:
            return False
        return holds_on[0].isdisjoint(present) and holds_on[1].isdisjoint(present)


def _quotes_match(action: CompiledAction) -> bool:
    templates = [action.summary, action.description, *(t for _, t in action.labels)]
    if any(t is not None and any(p[0] == "match" for p in t.paths) for t in templates):
        return True
    return action.data is not None and _data_quotes_match(action.data.value)


def _data_quotes_match(value: Any) -> bool:
    if isinstance(value, Template):
        return any(p[0] == "match" for p in value.paths)
    if isinstance(value, dict):
        return any(_data_quotes_match(v) for v in value.values())
    if isinstance(value, list):
        return any(_data_quotes_match(v) for v in value)
    return False


@dataclass(frozen=True)
class RuleSet:
    #: Short sha256 over the file names and contents: stamped on every decision
    #: so an output can be traced to the exact rules that produced it.
    version: str
    #: In evaluation order: priority, then file name, then position in the file.
    rules: tuple[CompiledRule, ...]
    files: tuple[Path, ...]
    #: File name -> text, as loaded: what a replica keeps as its last good rules.
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    _plans: dict[tuple[str, str], Plan] = field(default_factory=dict, repr=False, compare=False)
    _local: threading.local = field(default_factory=threading.local, repr=False, compare=False)

    def rule(self, rule_id: str) -> CompiledRule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def plan(self, event_type: str, source: str) -> Plan:
        key = (event_type, source)
        plan = self._plans.get(key)
        if plan is None:
            plan = Plan.build(r for r in self.rules if r.mode != "disabled" and r.applies(event_type, source))
            if len(self._plans) > 4096:  # sources may vary per caller: keep the cache bounded
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def context(self) -> EvalContext:
        """This thread's CEL context (the library's contexts are not shared across threads)."""
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = self._local.ctx = EvalContext()
        return ctx
