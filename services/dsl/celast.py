"""A CEL parser for static analysis only: an AST with source spans.

The ``cel`` library compiles and evaluates expressions but exposes no syntax
tree, only the names an expression references. The rules engine needs more
than names to be "as safe as a compiler" and fast:

- field paths (``acoustics.silence_ration`` is a typo of a known field),
- the names comprehension macros bind (``e`` in ``x.exists(e, ...)``),
- nesting depth of comprehensions (a cost guardrail),
- the top-level clauses of a condition (``rules explain`` says which one failed),
- the facts a condition cannot be true without (the evaluation pre-filter).

This module parses the CEL grammar
(https://github.com/google/cel-spec/blob/master/doc/langdef.md#syntax) into
plain dataclasses. It never decides what an expression *means*: the library
stays the only evaluator. The loader parses an expression here only after the
library compiled it; should this parser ever reject what the library accepts,
the analysis degrades (no pre-filter, no field checks) instead of rejecting
the rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from services.dsl.errors import DslError

__all__ = [
    "Binary",
    "Call",
    "Cond",
    "CelSyntaxError",
    "Ident",
    "Index",
    "ListExpr",
    "Lit",
    "MapExpr",
    "MessageExpr",
    "Node",
    "Select",
    "Unary",
    "MACROS",
    "is_namespace",
    "parse",
    "scoped_walk",
    "walk",
]

#: Comprehension macros: ``target.macro(var, body)`` (``map`` also ``(var, filter, body)``).
MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})


class CelSyntaxError(DslError, ValueError):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(eq=False)
class Node:
    start: int = field(repr=False)
    end: int = field(repr=False)

    def children(self) -> Iterator[Node]:
        return iter(())


@dataclass(eq=False)
class Lit(Node):
    kind: str  # int, uint, double, string, bytes, bool, null
    value: Any


@dataclass(eq=False)
class Ident(Node):
    name: str


@dataclass(eq=False)
class Select(Node):
    operand: Node
    name: str

    def children(self) -> Iterator[Node]:
        yield self.operand


@dataclass(eq=False)
class Index(Node):
    operand: Node
    index: Node

    def children(self) -> Iterator[Node]:
        yield self.operand
        yield self.index


@dataclass(eq=False)
class Call(Node):
    function: str
    target: Node | None
    args: list[Node]

    def children(self) -> Iterator[Node]:
        if self.target is not None:
            yield self.target
        yield from self.args

    @property
    def is_macro(self) -> bool:
        return (
            self.target is not None
            and self.function in MACROS
            and len(self.args) in (2, 3)
            and isinstance(self.args[0], Ident)
        )

    @property
    def bound_name(self) -> str:
        """The name a comprehension macro binds (``e`` in ``x.exists(e, ...)``)."""
        var = self.args[0]
        assert self.is_macro and isinstance(var, Ident), "only comprehension macros bind a name"
        return var.name


@dataclass(eq=False)
class ListExpr(Node):
    items: list[Node]

    def children(self) -> Iterator[Node]:
        yield from self.items


@dataclass(eq=False)
class MapExpr(Node):
    entries: list[tuple[Node, Node]]

    def children(self) -> Iterator[Node]:
        for key, value in self.entries:
            yield key
            yield value


@dataclass(eq=False)
class MessageExpr(Node):
    type_name: str
    fields: list[tuple[str, Node]]

    def children(self) -> Iterator[Node]:
        for _, value in self.fields:
            yield value


@dataclass(eq=False)
class Unary(Node):
    op: str  # "!" or "-"
    operand: Node

    def children(self) -> Iterator[Node]:
        yield self.operand


@dataclass(eq=False)
class Binary(Node):
    op: str  # || && == != < <= > >= in + - * / %
    left: Node
    right: Node

    def children(self) -> Iterator[Node]:
        yield self.left
        yield self.right


@dataclass(eq=False)
class Cond(Node):
    cond: Node
    then: Node
    other: Node

    def children(self) -> Iterator[Node]:
        yield self.cond
        yield self.then
        yield self.other


def field_path(node: Node) -> list[str] | None:
    """``context.queue`` -> ["context", "queue"]: a name and the fields selected from it
    (None: the innermost operand is not a name)."""
    names: list[str] = []
    while isinstance(node, Select):
        names.append(node.name)
        node = node.operand
    if not isinstance(node, Ident):
        return None
    names.append(node.name)
    return names[::-1]


def walk(node: Node) -> Iterator[Node]:
    """Every node of the tree, parents before children."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(list(current.children())))


