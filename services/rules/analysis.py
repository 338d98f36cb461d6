"""Static analysis of a rule's condition, on the syntax tree of :mod:`celast`.

What the loader learns here, once per rule:

- **findings**: unknown fields (``acoustics.silence_ration``), fields of lists
  (``facets.emotions.label``), wrong helper arity or literal types, names used
  outside the comprehension that binds them, comprehensions nested too deep;
- **variables**: the top-level names the condition reads, and for each the
  fields it reads (its *projection*): the engine hands CEL only those, since
  converting values into the library costs about a microsecond each;
- **trigger**: facts the condition cannot be true without (an emotion label, a
  sound label, a caption word): a rule whose trigger is absent from an event
  is skipped without calling CEL. Only provably necessary facts are used, and
  CEL's ``&&``/``||`` absorb errors (``false && error`` is ``false``), so the
  skip never hides a match nor an error (see tests/test_rules_prefilter.py);
- **clauses**: the top-level ``&&`` conjuncts, for ``rules explain``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.dsl import celast
from services.dsl.cel_checks import NAMESPACES, STDLIB_QUALIFIED, TYPE_NAMES
from services.dsl.celast import Binary, Call, Ident, Index, ListExpr, Lit, Node, Select, Unary
from services.rules.fields import ANY, BOOL, NUMBER, STRING, VARIABLES, ListOf, MapOf, Record, Scalar, Shape
from services.rules.helpers import FACET_LIST, GRADED_FIELD, HELPERS, words_of

#: Allowed by the library, refused in rules: they allocate without bound.
FORBIDDEN_FUNCTIONS = {"lists.range": "lists.range is not allowed in rules: it builds lists of any size"}

MAX_COMPREHENSION_DEPTH = 2

#: Fields read from a variable; ``None`` when the variable is used whole.
Projection = frozenset[str] | None
#: (variable, field) -> the fields read of each item of that list, when it is only ever the
#: target of comprehensions that read fields of the item (``facets.emotions.exists(e, e.label
#: == "anger")``: ("facets", "emotions") -> {"label"}).
ItemFields = Mapping[tuple[str, str], frozenset[str]]


@dataclass(frozen=True)
class Finding:
    offset: int  # in the expression source
    message: str


@dataclass(frozen=True)
class FloorTest:
    """Some ``kind`` item ("emotion", "sound") with a label in ``labels``, of ``role`` (None:
    any), whose intensity or confidence is at least ``floor``: a condition's necessary fact."""

    kind: str
    role: str | None
    labels: frozenset[str]
    floor: float


@dataclass(frozen=True)
class Loop:
    """A comprehension of a condition: over the list (or map) at ``path``, a field path of a
    variable (None: not one, e.g. a list literal or an enclosing item's field), with the
    comprehensions that run once per item inside it. What the engine multiplies by the
    event's list sizes before running a rule (see ``Limits.max_rule_iterations``)."""

    path: tuple[str, ...] | None
    inner: tuple[Loop, ...] = ()
    #: The size of a list literal (`[1, 2, 3].exists(...)`); None: not a literal.
    size: int | None = None


@dataclass(frozen=True)
class Analysis:
    source: str
    ast: Node | None  # None: this parser could not read what the library compiled
    variables: frozenset[str] = frozenset()
    projections: Mapping[str, Projection] = field(default_factory=dict)
    item_fields: ItemFields = field(default_factory=dict)
    trigger: frozenset[str] | None = None
    #: The trigger of every top-level conjunct that has one: each is necessary (the
    #: rule can only be true when the event has one of its keys), ``trigger`` is one of them.
    requires: tuple[frozenset[str], ...] = ()
    #: Necessary facet floors (one per top-level conjunct that is a helper call or an
    #: ``exists`` with literal labels and floor): the rule cannot hold unless an item reaches each.
    floors: tuple[FloorTest, ...] = ()
    clauses: tuple[tuple[int, int], ...] = ()
    bound: frozenset[str] = frozenset()
    helpers: frozenset[str] = frozenset()
    comprehension_depth: int = 0
    loops: tuple[Loop, ...] = ()

    @property
    def opaque(self) -> bool:
        return self.ast is None


