"""A rule's condition as one generated Python function: the common shapes inline.

Why: a closure tree (:mod:`services.rules.native`) costs one Python call per
node, about a third of a microsecond for a condition like
``has(acoustics.overtalk_ratio) && acoustics.overtalk_ratio > 0.15``. Generated
straight-line code reads the same values without those calls.

What is generated: ``&&``/``||`` (with the library's error absorption), ``!``,
the ternary, literals, variables and field paths (``acoustics.silence_ratio``),
``has()``, comparisons, ``==``/``!=``, ``in`` and arithmetic, the rule helpers
with literal arguments, and ``exists`` comprehensions that are an exact floor
(:class:`services.rules.analysis.ExactFloor`). Any other node (comprehensions, ``size()``,
``matches()``, indexing, list literals...) is the closure native.py compiles for
it, called from the generated code.

The semantics are the closures' own: the generated code takes their fast paths
inline and otherwise calls the same functions (``_select``, ``_gt``, ``_eq``...),
which native.py hands over as ``runtime``. Only names the generator makes up and
``repr()`` of literal values appear in the source; a rule's text never does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .celast import Binary, Call, Cond, Ident, ListExpr, Lit, Node, Select, Unary, field_path
from .helpers import GRADED_FIELD

__all__ = ["generate"]

Program = Callable[[dict[str, Any], Any], Any]

_RELATION_NAMES = {"<": "_lt", "<=": "_le", ">": "_gt", ">=": "_ge"}
_HELPER_CALLS = ("emotion", "sound", "any_words", "all_words")


def generate(
    node: Node,
    closure: Callable[[Node], Program],
    runtime: Mapping[str, Any],
    helpers: Mapping[str, Callable[[Call], Any]] | None = None,
) -> Program | None:
    """One function for ``node``; None when nothing would be inlined (the caller keeps the
    closure) or when Python cannot compile the result (too deeply nested).

    ``closure`` compiles a node the generated code does not inline; ``runtime`` holds the
    functions it calls; ``helpers`` says, per helper name (and "exists"), what a call with
    literal arguments prepares (see native._helper_literals), or None where it cannot.
    """
    emitter = _Emitter(closure, helpers or {})
    if emitter.is_fallback(node):
        return None
    try:
        result = emitter.value(node)
        body = "\n".join(emitter.lines)
        source = f"def when(env, facts):\n{body}\n    return {result}\n"
        namespace: dict[str, Any] = {**runtime, **emitter.constants}
        exec(compile(source, "<rule condition>", "exec"), namespace)  # noqa: S102 -- our own source, see the module doc
    except (SyntaxError, RecursionError, MemoryError):  # e.g. more than 20 nested `try`: closures cope
        return None
    program: Program = namespace["when"]
    program.__doc__ = source  # what ran, for whoever debugs a rule
    return program


class _Emitter:
    """Statements that compute a node into a temporary, at the current indentation."""

    def __init__(self, closure: Callable[[Node], Program], helpers: Mapping[str, Any]) -> None:
        self.closure = closure
        self.helpers = helpers
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self.indent = 1
        self._count = 0

    # --- bookkeeping ----------------------------------------------------------

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.indent + line)

    def temp(self) -> str:
        self._count += 1
        return f"t{self._count}"

    def constant(self, value: Any) -> str:
        name = f"_k{len(self.constants)}"
        self.constants[name] = value
        return name

    def is_fallback(self, node: Node) -> bool:
        return self._emitter(node) is None

    # --- nodes ----------------------------------------------------------------

    def _emitter(self, node: Node) -> Callable[[Any], str] | None:
        """The method that emits ``node`` (None: its closure is called)."""
        if isinstance(node, Lit) and node.kind in ("int", "double", "string", "bool", "null"):
            return self._literal
        if isinstance(node, Ident):
            return self._variable
        if isinstance(node, Select) and field_path(node) is not None:
            return self._path
        if isinstance(node, Unary) and node.op == "!":
            return self._not
        if isinstance(node, Cond):
            return self._ternary
        if isinstance(node, Binary) and node.op in ("&&", "||"):
            return self._logic
        if isinstance(node, Binary) and node.op in ("==", "!=", "<", "<=", ">", ">=", "in", "+", "-", "*", "/", "%"):
            return self._binary
        if isinstance(node, Call) and node.is_macro and "exists" in self.helpers and self.helpers["exists"](node) is not None:
            return self._exact_floor
        if isinstance(node, Call) and not node.is_macro and node.target is None:
            if node.function == "has" and len(node.args) == 1 and isinstance(node.args[0], Select):
                return self._has
            if node.function in _HELPER_CALLS and node.function in self.helpers and self.helpers[node.function](node) is not None:
                return self._helper
        return None

    def value(self, node: Node) -> str:
        """An expression for ``node``'s value (a literal or a temporary), after the statements
        that compute it; they raise what the closure would raise."""
        emit = self._emitter(node)
        if emit is not None:
            return emit(node)
        out = self.temp()
        self.emit(f"{out} = {self.constant(self.closure(node))}(env, facts)")
        return out

    def _literal(self, node: Lit) -> str:
        # A name, not the literal: `1 is True` in the source would draw a SyntaxWarning.
        return repr(node.value) if node.kind in ("bool", "null") else self.constant(node.value)

    def _variable(self, node: Ident) -> str:
        out = self.temp()
        self.emit(f"{out} = env[{node.name!r}]")
        return out

    def _path(self, node: Select) -> str:
        names = field_path(node)
        assert names is not None
        out = self.temp()
        self.emit(f"{out} = env[{names[0]!r}]")
        for name in names[1:]:
            key = repr(name)
            # As native._path: a missing key is "no such key", a value that is not a map
            # gets _select()'s error.
            self.emit(f"if type({out}) is dict:")
            self.emit("    try:")
            self.emit(f"        {out} = {out}[{key}]")
            self.emit("    except KeyError:")
            self.emit(f"        raise KeyError({key}) from None")
            self.emit("else:")
            self.emit(f"    {out} = _select({out}, {key})")
        return out

    def _has(self, node: Call) -> str:
        select = node.args[0]
        assert isinstance(select, Select)
        operand = self.value(select.operand)
        out = self.temp()
        key = repr(select.name)
        self.emit(f"{out} = ({key} in {operand}) if type({operand}) is dict else _has({operand}, {key})")
        return out

    def _helper(self, node: Call) -> str:
        call, args = self.helpers[node.function](node)
        names = [self.constant(a) for a in args]
        out = self.temp()
        if node.function in ("emotion", "sound"):
            self.emit(f"{out} = facts.{call}({', '.join(names)})")
            return out
        # any_words/all_words: (phrases, all_of, helper method for a text that is not a string)
        text = self.value(node.args[0])
        phrases, all_of, method = names
        self.emit(
            f"{out} = facts.phrases_in({text}, {phrases}, all_of={all_of}) if type({text}) is str "
            f"else {method}(facts, {text}, [])"
        )
        return out

    def _exact_floor(self, node: Call) -> str:
        # As native._exists_floor: the highest value of the matching items against the floor,
        # or the comprehension itself (its closure) when an item cannot be compared.
        kind, role, labels, floor, strict = self.helpers["exists"](node)
        assert node.target is not None
        items, best, out = self.value(node.target), self.temp(), self.temp()
        role_labels = f"{self.constant(role)}, {self.constant(labels)}"
        facet = "emotions" if kind == "emotion" else "sounds"
        self.emit(f"if facts is not None and {items} is facts.{facet}:")
        self.emit(f"    {best} = facts.highest({self.constant(kind)}, {role_labels})")
        self.emit("else:")
        self.emit(f"    {best} = _highest({items}, {self.constant(GRADED_FIELD[kind])}, {role_labels})")
        self.emit(f"if {best} == _INF:")
        self.emit(f"    {out} = {self.constant(self.closure(node))}(env, facts)")
        self.emit("else:")
        self.emit(f"    {out} = {best} {'>' if strict else '>='} {self.constant(floor)}")
        return out

    def _not(self, node: Unary) -> str:
        operand = self.value(node.operand)
        out = self.temp()
        self.emit(f"if {operand} is True:")
        self.emit(f"    {out} = False")
        self.emit(f"elif {operand} is False:")
        self.emit(f"    {out} = True")
        self.emit("else:")
        self.emit("    raise _overload()")
        return out

    def _ternary(self, node: Cond) -> str:
        cond = self.value(node.cond)
        out = self.temp()
        self.emit(f"if {cond} is True:")
        self._nested(node.then, out)
        self.emit(f"elif {cond} is False:")
        self._nested(node.other, out)
        self.emit("else:")
        self.emit("    raise _overload()")
        return out

    def _nested(self, node: Node, out: str) -> None:
        self.indent += 1
        self.emit(f"{out} = {self.value(node)}")
        self.indent -= 1

    def _logic(self, node: Binary) -> str:  # && and ||
        # As native._logic: the absorbing value on either side wins over an error on the
        # other; else the right side's error, then the left's, then "no such overload".
        absorbing = "False" if node.op == "&&" else "True"
        left, error, out = self.temp(), self.temp(), self.temp()
        self.emit(f"{error} = None")
        self.emit("try:")
        self._nested(node.left, left)
        self.emit("except Exception as exc:  # absorbed if the right side decides")
        self.emit(f"    {left}, {error} = _RAISE, exc")
        self.emit(f"if {left} is {absorbing}:")
        self.emit(f"    {out} = {absorbing}")
        self.emit("else:")
        self.indent += 1
        right = self.value(node.right)
        self.emit(f"if {right} is {absorbing}:")
        self.emit(f"    {out} = {absorbing}")
        self.emit(f"elif {error} is not None:")
        self.emit(f"    raise {error}")
        self.emit(f"elif type({left}) is bool and type({right}) is bool:")
        self.emit(f"    {out} = {'True' if absorbing == 'False' else 'False'}")
        self.emit("else:")
        self.emit("    raise _overload()")
        self.indent -= 1
        return out

    def _binary(self, node: Binary) -> str:
        op, lit = node.op, node.right
        left = self.value(node.left)
        out = self.temp()
        # The literal fast paths of native._with_literal, inline.
        if op in ("==", "!=") and isinstance(lit, Lit) and lit.kind == "string":
            test = f"type({left}) is str and {left} == {lit.value!r}"
            self.emit(f"{out} = {test}" if op == "==" else f"{out} = not ({test})")
            return out
        if op in ("<", "<=", ">", ">=") and isinstance(lit, Lit) and lit.kind in ("int", "double"):
            floating = repr(float(lit.value))
            self.emit(
                f"{out} = ({left} {op} {floating}) if type({left}) is float and {left} == {left} "
                f"else {_RELATION_NAMES[op]}({left}, {lit.value!r})"
            )
            return out
        if op == "in" and isinstance(lit, ListExpr) and lit.items and all(isinstance(i, Lit) and i.kind == "string" for i in lit.items):
            texts = self.constant(frozenset(i.value for i in lit.items))  # type: ignore[attr-defined]
            items = self.constant([i.value for i in lit.items])  # type: ignore[attr-defined]
            self.emit(f"{out} = ({left} in {texts}) if type({left}) is str else _in({left}, {items})")
            return out
        right = self.value(node.right)
        if op == "==":
            self.emit(f"{out} = _eq({left}, {right})")
        elif op == "!=":
            self.emit(f"{out} = not _eq({left}, {right})")
        elif op == "in":
            self.emit(f"{out} = _in({left}, {right})")
        elif op in _RELATION_NAMES:
            self.emit(f"{out} = {_RELATION_NAMES[op]}({left}, {right})")
        else:
            self.emit(f"{out} = _arith({op!r}, {left}, {right})")
        return out