def scoped_walk(root: Node) -> Iterator[tuple[Node, Node | None, frozenset[str]]]:
    """Every node of the tree (parents before children) with its parent and the names that
    comprehensions bind around it. A macro's bound name itself is not yielded: it is a
    binding, not a read."""
    stack: list[tuple[Node, Node | None, frozenset[str]]] = [(root, None, frozenset())]
    while stack:
        node, parent, scope = stack.pop()
        yield node, parent, scope
        if isinstance(node, Call) and node.is_macro:
            assert node.target is not None
            inner = scope | {node.bound_name}
            children = [(node.target, scope), *((arg, inner) for arg in node.args[1:])]
        else:
            children = [(child, scope) for child in node.children()]
        stack.extend((child, node, names) for child, names in reversed(children))


def is_namespace(node: Node, parent: Node | None, namespaces: frozenset[str]) -> bool:
    """Whether ``node`` is the namespace of a function call (``math`` in ``math.greatest(x)``)."""
    return isinstance(node, Ident) and isinstance(parent, Call) and parent.target is node and node.name in namespaces


# --- tokens ------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*)
    |(?P<string>(?:[rR][bB]?|[bB][rR]?)?(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"))
    |(?P<double>(?:\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\.\d+(?:[eE][+-]?\d+)?))
    |(?P<int>(?:0[xX][0-9a-fA-F]+|\d+)[uU]?)
    |(?P<ident>[_a-zA-Z][_a-zA-Z0-9]*)
    |(?P<op>==|!=|<=|>=|&&|\|\||[<>!+\-*/%?:.,\[\](){}])
    """,
    re.VERBOSE | re.DOTALL,
)
_RESERVED = frozenset(
    {"as", "break", "const", "continue", "else", "for", "function", "if", "import", "let", "loop",
     "package", "namespace", "return", "var", "void", "while"}
)  # fmt: skip


@dataclass(frozen=True)
class _Tok:
    kind: str  # string, double, int, ident, op, eof
    text: str
    start: int
    end: int


def _tokens(source: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(source):
        found = _TOKEN.match(source, pos)
        if not found:
            raise CelSyntaxError(f"unexpected character {source[pos]!r}", pos)
        kind = found.lastgroup or ""
        if kind != "ws":
            out.append(_Tok(kind, found.group(), pos, found.end()))
        pos = found.end()
    out.append(_Tok("eof", "", len(source), len(source)))
    return out


_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", "'": "'", '"': '"', "`": "`", "?": "?",
}  # fmt: skip
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-3][0-7]{2}|.)", re.DOTALL)


def _string_value(text: str) -> tuple[str, Any]:
    prefix = ""
    while text[0] in "rRbB":
        prefix += text[0].lower()
        text = text[1:]
    quote = text[:3] if text[:3] in ("'''", '"""') else text[0]
    body = text[len(quote) : -len(quote)]
    if "r" not in prefix:

        def unescape(m: re.Match[str]) -> str:
            code = m.group(1)
            if code[0] in "xuU":
                return chr(int(code[1:], 16))
            if code[0] in "0123" and len(code) == 3:
                return chr(int(code, 8))
            return _ESCAPES.get(code, "\\" + code)

        body = _ESCAPE.sub(unescape, body)
    if "b" in prefix:
        return "bytes", body.encode("utf-8", "surrogatepass")
    return "string", body


# --- parser ------------------------------------------------------------------

_RELATIONS = frozenset({"==", "!=", "<", "<=", ">", ">=", "in"})
MAX_DEPTH = 250  # recursion guard: the caller caps expression length long before this


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.toks = _tokens(source)
        self.i = 0
        self.depth = 0

    # helpers
    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def at(self, text: str) -> bool:
        t = self.tok
        return (t.kind == "op" and t.text == text) or (t.kind == "ident" and t.text == text == "in")

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect(self, text: str) -> _Tok:
        if not self.at(text):
            raise self.error(f"expected {text!r}")
        return self.take()

    def error(self, message: str) -> CelSyntaxError:
        t = self.tok
        got = "end of input" if t.kind == "eof" else repr(t.text)
        return CelSyntaxError(f"{message}, got {got}", t.start)

    def parse(self) -> Node:
        node = self.expr()
        if self.tok.kind != "eof":
            raise self.error("expected end of expression")
        return node

    # grammar
    def expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error("expression nested too deeply")
        try:
            cond = self.binary(0)
            if not self.at("?"):
                return cond
            self.take()
            then = self.binary(0)
            self.expect(":")
            other = self.expr()
            return Cond(cond.start, other.end, cond, then, other)
        finally:
            self.depth -= 1

    _LEVELS: tuple[frozenset[str], ...] = (
        frozenset({"||"}),
        frozenset({"&&"}),
        _RELATIONS,
        frozenset({"+", "-"}),
        frozenset({"*", "/", "%"}),
    )

    def binary(self, level: int) -> Node:
        if level == len(self._LEVELS):
            return self.unary()
        ops = self._LEVELS[level]
        left = self.binary(level + 1)
        while (self.tok.kind == "op" and self.tok.text in ops) or (self.tok.kind == "ident" and self.tok.text in ops):
            op = self.take().text
            right = self.binary(level + 1)
            left = Binary(left.start, right.end, op, left, right)
        return left

    def unary(self) -> Node:
        if self.at("!") or self.at("-"):
            t = self.take()
            operand = self.unary()
            return Unary(t.start, operand.end, t.text, operand)
        return self.member()

    def member(self) -> Node:
        node = self.primary()
        while True:
            if self.at("."):
                self.take()
                name = self.ident_token()
                if self.at("("):
                    args, end = self.args("(", ")")
                    node = Call(node.start, end, name.text, node, args)
                else:
                    node = Select(node.start, name.end, node, name.text)
            elif self.at("["):
                self.take()
                index = self.expr()
                end = self.expect("]").end
                node = Index(node.start, end, node, index)
            elif self.at("{") and _qualified_name(node) is not None:
                node = self.message(node.start, _qualified_name(node) or "")
            else:
                return node

    def ident_token(self) -> _Tok:
        t = self.tok
        if t.kind != "ident" or t.text in ("true", "false", "null", "in") or t.text in _RESERVED:
            raise self.error("expected an identifier")
        return self.take()

    def args(self, open_: str, close: str) -> tuple[list[Node], int]:
        self.expect(open_)
        items: list[Node] = []
        while not self.at(close):
            items.append(self.expr())
            if not self.at(","):
                break
            self.take()
        return items, self.expect(close).end

    def message(self, start: int, name: str) -> Node:
        self.expect("{")
        fields: list[tuple[str, Node]] = []
        while not self.at("}"):
            key = self.ident_token().text
            self.expect(":")
            fields.append((key, self.expr()))
            if not self.at(","):
                break
            self.take()
        end = self.expect("}").end
        return MessageExpr(start, end, name, fields)

    def primary(self) -> Node:
        t = self.tok
        if t.kind == "op" and t.text == ".":
            self.take()
            name = self.ident_token()
            if self.at("("):
                args, end = self.args("(", ")")
                return Call(t.start, end, name.text, None, args)
            return Ident(t.start, name.end, name.text)
        if t.kind == "ident":
            if t.text in ("true", "false"):
                self.take()
                return Lit(t.start, t.end, "bool", t.text == "true")
            if t.text == "null":
                self.take()
                return Lit(t.start, t.end, "null", None)
            name = self.ident_token()
            if self.at("("):
                args, end = self.args("(", ")")
                return Call(name.start, end, name.text, None, args)
            return Ident(name.start, name.end, name.text)
        if t.kind == "string":
            self.take()
            kind, value = _string_value(t.text)
            return Lit(t.start, t.end, kind, value)
        if t.kind == "double":
            self.take()
            return Lit(t.start, t.end, "double", float(t.text))
        if t.kind == "int":
            self.take()
            text = t.text.rstrip("uU")
            value = int(text, 16) if text[:2].lower() == "0x" else int(text)
            return Lit(t.start, t.end, "uint" if text != t.text else "int", value)
        if self.at("("):
            self.take()
            inner = self.expr()
            # The span covers the parentheses: clause texts cut from it stay balanced.
            inner.start, inner.end = t.start, self.expect(")").end
            return inner
        if self.at("["):
            items, end = self.args("[", "]")
            return ListExpr(t.start, end, items)
        if self.at("{"):
            self.take()
            entries: list[tuple[Node, Node]] = []
            while not self.at("}"):
                key = self.expr()
                self.expect(":")
                entries.append((key, self.expr()))
                if not self.at(","):
                    break
                self.take()
            end = self.expect("}").end
            return MapExpr(t.start, end, entries)
        raise self.error("expected an expression")


def _qualified_name(node: Node) -> str | None:
    if isinstance(node, Ident):
        return node.name
    if isinstance(node, Select):
        inner = _qualified_name(node.operand)
        return None if inner is None else f"{inner}.{node.name}"
    return None


def parse(source: str) -> Node:
    """Parse one CEL expression; raises :class:`CelSyntaxError` with an offset."""
    return _Parser(source).parse()
