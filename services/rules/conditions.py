"""Rule conditions run on one event by the ``cel`` library: views, projections, batches, proofs.

:mod:`services.rules.evaluate` says what rules mean and asks this module one question per
rule (and per slot of the call, for a ``for:`` rule): did the condition hold? The answer
always comes from the library; what this module adds is making it cheap enough:

- **Views.** The whole event, and each slot of the call, is a *view*: a CEL context, the
  helper facts (:class:`~services.rules.helpers.Facts`) the helpers read in it, and the
  values of the variables. A slot's view has that slot's ``facets`` and ``caption``; the rest
  is the event's. The event's view is this thread's reused context; a slot's is made when a
  rule is first evaluated in it.
- **Projections.** A view gives the library only the variables the candidate rules read,
  cut to the fields they read, and lists whose items they read only fields of are cut to
  those fields (converting a value into the library costs microseconds).
- **Batches.** The conditions of the rules evaluated for every event run in one library
  call (:class:`~services.rules.plan.Segment`); if one of them raises, each is evaluated
  alone, in its turn, so the errors stay exact.
- **Proofs.** The pre-filter (:mod:`services.rules.plan`) proves a rule false on the whole
  event or in one slot without the library: its trigger facts are absent, or no facet item
  reaches one of its floors.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import cel
import cel.stdlib

from services.dsl.cel_checks import runtime_message
from services.rules.analysis import FloorTest, ItemFields
from services.rules.fields import rule_variables
from services.rules.helpers import FACET_LIST, GRADED_FIELD, Facts, clock
from services.rules.limits import Budget, Limits, cap_input, comprehension_steps
from services.rules.plan import Candidates, Plan, slot_keys
from services.rules.slots import Slot, by_slot, highest_by_slot, window_index, window_slots

if TYPE_CHECKING:
    from services.rules.ruleset import CompiledRule, RuleSet

#: (held, error): ``(True or False, None)``, or ``(None, why the condition failed)``.
Verdict = tuple[bool | None, str | None]


class _Current:
    """What the helper functions of a CEL context read: the facts of the view being evaluated."""

    __slots__ = ("facts",)

    def __init__(self) -> None:
        self.facts: Facts | None = None

    def get(self) -> Facts:
        assert self.facts is not None, "helper called outside an evaluation"
        return self.facts


class EvalContext:
    """A CEL context with the stdlib and the rule helpers registered once; variables change per view."""

    __slots__ = ("context", "current")

    def __init__(self) -> None:
        self.context = cel.Context({})
        cel.stdlib.add_stdlib_to_context(self.context)
        current = self.current = _Current()
        self.context.add_function("emotion", lambda role, labels, floor: current.get().emotion(role, labels, floor))
        self.context.add_function("sound", lambda labels, floor: current.get().sound(labels, floor))
        self.context.add_function("any_words", lambda text, words: current.get().any_words(text, words))
        self.context.add_function("all_words", lambda text, words: current.get().all_words(text, words))


class _View:
    """The event, or one slot of it, as one CEL context sees it."""

    __slots__ = ("ctx", "facts", "loaded", "values")

    def __init__(self, ctx: EvalContext, facts: Facts, values: Mapping[str, Any]) -> None:
        self.ctx, self.facts, self.values = ctx, facts, values
        self.loaded: set[str] = set()

    def load(self, names: Collection[str], given: Any) -> None:
        """Give the library ``names`` (those not given yet); raises what the library raises
        for a value it cannot take. ``given(name, value)``: what it is given of a value."""
        todo = [name for name in names if name not in self.loaded]
        if todo:
            self.ctx.context.update({name: given(name, self.values[name]) for name in todo})
            self.loaded.update(todo)

    def execute(self, program: cel.Program) -> Any:
        """Run ``program`` here; what its helpers record is in ``facts.evidence`` afterwards."""
        self.ctx.current.facts = self.facts
        if self.facts.evidence:
            self.facts.evidence.clear()
        return program.execute(self.ctx.context)


def verdict_of(value: Any) -> Verdict:
    """A condition's value as a verdict: a bool, or the error of anything else."""
    if value is True or value is False:
        return value, None
    text = repr(value)
    return None, f"when returned {type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}, not a bool"