def analyse(source: str, known: Mapping[str, Shape] = VARIABLES) -> tuple[Analysis, list[Finding]]:
    try:
        ast = celast.parse(source)
    except celast.CelSyntaxError:
        # The library compiled it (the loader checks that first): stay permissive.
        return Analysis(source=source, ast=None, variables=frozenset(known)), []
    findings: list[Finding] = []
    checker = _Checker(known, findings)
    checker.shape(ast, {})
    depth = _comprehension_depth(ast)
    if depth > MAX_COMPREHENSION_DEPTH:
        findings.append(
            Finding(
                0,
                f"comprehensions nested {depth} deep (at most {MAX_COMPREHENSION_DEPTH}): the cost grows as a power of the list sizes",
            )
        )
    projections = _projections(ast, known)
    return (
        Analysis(
            source=source,
            ast=ast,
            variables=frozenset(projections),
            projections=projections,
            item_fields=_item_fields(ast, projections),
            trigger=_trigger(ast, frozenset()),
            requires=tuple(dict.fromkeys(k for n in conjuncts(ast) if (k := _trigger(n, frozenset())) is not None)),
            floors=tuple(dict.fromkeys(t for n in conjuncts(ast) if (t := _floor_test(n)) is not None)),
            clauses=tuple((n.start, n.end) for n in conjuncts(ast)),
            bound=frozenset(checker.bound),
            helpers=frozenset(checker.helpers),
            comprehension_depth=depth,
            loops=_loops(ast, known, frozenset()),
        ),
        findings,
    )


def conjuncts(node: Node) -> list[Node]:
    """``a && (b && c)`` -> ``[a, b, c]``; anything else is one clause."""
    if isinstance(node, Binary) and node.op == "&&":
        return conjuncts(node.left) + conjuncts(node.right)
    return [node]


def disjuncts(node: Node) -> list[Node]:
    if isinstance(node, Binary) and node.op == "||":
        return disjuncts(node.left) + disjuncts(node.right)
    return [node]


# --- field checks --------------------------------------------------------------


def _path(node: Node) -> str:
    if isinstance(node, Ident):
        return node.name
    if isinstance(node, Select):
        return f"{_path(node.operand)}.{node.name}"
    if isinstance(node, Index):
        return f"{_path(node.operand)}[...]"
    return "the value"


