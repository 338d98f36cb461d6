"""A loaded, compiled rule set: what the engine evaluates and swaps atomically.

Besides the rules, a rule set builds (lazily, once per event type and source)
an evaluation *plan*: the rules that apply, the pre-filter index of their
triggers, and which variables and fields CEL must be given. Plans and the
per-thread CEL contexts are caches; the rule set itself never changes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import cel
import cel.stdlib

from .analysis import FloorTest, Projection
from .expr import Condition, DataTemplate, Template
from .helpers import GRADED_FIELD, Facts
from .native import NativeProgram
from .schema import ActionKind, ActionSpec, AlertSpec, ForSpec, Mode, RuleSpec


#: A kind's trigger keys by label: (its plain keys, ((grade, the keys of an item reaching that grade), ...) ascending).
LabelKeys = Mapping[str, tuple[tuple[str, ...], tuple[tuple[float, tuple[str, ...]], ...]]]


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
    #: The condition as Python code (None: the library evaluates it), see services.rules.native and .codegen.
    native: NativeProgram | None = field(init=False, repr=False, compare=False)
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
    #: Necessary facet floors (see analysis.FloorTest): `for:` rules check them before walking a call.
    floors: tuple[FloorTest, ...] = field(init=False, repr=False, compare=False)
    #: The floor the whole condition is (analysis.Analysis.exact): a `for:` walk reads it per
    #: window instead of running the condition, except where it quotes what matched.
    exact_floor: FloorTest | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "id", self.spec.id)
        put(self, "mode", self.spec.mode)
        put(self, "continue_", self.spec.continue_)
        put(self, "program", self.condition.program)
        put(self, "native", self.condition.native)
        put(self, "debounce", self.spec.for_)
        put(self, "debounce_s", self.spec.for_.seconds if self.spec.for_ is not None else None)
        put(self, "variables", self.condition.analysis.variables)
        put(self, "trigger", self.condition.analysis.trigger)
        put(self, "floors", self.condition.analysis.floors)
        put(self, "exact_floor", self.condition.analysis.exact if self.native is not None else None)
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


_KINDS = ("emotion", "sound", "word")


@dataclass(frozen=True)
class Plan:
    """How to evaluate one (event type, source): built once, reused for every such event."""

    rules: tuple[CompiledRule, ...]  # applicable, not disabled, in evaluation order
    always: frozenset[int]  # positions in `rules` without a trigger
    by_key: Mapping[str, frozenset[int]]  # "emotion:anger" -> positions
    by_kind: Mapping[str, frozenset[int]]  # "emotion" -> every position with an emotion key
    words: tuple[str, ...]  # the trigger words, looked for in a caption
    projections: Mapping[str, Projection]  # union over the rules
    #: Lists whose items the rules read only some fields of (analysis.ItemFields), over the rules.
    item_fields: Mapping[tuple[str, str], frozenset[str]]
    universe: frozenset[str]  # every trigger key of the rules (`for:` rules' too)
    kinds: frozenset[str]  # the kinds of those keys
    context_kinds: tuple[str, ...] = ()  # "context.<field>" kinds
    _candidates: dict[frozenset[str], Candidates] = field(default_factory=dict, repr=False, compare=False)
    #: The rules without a trigger (evaluated for every event) that have no native program, as one CEL program.
    batch: Segment | None = None
    batch_index: Mapping[str, int] = field(default_factory=dict)
    #: "emotion:*" -> "anger" -> the keys of that label in `universe`: the plain one, and per
    #: grade the keys an item reaching it has, e.g.
    #: (("emotion:anger",), ((0.5, ("emotion:anger", "emotion:anger@0.5")),)).
    #: present_keys() builds only those: no other label's key can make a rule a candidate.
    label_keys: Mapping[str, LabelKeys] = field(default_factory=dict)
    #: The same for context values: ("context.queue", "billing") -> "context.queue:billing".
    context_keys: Mapping[tuple[str, str], str] = field(default_factory=dict)
    #: (kind, field of `context`, "<kind>:*") per context kind, and ("word", "word:<word>") per word.
    context_fields: tuple[tuple[str, str, str], ...] = ()
    #: (word, its key, the key of a shorter trigger word inside it or None), shortest first:
    #: "cancellation" is looked for only where "cancel" was found.
    word_keys: tuple[tuple[str, str, str | None], ...] = ()

    @classmethod
    def build(cls, rules: Iterable[CompiledRule]) -> Plan:
        ordered = tuple(rules)
        always: set[int] = set()
        by_key: dict[str, set[int]] = {}
        by_kind: dict[str, set[int]] = {}
        projections: dict[str, Projection] = {}
        item_fields: dict[tuple[str, str], set[str] | None] = {}
        universe: set[str] = set()
        for i, rule in enumerate(ordered):
            universe |= rule.trigger or frozenset()
            for keys, _ in rule.also_requires:
                universe |= keys
            # A `for:` rule is always a candidate: a call where it is false must
            # still reset its streak (evaluate() does that without CEL when its
            # trigger is absent, see `debounce_skip`).
            trigger = rule.trigger if rule.debounce is None else None
            if trigger is None:
                always.add(i)
            else:
                for key in trigger:
                    by_key.setdefault(key, set()).add(i)
                    by_kind.setdefault(key.split(":", 1)[0], set()).add(i)
            for name, fields in rule.condition.analysis.projections.items():
                for path in ((name, f) for f in fields or ()):
                    # Items of a list: the union of the fields every rule reads of them, or whole.
                    own = rule.condition.analysis.item_fields.get(path)
                    if own is None or (path in item_fields and item_fields[path] is None):
                        item_fields[path] = None
                    else:
                        item_fields[path] = (item_fields.get(path) or set()) | own
                if name in projections and projections[name] is None:
                    continue
                if fields is None:
                    projections[name] = None
                else:
                    projections[name] = (projections.get(name) or frozenset()) | fields
            if rule.condition.analysis.opaque:
                for name in rule.variables:
                    projections[name] = None
        words = tuple(sorted({key.split(":", 1)[1] for key in universe if key.startswith("word:")}))
        context_kinds = tuple(sorted({key.split(":", 1)[0] for key in universe if key.startswith("context.")}))
        # Only conditions the library evaluates: a native one costs about a microsecond
        # alone, less than its share of a CEL call (and on an event that is not plain
        # JSON it goes to the library one by one, which stays exact).
        batched = tuple(
            r
            for i, r in enumerate(ordered)
            if i in always and r.debounce is None and not r.condition.analysis.opaque and r.native is None
        )
        return cls(
            rules=ordered,
            batch=Segment(batched) if len(batched) >= 2 else None,
            batch_index={r.id: i for i, r in enumerate(batched)} if len(batched) >= 2 else {},
            always=frozenset(always),
            by_key={k: frozenset(v) for k, v in by_key.items()},
            by_kind={k: frozenset(v) for k, v in by_kind.items()},
            words=words,
            projections=projections,
            item_fields={
                path: frozenset(fields) for path, fields in item_fields.items()
                if fields is not None and projections.get(path[0]) is not None
            },  # fmt: skip
            universe=frozenset(universe),
            kinds=frozenset(key.split(":", 1)[0] for key in universe),
            context_kinds=context_kinds,
            label_keys=_label_keys(universe),
            context_keys={
                (kind, value): key for key in universe if (kind := key.split(":", 1)[0]).startswith("context.")
                for value in (key.split(":", 1)[1],)
            },
            context_fields=tuple((kind, kind[len("context."):], f"{kind}:*") for kind in context_kinds),
            word_keys=_word_keys(words),
        )

    def present_keys(self, facts: Facts, context: Any = None) -> frozenset[str]:
        """The trigger keys this event has; ``"<kind>:*"`` when its facts are malformed.

        Only keys of the `universe` are built (and "<kind>:*" ones): an event's other
        labels, words and context values cannot make any rule a candidate.
        """
        keys: set[str] = set()
        if self.context_kinds:
            known = self.context_keys
            values = context if type(context) is dict else {}
            for kind, name, any_key in self.context_fields:
                value = values.get(name)
                if type(value) is str:
                    key = known.get((kind, value))
                    if key is not None:
                        keys.add(key)
                    elif value == "*" or value.endswith(":*"):
                        keys.add(f"{kind}:{value}")  # like a "<kind>:*" key: the rules decide
                else:
                    # A missing or non-string value: the rule decides (it may fail, visibly).
                    keys.add(any_key)
        if "emotion" in self.kinds:
            _known_labels(facts.emotions, "emotion:*", self.label_keys["emotion:*"], keys)
        if "sound" in self.kinds:
            _known_labels(facts.sounds, "sound:*", self.label_keys["sound:*"], keys)
        if self.word_keys:
            if isinstance(facts.caption, str):
                # A substring test: weaker than "a whole word", so a superset of the rules
                # that can hold (the pre-filter only needs a necessary condition) and far
                # cheaper than tokenising the caption.
                lowered = facts.caption.lower()
                for word, key, inside in self.word_keys:
                    if (inside is None or inside in keys) and word in lowered:
                        keys.add(key)
            else:
                keys.add("word:*")
        return frozenset(keys)

    def candidates(self, present: frozenset[str]) -> Candidates:
        """The rules to evaluate given the present keys, and the variables they read."""
        cached = self._candidates.get(present)
        if cached is not None:
            return cached
        chosen = set(self.always)
        for key in present:
            if key.endswith(":*"):
                chosen |= self.by_kind.get(key[:-2], frozenset())
            else:
                chosen |= self.by_key.get(key, frozenset())
        # A candidate by its trigger is still certainly false when another of its
        # necessary triggers is absent (`context.queue == "q1" && emotion(...)`).
        # `for:` rules have no trigger here (always candidates): one that cannot hold
        # is not evaluated either, but its streak on the call ends (`resets`).
        rules = self.rules
        resets = tuple(sorted(i for i in chosen if rules[i].debounce is not None and rules[i].cannot_hold(present)))
        chosen = {
            i for i in chosen if (rules[i].requirements_met(present) if rules[i].debounce is None else i not in resets)
        }
        found = self.subset(sorted(chosen), resets)
        if len(self._candidates) > 16_384:  # bounded: keys come from a small universe, but be safe
            self._candidates.clear()
        self._candidates[present] = found
        return found

    def subset(self, chosen: Sequence[int], resets: tuple[int, ...] = ()) -> Candidates:
        """The candidates at positions ``chosen`` of :attr:`rules` (ascending), and the `for:`
        rules at ``resets`` whose streaks end without evaluation."""
        rules = tuple(self.rules[i] for i in chosen)
        variables = frozenset().union(*(r.variables for r in rules)) if rules else frozenset()
        # Where each batched condition's rule sits in `rules` (-1: not a candidate, never the
        # case since batched rules have no trigger), and the rules evaluated one by one.
        if self.batch is not None:
            positions = {r.id: i for i, r in enumerate(rules)}
            in_batch = tuple(positions.get(r.id, -1) for r in self.batch.rules)
            alone = tuple(i for i, r in enumerate(rules) if r.id not in self.batch_index)
        else:
            in_batch, alone = (), tuple(range(len(rules)))
        return Candidates(
            rules,
            variables,
            in_batch,
            alone,
            any(r.native is None for r in rules),
            order=tuple(chosen),
            resets=tuple((i, self.rules[i].id) for i in resets),
        )


@dataclass(frozen=True)
class Candidates:
    rules: tuple[CompiledRule, ...]  # in evaluation order
    variables: frozenset[str]  # what they read
    in_batch: tuple[int, ...]  # batch result i -> position in `rules`
    alone: tuple[int, ...]  # positions of the rules evaluated one by one
    #: Whether some rule has no native program (then the event's values are given to CEL).
    needs_library: bool = True
    #: Each rule's position in the plan's rules (where a stop falls among the resets).
    order: tuple[int, ...] = ()
    #: (position in the plan's rules, id) of the `for:` rules that cannot hold: their streaks end.
    resets: tuple[tuple[int, str], ...] = ()


class Segment:
    """Rules whose conditions one CEL program evaluates: ``[(c1), (c2), ...]``.

    One call into the library instead of one per rule: the per-call overhead, not
    the conditions, dominates simple rules. Conditions are pure, so evaluating
    some ahead of their turn changes nothing as long as results are consumed in
    priority order (the evaluator does: nothing after a stopping match is
    reported). Exactness is kept by the caller: if the list fails (a condition
    raised), each rule is evaluated alone, in its turn.
    """

    __slots__ = ("rules", "_program")

    def __init__(self, rules: tuple[CompiledRule, ...]) -> None:
        self.rules = rules
        self._program: cel.Program | None = None

    @property
    def batched(self) -> bool:
        return len(self.rules) > 1

    @property
    def program(self) -> cel.Program:
        if self._program is None:
            # A newline before each ')': a `//` comment in a condition must not swallow it.
            self._program = cel.compile("[" + ", ".join(f"({r.condition.source}\n)" for r in self.rules) + "]")
        return self._program


def _word_keys(words: Iterable[str]) -> tuple[tuple[str, str, str | None], ...]:
    ordered = sorted(words, key=lambda w: (len(w), w))
    out = []
    for i, word in enumerate(ordered):
        inside = [w for w in ordered[:i] if w in word and len(w) < len(word)]
        out.append((word, f"word:{word}", f"word:{max(inside, key=len)}" if inside else None))
    return tuple(out)


def _label_keys(universe: Iterable[str]) -> dict[str, LabelKeys]:
    found: dict[str, dict[str, tuple[list[str], list[tuple[float, str]]]]] = {"emotion:*": {}, "sound:*": {}}
    for key in sorted(universe):
        kind, _, rest = key.partition(":")
        if kind in ("emotion", "sound"):
            label, at, grade = rest.rpartition("@") if "@" in rest else (rest, "", "")
            plain, graded = found[f"{kind}:*"].setdefault(label, ([], []))
            if at:
                graded.append((float(grade), key))
            else:
                plain.append(key)
    out: dict[str, LabelKeys] = {}
    for any_key, labels in found.items():
        out[any_key] = {}
        for label, (plain, graded) in labels.items():
            # Per grade, ascending: the keys of an item that reaches it (the plain ones and
            # every graded one up to it), so that item_keys() only compares and picks.
            reached, steps = tuple(plain), []
            for grade, key in sorted(graded):
                reached = (*reached, key)
                steps.append((grade, reached))
            out[any_key][label] = (tuple(plain), tuple(steps))
    return out


def item_keys(item: Mapping[str, Any], label: str, any_key: str, known: LabelKeys) -> tuple[str, ...]:
    """The trigger keys of one facet item with a string label (``known``: its kind's label
    keys): the plain key, and the graded ones the item reaches (all of them when its value
    is not a double: then the rules decide, and fail visibly if they must)."""
    entry = known.get(label)
    if entry is None:
        if label == "*" or label.endswith(":*"):
            return (any_key[:-1] + label,)  # kept by present_keys() like any "<kind>:*" key
        return ()
    return _reached(item, GRADED_FIELD[any_key[:-2]], entry) if entry[1] else entry[0]


def _reached(item: Mapping[str, Any], field: str, entry: tuple[tuple[str, ...], Any]) -> tuple[str, ...]:
    """The keys of ``entry`` (a label with graded keys) that ``item``'s value reaches."""
    plain, steps = entry
    value = item[field] if field in item else None
    if type(value) is not float or value != value:
        # Not a double (an int compares with a double only in some CEL builds), or NaN (which
        # the library refuses to order): the rules decide.
        return steps[-1][1]  # type: ignore[no-any-return]
    reached = plain
    for grade, keys in steps:
        if value < grade:
            break
        reached = keys
    return reached


