"""The evaluation plan of one (event type, source): which rules can hold, what they read.

This is the speed machinery in front of the ``cel`` library (what rules *mean* is in
:mod:`services.rules.evaluate`). Built once per event type and source, reused for every
such event:

- the **pre-filter**: an index of each rule's trigger facts (emotion and sound labels
  graded by the rule's floor, caption words, ``context.<field> == "value"``, see
  :mod:`services.rules.analysis`); an event's present keys pick the candidate rules, and a
  rule whose trigger is absent is provably false, so it is skipped without calling CEL;
- the **projections**: the variables, fields and list-item fields the rules read, the
  only values converted into the library (a few microseconds per value);
- the **batch**: the rules evaluated for every event, compiled into one CEL program (one
  library call instead of one per rule).

Skipping never hides a match nor an error: an item that cannot be compared (not a map, a
value that is not a double, NaN, a missing label) makes every rule that might read it a
candidate, and the rule decides, failing visibly if it must.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cel

from services.rules.analysis import FloorTest, Projection
from services.rules.helpers import GRADED_FIELD, Facts
from services.rules.slots import Slot, slots_of

if TYPE_CHECKING:
    from services.rules.ruleset import CompiledRule, RuleSet

#: A kind's trigger keys by label: (its plain keys, ((grade, the keys of an item reaching that grade), ...) ascending).
LabelKeys = Mapping[str, tuple[tuple[str, ...], tuple[tuple[float, tuple[str, ...]], ...]]]



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
    #: The rules without a trigger (evaluated for every event), as one CEL program.
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
        batched = tuple(
            r for i, r in enumerate(ordered) if i in always and r.debounce is None and not r.condition.analysis.opaque
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
            floored=tuple((i, r.floors) for i, r in enumerate(rules) if r.floors),
            order=tuple(chosen),
            resets=tuple((i, self.rules[i].id) for i in resets),
        )


@dataclass(frozen=True)
class Candidates:
    rules: tuple[CompiledRule, ...]  # in evaluation order
    variables: frozenset[str]  # what they read
    in_batch: tuple[int, ...]  # batch result i -> position in `rules`
    alone: tuple[int, ...]  # positions of the rules evaluated one by one
    #: (position, floors) of the rules with facet floors (see analysis.FloorTest).
    floored: tuple[tuple[int, tuple[FloorTest, ...]], ...] = ()
    #: Each rule's position in the plan's rules (where a stop falls among the resets).
    order: tuple[int, ...] = ()
    #: (position in the plan's rules, id) of the `for:` rules that cannot hold: their streaks end.
    resets: tuple[tuple[int, str], ...] = ()


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
            label, at, grade_text = rest.rpartition("@") if "@" in rest else (rest, "", "")
            plain, graded = found[f"{kind}:*"].setdefault(label, ([], []))
            if at:
                graded.append((float(grade_text), key))
            else:
                plain.append(key)
    out: dict[str, LabelKeys] = {}
    for any_key, labels in found.items():
        keys_of_label: dict[str, tuple[tuple[str, ...], tuple[tuple[float, tuple[str, ...]], ...]]] = {}
        for label, (plain, graded) in labels.items():
            # Per grade, ascending: the keys of an item that reaches it (the plain ones and
            # every graded one up to it), so that item_keys() only compares and picks.
            reached, steps = tuple(plain), []
            for grade, key in sorted(graded):
                reached = (*reached, key)
                steps.append((grade, reached))
            keys_of_label[label] = (tuple(plain), tuple(steps))
        out[any_key] = keys_of_label
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
        return steps[-1][1]
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


class Segment:
    """Rules whose conditions one CEL program evaluates: ``[(c1), (c2), ...]``.

    One call into the library instead of one per rule: the per-call overhead, not
    the conditions, dominates simple rules. Conditions are pure, so evaluating
    some ahead of their turn changes nothing as long as results are consumed in
    priority order (the evaluator does: nothing after a stopping match is
    reported). Exactness is kept by the caller: if the list fails (a condition
    raised), each rule is evaluated alone, in its turn.
    """

    __slots__ = ("rules", "variables", "_program")

    def __init__(self, rules: tuple[CompiledRule, ...]) -> None:
        self.rules = rules
        self.variables: frozenset[str] = frozenset().union(*(r.variables for r in rules))
        self._program: cel.Program | None = None

    @property
    def program(self) -> cel.Program:
        if self._program is None:
            # A newline before each ')': a `//` comment in a condition must not swallow it.
            self._program = cel.compile("[" + ", ".join(f"({r.condition.source}\n)" for r in self.rules) + "]")
        return self._program


def slot_keys(
    plan: Plan, present: frozenset[str], facets: Any, slots: list[Slot], where: Mapping[Any, tuple[int, ...]]
) -> list[frozenset[str]]:
    """The pre-filter keys of each slot of a call: the event's context and word keys, and the
    trigger labels among the slot's own facet items (what present_keys() would give each
    slot's facets, without building them)."""
    shared = frozenset(k for k in present if not k.startswith(("emotion:", "sound:")))
    found: list[set[str]] = [set() for _ in slots]
    is_map = type(facets) is dict or isinstance(facets, Mapping)
    known = plan.label_keys
    for name, kind in (("emotions", "emotion"), ("sound_events", "sound")):
        if kind not in plan.kinds:
            continue
        items = facets.get(name) if is_map else None
        any_key = f"{kind}:*"
        if type(items) is not list:
            for keys_of_slot in found:
                keys_of_slot.add(any_key)
            continue
        for item in items:
            keys: tuple[str, ...]
            targets: Iterable[int]
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
                targets = slots_of(item, slots, where)
            for n in targets:
                found[n].update(keys)
    return [shared | keys_of_slot if keys_of_slot else shared for keys_of_slot in found]


def debounced_rules(ruleset: RuleSet, event_attributes: Mapping[str, Any], data: Any = None) -> list[str]:
    """Ids of the `for:` rules whose stored streaks matter for this event (the engine loads those).

    With ``data``: a rule whose trigger facts the event lacks is left out when the
    event has windows. It is false in every window, so its streak ends; a stored
    streak it leaves behind cannot continue later, since the next event's windows
    start after this event's (a gap, see evaluate.STREAK_GAP_S).
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