class EventRun:
    """One event's evaluation as the library runs it: its views, candidates and batch.

    ``prefilter=False`` makes every applicable rule a candidate and proves nothing: the
    reference the pre-filter is tested against, and what ``rules explain`` uses.
    """

    def __init__(
        self, ruleset: RuleSet, attributes: Mapping[str, Any], data: Any, limits: Limits, *, prefilter: bool = True
    ) -> None:
        self.ruleset = ruleset
        self.attributes = attributes
        self.limits = limits
        self.data, self.truncated = cap_input(data, limits)
        self.variables = rule_variables(attributes, self.data)
        facets = self.variables["facets"]
        self._facets = facets if (type(facets) is dict or isinstance(facets, Mapping)) else None
        windows = self.data.get("windows") if (type(self.data) is dict or isinstance(self.data, Mapping)) else None
        self.windows: list[Any] = windows if type(windows) is list else []
        facets_map = self._facets or {}
        self.facts = Facts(facets_map.get("emotions"), facets_map.get("sound_events"), self.variables["caption"], self.windows)
        self.plan: Plan = ruleset.plan(str(attributes.get("type", "")), str(attributes.get("source", "")))
        self.prefiltered = prefilter
        if prefilter:
            self.present = self.plan.present_keys(self.facts, self.variables["context"])
            self.candidates: Candidates = self.plan.candidates(self.present)
        else:
            # Every key "present": nothing is skipped, not even in a `for:` rule's windows.
            self.present = frozenset(f"{kind}:*" for kind in ("emotion", "sound", "word", *self.plan.context_kinds))
            self.candidates = self.plan.subset(range(len(self.plan.rules)))
        #: The candidate rules, in evaluation order.
        self.rules = self.candidates.rules
        #: Positions in :attr:`rules` of the rules proved false on the whole event: no facet item
        #: reaches one of their floors (then they are false in every slot too).
        self.proved_false = self._below_a_floor() if prefilter else frozenset()
        #: What the rules left to evaluate read: all the library is given of the event.
        self.needed = self.candidates.variables
        if self.proved_false:
            left = (rule for i, rule in enumerate(self.rules) if i not in self.proved_false)
            self.needed = frozenset().union(*(rule.variables for rule in left))
        #: Why no rule can be evaluated on this event (a value the library cannot take), once started.
        self.context_error: str | None = None
        self._event: _View | None = None
        self._slots: list[Slot] | None = None
        self._slot_views: dict[int, _View] = {}
        self._where: dict[Any, tuple[int, ...]] | None = None
        self._slot_items: dict[str, list[Any]] | None = None
        self._slot_highest: dict[tuple[str, str | None, frozenset[str]], list[float]] = {}
        self._slot_keys: list[frozenset[str]] | None = None

    # --- the event's view --------------------------------------------------------------

    def start(self) -> None:
        """Give the library what the candidate rules read. A value it cannot take fails
        every rule of the event, visibly (:attr:`context_error`)."""
        ctx = self.ruleset.context()
        self._event = _View(ctx, self.facts, self.variables)
        try:
            self._event.load(self.needed, self._given)
        except Exception as exc:  # noqa: BLE001 -- the library raises several unrelated types
            self.context_error = f"event cannot be given to CEL: {runtime_message(exc)}"

    def finish(self) -> None:
        if self._event is not None:
            self._event.ctx.current.facts = None  # the thread's context keeps no event alive

    def held(self, rule: CompiledRule) -> Verdict:
        """The rule's condition on the whole event."""
        assert self._event is not None, "start() gives the library the event first"
        return self._run(self._event, rule)

    def evidence(self) -> dict[str, Any]:
        """What the helpers of the last held() recorded (a new dict)."""
        return dict(self.facts.evidence[0]) if self.facts.evidence else {}

    def batch(self, budget: Budget) -> dict[int, Verdict] | None:
        """The verdicts of the plan's batch by position in :attr:`rules`, in one library
        call; None when there is no batch, one condition raised, or the call was too slow
        (then each is evaluated alone, which names the failing or slow rule)."""
        segment = self.plan.batch
        if segment is None or self.context_error is not None or budget.spent:
            return None
        assert self._event is not None, "start() gives the library the event first"
        if any(self._too_costly(self._event, rule) for rule in segment.rules if rule.loops):
            return None  # evaluated alone, the costly one is an error
        try:
            values = self._event.execute(segment.program)
        except Exception:  # noqa: BLE001 -- some condition failed: evaluated alone, its error is exact
            return None
        if not isinstance(values, list) or len(values) != len(segment.rules):
            return None
        if budget.over_rule(time.perf_counter() - budget.started) is not None:
            return None
        return {position: verdict_of(value) for position, value in zip(self.candidates.in_batch, values, strict=True)}

    def evidence_of(self, rule: CompiledRule) -> dict[str, Any]:
        """What a rule that held inside a batch matched: its helpers' record, evaluated alone."""
        if not rule.condition.analysis.helpers:
            return {}
        held, _ = self.held(rule)
        return self.evidence() if held else {}

    def _below_a_floor(self) -> frozenset[int]:
        """The candidates one of whose floors (label, role, threshold: a conjunct the condition
        needs) no facet item of the event reaches. An item that cannot be compared counts as
        reaching every floor (``Facts.highest`` is +inf), so the rule runs and fails visibly."""
        highest = self.facts.highest
        return frozenset(
            i for i, floors in self.candidates.floored if any(highest(t.kind, t.role, t.labels) < t.floor for t in floors)
        )

    def event_time(self) -> float | None:
        """The event's ``time`` in seconds (what a `for:` rule counts over events without windows)."""
        value = self.attributes.get("time")
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return None
        return None

    # --- the slots of a call ------------------------------------------------------------

    @property
    def slots(self) -> list[Slot]:
        """The call's windows grouped by time span; [] when the event has none."""
        if self._slots is None:
            self._slots = window_slots(self.data)
        return self._slots

    def held_in(self, rule: CompiledRule, index: int) -> Verdict:
        """The rule's condition in slot ``index`` (false without the library where the
        pre-filter proves it)."""
        if self.prefiltered and index in self._proved_false(rule):
            return False, None
        return self.held_in_alone(rule, index)

    def held_in_alone(self, rule: CompiledRule, index: int) -> Verdict:
        """The rule's condition in slot ``index``, always from the library."""
        view = self._slot_view(index)
        try:
            view.load(rule.variables, self._given)
        except Exception as exc:  # noqa: BLE001 -- as in _run()
            return None, runtime_message(exc)
        return self._run(view, rule)

    def evidence_in(self, index: int) -> dict[str, Any]:
        """What a rule that held in slot ``index`` matched: its helpers' record, the slot's
        time and caption."""
        slot = self.slots[index]
        view = self._slot_views.get(index)
        seen = view.facts.evidence if view is not None else []
        evidence = dict(seen[0]) if seen else {}
        if "window" not in evidence and slot.indices:
            evidence["window"] = sorted(slot.indices, key=str)[0]
        if slot.start is not None:
            evidence.setdefault("start", slot.start)
            evidence.setdefault("end", slot.end)
            evidence.setdefault("at", clock(slot.start))
        evidence.setdefault("caption", slot.caption)
        evidence.setdefault("span", slot.caption[:200])
        return evidence

    def window_evidence(self, rule: CompiledRule) -> dict[str, Any]:
        """For a match without helper evidence: the first slot where the condition holds."""
        if len(self.slots) < 2 or not ({"facets", "caption"} & rule.variables):
            return {}
        for index in range(len(self.slots)):
            held, error = self.held_in_alone(rule, index)
            if held and error is None:
                return self.evidence_in(index)
        return {}

    def _slot_view(self, index: int) -> _View:
        view = self._slot_views.get(index)
        if view is None:
            slot = self.slots[index]
            facets = self._facets
            if facets is None:
                facts = Facts(None, None, slot.caption, slot.windows)
                values = {**self.variables, "caption": slot.caption}
            else:
                items = self._items_by_slot()
                own = {
                    name: items[name][index] for name in ("emotions", "sound_events") if type(facets.get(name)) is list
                }
                facts = Facts(
                    own.get("emotions", facets.get("emotions")),
                    own.get("sound_events", facets.get("sound_events")),
                    slot.caption,
                    slot.windows,
                )
                values = {**self.variables, "facets": {**facets, **own}, "caption": slot.caption}
            view = self._slot_views[index] = _View(EvalContext(), facts, values)
        return view

    def _items_by_slot(self) -> dict[str, list[Any]]:
        """Per facet list ("emotions", "sound_events"), the items of each slot."""
        if self._slot_items is None:
            facets = self._facets or {}
            where = self._window_index()
            self._slot_items = {name: by_slot(facets.get(name), self.slots, where) for name in ("emotions", "sound_events")}
        return self._slot_items

    def _window_index(self) -> dict[Any, tuple[int, ...]]:
        """Window index -> the slots that hold it."""
        if self._where is None:
            self._where = window_index(self.slots)
        return self._where

    def _proved_false(self, rule: CompiledRule) -> set[int]:
        """The slots where the pre-filter proves ``rule`` false: no item of the slot reaches one
        of its floors, or (a rule without floors) its trigger facts are absent from the slot."""
        if rule.floors:
            below: set[int] = set()
            for test in rule.floors:
                below.update(i for i, value in enumerate(self._highest_by_slot(test)) if value < test.floor)
            return below
        if self._slot_keys is None:
            self._slot_keys = slot_keys(self.plan, self.present, self._facets, self.slots, self._window_index())
        return {i for i, keys in enumerate(self._slot_keys) if rule.cannot_hold(keys)}

    def _highest_by_slot(self, test: FloorTest) -> list[float]:
        key = (test.kind, test.role, test.labels)
        found = self._slot_highest.get(key)
        if found is None:
            items = self._facets.get(FACET_LIST[test.kind]) if self._facets is not None else None
            found = self._slot_highest[key] = highest_by_slot(
                items, GRADED_FIELD[test.kind], test.role, test.labels, self.slots, self._window_index()
            )
        return found

    # --- running a condition ---------------------------------------------------------------

    def _run(self, view: _View, rule: CompiledRule) -> Verdict:
        if rule.loops and (steps := self._too_costly(view, rule)):
            return None, (
                f"not evaluated: its comprehensions would take about {steps:,} steps on this event, "
                f"over the limit of {self.limits.max_rule_iterations:,}"
            )
        try:
            value = view.execute(rule.program)
        except Exception as exc:  # noqa: BLE001 -- the library raises KeyError, TypeError, RuntimeError...: all are rule errors
            return None, runtime_message(exc)
        return verdict_of(value)

    def _too_costly(self, view: _View, rule: CompiledRule) -> int:
        """The steps of the rule's comprehensions on this view when over the limit, else 0: the
        library cannot be interrupted once it runs, so a rule that would hold the engine for
        seconds is refused before it starts."""
        steps = comprehension_steps(rule.loops, view.values, self.limits.max_list_items)
        return steps if steps > self.limits.max_rule_iterations else 0

    # --- what the library is given ---------------------------------------------------------

    def _given(self, name: str, value: Any) -> Any:
        """What the library is given of variable ``name``: the fields the rules read, and of
        lists whose items they read only fields of, those fields of each item."""
        return _project(value, self.plan.projections.get(name), name, self.plan.item_fields)


def _project(value: Any, fields: Iterable[str] | None, name: str, item_fields: ItemFields) -> Any:
    """``value`` (variable ``name``) cut to the ``fields`` read, and lists of ``item_fields`` to their items' fields."""
    if fields is None or not (type(value) is dict or isinstance(value, Mapping)):
        return value
    out = {k: value[k] for k in fields if k in value}
    for key in fields:
        read = item_fields.get((name, key))
        if read is not None and type(out.get(key)) is list:
            out[key] = [{f: item[f] for f in read if f in item} if type(item) is dict else item for item in out[key]]
    return out