def _known_labels(items: Any, any_key: str, known: LabelKeys, keys: set[str]) -> None:
    """The trigger keys of a facet list (see :func:`item_keys`), and ``any_key`` for malformed facts."""
    if not isinstance(items, list):
        keys.add(any_key)
        return
    field = GRADED_FIELD[any_key[:-2]]
    # (`key in d and d[key]`, not d.get(): half the time, and this runs for every item of every event.)
    for item in items:
        label = (item["label"] if "label" in item else None) if type(item) is dict or isinstance(item, dict) else None
        if type(label) is not str and not isinstance(label, str):
            keys.add(any_key)
            return
        entry = known[label] if label in known else None
        if entry is None:
            if "*" in label and (label == "*" or label.endswith(":*")):  # (`in` first: no method call)
                keys.add(any_key[:-1] + label)
        elif not entry[1]:
            keys.update(entry[0])  # no graded keys: the item's value does not matter
        else:
            keys.update(_reached(item, field, entry))


class _Current:
    """What the helper functions of a CEL context read: the facts of the view being evaluated."""

    __slots__ = ("facts",)

    def __init__(self) -> None:
        self.facts: Facts | None = None

    def get(self) -> Facts:
        assert self.facts is not None, "helper called outside an evaluation"
        return self.facts


@dataclass
class EvalContext:
    """A CEL context with the stdlib and the helpers registered once; variables change per event."""

    context: cel.Context
    current: _Current

    @classmethod
    def new(cls) -> EvalContext:
        context = cel.Context({})
        cel.stdlib.add_stdlib_to_context(context)
        current = _Current()
        context.add_function("emotion", lambda role, labels, floor: current.get().emotion(role, labels, floor))
        context.add_function("sound", lambda labels, floor: current.get().sound(labels, floor))
        context.add_function("any_words", lambda text, words: current.get().any_words(text, words))
        context.add_function("all_words", lambda text, words: current.get().all_words(text, words))
        return cls(context=context, current=current)


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
            ctx = self._local.ctx = EvalContext.new()
        return ctx