class _Checker:
    def __init__(self, known: Mapping[str, Shape], findings: list[Finding]) -> None:
        self.known = known
        self.findings = findings
        self.bound: set[str] = set()
        self.helpers: set[str] = set()

    def report(self, node: Node, message: str) -> None:
        self.findings.append(Finding(node.start, message))

    def shape(self, node: Node, env: Mapping[str, Shape]) -> Shape:
        if isinstance(node, Ident):
            if node.name in env:
                return env[node.name]
            if node.name in self.known:
                return self.known[node.name]
            return ANY  # a type name, or unknown (compile_checked() refuses those)
        if isinstance(node, Select):
            return self.select(self.shape(node.operand, env), node, node.name)
        if isinstance(node, Index):
            base = self.shape(node.operand, env)
            self.shape(node.index, env)
            if isinstance(base, ListOf):
                return base.item
            if isinstance(base, MapOf):
                return base.value
            if isinstance(base, Record) and isinstance(node.index, Lit) and node.index.kind == "string":
                return self.select(base, node, str(node.index.value))
            return ANY
        if isinstance(node, Call):
            return self.call(node, env)
        if isinstance(node, Lit):
            return {"string": STRING, "bool": BOOL, "int": NUMBER, "uint": NUMBER, "double": NUMBER}.get(node.kind, ANY)
        for child in node.children():
            self.shape(child, env)
        return ANY

    def select(self, base: Shape, node: Node, name: str) -> Shape:
        operand = node.operand if isinstance(node, Select | Index) else node
        where = _path(operand)
        if isinstance(base, Record):
            if name in base.fields:
                return base.fields[name]
            if base.extension is not None and base.extension.match(name):
                return STRING
            close = difflib.get_close_matches(name, list(base.fields), n=1)
            if close:
                hint = f", did you mean {close[0]!r}?"
            elif base.extension_hint:
                hint = f" (expected {base.extension_hint})"
            else:
                hint = f" (known: {', '.join(base.fields)})"
            self.report(node, f"unknown field {name!r} of {where}{hint}")
            return ANY
        if isinstance(base, ListOf):
            self.report(
                node, f"{where} is a list: it has no field {name!r} (test its items with exists(), all() or filter())"
            )
            return ANY
        if isinstance(base, Scalar):
            self.report(node, f"{where} is a {base.kind}: it has no field {name!r}")
            return ANY
        if isinstance(base, MapOf):
            return base.value
        return ANY

    def call(self, node: Call, env: Mapping[str, Shape]) -> Shape:
        if node.is_macro:
            assert node.target is not None
            target = self.shape(node.target, env)
            var = node.args[0]
            assert isinstance(var, Ident)
            self.bound.add(var.name)
            if isinstance(target, ListOf):
                item: Shape = target.item
            elif isinstance(target, Record | MapOf):
                item = STRING  # comprehensions over maps range over keys
            elif isinstance(target, Scalar):
                self.report(node, f"{_path(node.target)} is a {target.kind}: {node.function}() needs a list or a map")
                item = ANY
            else:
                item = ANY
            inner = {**env, var.name: item}
            for arg in node.args[1:]:
                self.shape(arg, inner)
            if node.function == "map":
                return ListOf("a mapped list", ANY)
            if node.function == "filter":
                return target
            return BOOL
        if node.target is None and node.function == "has":
            if len(node.args) != 1 or not isinstance(node.args[0], Select):
                self.report(node, "has() takes one field selection, like has(context.queue)")
            for arg in node.args:
                self.shape(arg, env)
            return BOOL
        qualified = None
        if isinstance(node.target, Ident) and node.target.name in NAMESPACES and node.target.name not in env:
            qualified = f"{node.target.name}.{node.function}"
            if qualified in FORBIDDEN_FUNCTIONS:
                self.report(node, FORBIDDEN_FUNCTIONS[qualified])
            elif qualified not in STDLIB_QUALIFIED:
                self.report(node, f"unknown CEL function {qualified}")
        elif node.target is not None:
            self.shape(node.target, env)
        if node.target is None and node.function in HELPERS:
            self.helpers.add(node.function)
            self.check_helper(node)
        for arg in node.args:
            self.shape(arg, env)
        if node.target is None and node.function in HELPERS:
            return BOOL
        return ANY

    def check_helper(self, node: Call) -> None:
        spec = HELPERS[node.function]
        if len(node.args) != len(spec.params):
            self.report(
                node,
                f"{node.function}() takes {len(spec.params)} arguments ({', '.join(spec.params)}), got {len(node.args)}",
            )
            return
        for arg, kinds, name in zip(node.args, spec.kinds, spec.params, strict=True):
            got = _literal_kind(arg)
            if got is not None and got not in kinds:
                self.report(arg, f"{node.function}(): {name} must be {' or '.join(kinds)}, got {got}")


def _literal_kind(node: Node) -> str | None:
    if isinstance(node, Lit):
        return {"int": "number", "uint": "number", "double": "number"}.get(node.kind, node.kind)
    if isinstance(node, ListExpr):
        kinds = {_literal_kind(item) for item in node.items}
        return "list of strings" if kinds <= {"string"} else "list"
    if isinstance(node, Unary) and node.op == "-" and isinstance(node.operand, Lit):
        return "number" if node.operand.kind in ("int", "uint", "double") else None
    return None


def _loops(node: Node, known: Mapping[str, Shape], scope: frozenset[str]) -> tuple[Loop, ...]:
    """The comprehensions of ``node``, nested as they run (see :class:`Loop`)."""
    if isinstance(node, Call) and node.is_macro:
        assert node.target is not None
        path = celast.field_path(node.target)
        own = path is not None and path[0] in known and path[0] not in scope
        inner = scope | {node.bound_name}
        body = tuple(loop for arg in node.args[1:] for loop in _loops(arg, known, inner))
        size = len(node.target.items) if isinstance(node.target, ListExpr) else None
        # The target is evaluated once, before the iteration (`x.filter(...).exists(...)`).
        return (*_loops(node.target, known, scope), Loop(tuple(path) if own and path else None, body, size))
    return tuple(loop for child in node.children() for loop in _loops(child, known, scope))


def _comprehension_depth(node: Node) -> int:
    if isinstance(node, Call) and node.is_macro:
        assert node.target is not None
        body = max((_comprehension_depth(arg) for arg in node.args[1:]), default=0)
        return max(_comprehension_depth(node.target), 1 + body)
    return max((_comprehension_depth(child) for child in node.children()), default=0)


# --- projections -----------------------------------------------------------------


def _projections(root: Node, known: Mapping[str, Shape]) -> dict[str, Projection]:
    """Per variable read: the top-level fields read, or None when used whole."""
    used: dict[str, set[str] | None] = {}
    for node, parent, scope in celast.scoped_walk(root):
        if not isinstance(node, Ident) or node.name not in known or node.name in scope or node.name in TYPE_NAMES:
            continue
        if celast.is_namespace(node, parent, NAMESPACES):
            continue
        if isinstance(parent, Select) and parent.operand is node:
            fields = used.setdefault(node.name, set())
            if fields is not None:
                fields.add(parent.name)
        else:
            used[node.name] = None
    return {name: (frozenset(fields) if fields is not None else None) for name, fields in used.items()}


def _item_fields(root: Node, projections: Mapping[str, Projection]) -> dict[tuple[str, str], frozenset[str]]:
    """See :data:`ItemFields`: per projected (variable, field) used only as a comprehension
    target whose variable is only read as ``x.<field>`` (or ``has(x.<field>)``)."""
    read: dict[tuple[str, str], set[str] | None] = {}

    def visit(node: Node, scope: frozenset[str]) -> None:
        if isinstance(node, Select) and isinstance(node.operand, Ident) and node.operand.name not in scope:
            path = (node.operand.name, node.name)
            if projections.get(path[0]) is not None:
                read[path] = None  # the list read other than as a comprehension's target: whole
            return
        if isinstance(node, Call) and node.is_macro and node.target is not None:
            target, var = node.target, node.bound_name
            inner = scope | {var}
            if (
                isinstance(target, Select) and isinstance(target.operand, Ident) and target.operand.name not in scope
                and projections.get(target.operand.name) is not None
            ):  # fmt: skip
                path = (target.operand.name, target.name)
                # filter() returns the items themselves: whatever reads them needs them whole.
                fields = None if node.function == "filter" else _fields_of(var, node.args[1:])
                if fields is None or path in read and read[path] is None:
                    read[path] = None
                else:
                    read[path] = (read.get(path) or set()) | fields
            else:
                visit(target, scope)
            for arg in node.args[1:]:
                visit(arg, inner)
            return
        for child in node.children():
            visit(child, scope)

    visit(root, frozenset())
    return {path: frozenset(fields) for path, fields in read.items() if fields is not None}


def _fields_of(var: str, bodies: list[Node]) -> set[str] | None:
    """The fields read of ``var`` in ``bodies``; None when it is used otherwise (whole)."""
    fields: set[str] = set()

    def visit(node: Node, parent: Node | None, shadowed: bool) -> bool:
        if isinstance(node, Ident) and node.name == var and not shadowed:
            if isinstance(parent, Select) and parent.operand is node:
                fields.add(parent.name)
                return True
            return False
        if isinstance(node, Call) and node.is_macro and node.target is not None:
            # A nested comprehension over another list may bind the same name: then it is not ours.
            if not visit(node.target, node, shadowed):
                return False
            inner = shadowed or node.bound_name == var
            return all(visit(arg, node, inner) for arg in node.args[1:])
        return all(visit(child, node, shadowed) for child in node.children())

    return fields if all(visit(body, None, False) for body in bodies) else None


# --- triggers ----------------------------------------------------------------------
# A trigger is a set of fact keys; the rule can only be true when the event has
# at least one of them. Keys: "emotion:<label>", "sound:<label>", "word:<word>",
# "context.<field>:<value>". The part before the first ':' is the key's kind.
# A helper's literal floor grades its keys: emotion("customer", ["anger"], 0.6)
# needs an anger item of intensity 0.5 or more at least, key "emotion:anger@0.5".
# A few fixed grades keep the keys of an event few (the engine caches the
# candidates of each set of keys).

#: The grades of "<kind>:<label>@<grade>" keys: an item's intensity (emotions) or
#: confidence (sounds) at or above the grade.
FLOOR_GRADES = (0.25, 0.5, 0.75)


def graded_key(kind: str, label: str, floor: float | None) -> str:
    """The trigger key of a label whose item must reach ``floor``: the largest grade not above it."""
    grade = max((g for g in FLOOR_GRADES if floor is not None and g <= floor), default=None)
    return f"{kind}:{label}" if grade is None else f"{kind}:{label}@{grade:g}"


_LIST_FACTS = {("facets", name): kind for kind, name in FACET_LIST.items()}


def _narrower(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if len(a) <= len(b) else b


def _trigger(node: Node, scope: frozenset[str]) -> frozenset[str] | None:
    if isinstance(node, Binary) and node.op == "&&":
        # Either side is necessary: keep the narrower one.
        return _narrower(_trigger(node.left, scope), _trigger(node.right, scope))
    if isinstance(node, Binary) and node.op == "||":
        left, right = _trigger(node.left, scope), _trigger(node.right, scope)
        return None if left is None or right is None else left | right
    if isinstance(node, Call) and node.target is None and node.function in HELPERS:
        return _helper_trigger(node, scope)
    if isinstance(node, Binary) and node.op in ("==", "in"):
        return _context_trigger(node, scope)
    if isinstance(node, Call) and node.is_macro and node.function in ("exists", "exists_one"):
        kind = _list_fact(node.target, scope)
        var = node.args[0]
        if kind is not None and isinstance(var, Ident) and len(node.args) == 2:
            return _item_trigger(node.args[1], var.name, kind, scope | {var.name})
    return None


def _context_trigger(node: Binary, scope: frozenset[str]) -> frozenset[str] | None:
    """``context.queue == "billing"`` / ``context.queue in ["a", "b"]``: keys "context.queue:billing".

    Only string literals: CEL's equality of a string with a string is plain; any
    other value in the event makes the engine evaluate the rule (see Plan.present_keys).
    """
    field_side, other = node.left, node.right
    if node.op == "==" and not _is_context_field(field_side, scope):
        field_side, other = other, field_side
    if not _is_context_field(field_side, scope):
        return None
    values = _string_literals(other) if node.op == "in" else (_string_literals(other) if isinstance(other, Lit) else None)
    if not values or (node.op == "in" and not isinstance(other, ListExpr)):
        return None
    assert isinstance(field_side, Select)
    return frozenset(f"context.{field_side.name}:{v}" for v in values)


def _is_context_field(node: Node, scope: frozenset[str]) -> bool:
    return (
        isinstance(node, Select)
        and isinstance(node.operand, Ident)
        and node.operand.name == "context"
        and "context" not in scope
    )


def _list_fact(node: Node | None, scope: frozenset[str]) -> str | None:
    if isinstance(node, Select) and isinstance(node.operand, Ident) and node.operand.name not in scope:
        return _LIST_FACTS.get((node.operand.name, node.name))
    return None


def _item_trigger(node: Node, var: str, kind: str, scope: frozenset[str]) -> frozenset[str] | None:
    """Inside ``list.exists(var, node)``: labels the item must have."""
    if isinstance(node, Binary) and node.op == "&&":
        graded = _graded_item_trigger(node, var, kind)
        if graded is not None:
            return graded
        return _narrower(_item_trigger(node.left, var, kind, scope), _item_trigger(node.right, var, kind, scope))
    if isinstance(node, Binary) and node.op == "||":
        left, right = _item_trigger(node.left, var, kind, scope), _item_trigger(node.right, var, kind, scope)
        return None if left is None or right is None else left | right
    if isinstance(node, Binary) and node.op in ("==", "in"):
        label_side, other = (node.left, node.right)
        if node.op == "==" and not _is_label(label_side, var):
            label_side, other = other, label_side
        if not _is_label(label_side, var):
            return _trigger(node, scope)
        values = _string_literals(other) if node.op == "in" else _string_literals(ListExpr(0, 0, [other]))
        return frozenset(f"{kind}:{v}" for v in values) if values is not None else None
    return _trigger(node, scope)


def _graded_item_trigger(node: Node, var: str, kind: str) -> frozenset[str] | None:
    """``e.label in [...] && e.intensity >= 0.6``: graded keys, when one conjunct tests the
    label and another the floor (CEL's ``&&`` is false when any conjunct is false, errors
    or not, so an item below the floor cannot make the comprehension true)."""
    tests = _item_tests(node, var, kind)
    if not tests.labels or not tests.floors:
        return None
    return frozenset(graded_key(kind, label, tests.floor) for label in tests.narrowest_labels)


@dataclass
class _ItemTests:
    """The conjuncts of a comprehension's predicate over one facet item, sorted out."""

    labels: list[list[str]] = field(default_factory=list)  # var.label == / in literals
    floors: list[float] = field(default_factory=list)  # var.<value> >= / > literal
    roles: list[str] = field(default_factory=list)  # var.role == literal (emotions only)
    others: int = 0  # any other conjunct

    @property
    def floor(self) -> float:
        return max(self.floors)

    @property
    def narrowest_labels(self) -> list[str]:
        """Of several label tests (all must hold), the one that allows the fewest labels."""
        return min(self.labels, key=lambda labels: len(labels))


def _item_tests(node: Node, var: str, kind: str) -> _ItemTests:
    tests = _ItemTests()
    for part in conjuncts(node):
        if (values := _label_values(part, var)) is not None:
            tests.labels.append(values)
        elif (floor := _floor_of(part, var, GRADED_FIELD[kind])) is not None:
            tests.floors.append(floor)
        elif kind == "emotion" and (role := _role_of(part, var)) is not None:
            tests.roles.append(role)
        else:
            tests.others += 1
    return tests


def _label_values(node: Node, var: str) -> list[str] | None:
    """``var.label == "x"``, ``"x" == var.label``, ``var.label in ["x", "y"]``: the labels."""
    if not (isinstance(node, Binary) and node.op in ("==", "in")):
        return None
    label_side, other = node.left, node.right
    if node.op == "==" and not _is_label(label_side, var):
        label_side, other = other, label_side
    if not _is_label(label_side, var):
        return None
    if node.op == "in":
        return _string_literals(other) if isinstance(other, ListExpr) else None
    return _string_literals(other) if isinstance(other, Lit) else None


def _floor_of(node: Node, var: str, name: str) -> float | None:
    """``var.<name> >= 0.6`` (or ``>``, or the literal on the left): the floor it sets."""
    if not isinstance(node, Binary) or node.op not in (">=", ">", "<=", "<"):
        return None
    item, literal = (node.left, node.right) if node.op in (">=", ">") else (node.right, node.left)
    is_field = isinstance(item, Select) and item.name == name and isinstance(item.operand, Ident) and item.operand.name == var
    return _number_literal(literal) if is_field else None


def _floor_test(node: Node) -> FloorTest | None:
    """``emotion("customer", ["anger"], 0.6)``, ``sound(["alarm"], 0.5)``, or
    ``facets.emotions.exists(e, e.label == "anger" && e.intensity >= 0.6 && e.role == "customer")``."""
    if isinstance(node, Call) and node.target is None and node.function in ("emotion", "sound"):
        spec = HELPERS[node.function]
        if len(node.args) != len(spec.params):
            return None
        labels, floor = _string_literals(node.args[-2]), _number_literal(node.args[-1])
        role: str | None = None
        if node.function == "emotion":
            roles = _string_literals(node.args[0])
            if not (isinstance(node.args[0], Lit) and roles):
                return None
            role = None if roles[0] == "any" else roles[0]
        if not labels or floor is None:
            return None
        return FloorTest(node.function, role, frozenset(labels), floor)
    if isinstance(node, Call) and node.is_macro and node.function == "exists" and len(node.args) == 2:
        kind, var = _list_fact(node.target, frozenset()), node.args[0]
        if kind is None or not isinstance(var, Ident):
            return None
        tests = _item_tests(node.args[1], var.name, kind)
        if not tests.labels or not tests.floors:
            return None
        role = tests.roles[0] if tests.roles else None
        return FloorTest(kind, role, frozenset(tests.narrowest_labels), tests.floor)
    return None


def _role_of(node: Node, var: str) -> str | None:
    """``var.role == "customer"`` (either way round): the role."""
    if isinstance(node, Binary) and node.op == "==":
        for field_side, other in ((node.left, node.right), (node.right, node.left)):
            if (
                isinstance(field_side, Select) and field_side.name == "role" and isinstance(field_side.operand, Ident)
                and field_side.operand.name == var and isinstance(other, Lit) and other.kind == "string"
            ):  # fmt: skip
                return str(other.value)
    return None


def _is_label(node: Node, var: str) -> bool:
    return isinstance(node, Select) and node.name == "label" and isinstance(node.operand, Ident) and node.operand.name == var


def _number_literal(node: Node) -> float | None:
    if isinstance(node, Lit) and node.kind in ("int", "uint", "double") and not isinstance(node.value, bool):
        return float(node.value)
    return None


def _string_literals(node: Node) -> list[str] | None:
    if isinstance(node, Lit) and node.kind == "string":
        return [str(node.value)]
    if isinstance(node, ListExpr):
        items = [i for i in node.items if isinstance(i, Lit) and i.kind == "string"]
        return [str(i.value) for i in items] if len(items) == len(node.items) else None
    return None


def _helper_trigger(node: Call, scope: frozenset[str]) -> frozenset[str] | None:
    spec = HELPERS[node.function]
    if len(node.args) != len(spec.params) or spec.trigger is None:
        return None
    if spec.trigger in ("emotion", "sound"):
        labels = _string_literals(node.args[spec.params.index("labels")])
        floor = _number_literal(node.args[-1])
        return frozenset(graded_key(spec.trigger, v, floor) for v in labels) if labels else None
    # words: only on the caption itself, whose words the engine indexes.
    text = node.args[0]
    if not (isinstance(text, Ident) and text.name == "caption" and "caption" not in scope):
        return None
    phrases = _string_literals(node.args[1])
    if not phrases:
        return None
    firsts = [words_of(p) for p in phrases]
    if any(not w for w in firsts):
        return None  # an empty phrase: leave the helper to decide
    if spec.trigger == "all_words":
        return frozenset({f"word:{firsts[0][0]}"})
    return frozenset(f"word:{w[0]}" for w in firsts)


_SPACE = re.compile(r"\s+")


def clause_text(source: str, span: tuple[int, int]) -> str:
    return _SPACE.sub(" ", source[span[0] : span[1]]).strip()


__all__ = [
    "FORBIDDEN_FUNCTIONS",
    "MAX_COMPREHENSION_DEPTH",
    "Analysis",
    "Finding",
    "analyse",
    "clause_text",
    "conjuncts",
    "disjuncts",
]

