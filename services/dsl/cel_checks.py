"""CEL expressions checked at load time, so a typo fails the file, not every event.

The ``cel`` library compiles and evaluates CEL but resolves names only when it runs an
expression ("Undefined variable or function"). :func:`compile_checked` compiles with the
library, then refuses unknown variables and functions using the names the library reports
and the syntax tree of :mod:`.celast` (which knows what comprehensions bind). Rule
conditions and source adapters both compile through here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import cel
import cel.stdlib

from services.dsl import celast
from services.dsl.celast import Ident
from services.dsl.errors import ExpressionError

#: Names that look like variables to the library but are not: CEL type names used as
#: values (``type(x) == string``).
TYPE_NAMES = frozenset({"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"})
#: cel.stdlib's namespaced functions (``math.greatest``) and their namespaces.
STDLIB_QUALIFIED = frozenset(name for name in cel.stdlib.STDLIB_FUNCTIONS if "." in name)
NAMESPACES = frozenset(name.split(".")[0] for name in STDLIB_QUALIFIED)
# Functions the library's Rust core implements (it has no list of them to ask).
_CORE_FUNCTIONS = frozenset(
    {
        "size", "contains", "startsWith", "endsWith", "matches",
        "string", "bytes", "double", "int", "uint", "dyn", "type", "timestamp", "duration",
        "getFullYear", "getMonth", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear",
        "getHours", "getMinutes", "getSeconds", "getMilliseconds",
    }
)  # fmt: skip
_STDLIB_FUNCTIONS = frozenset(name.split(".")[-1] for name in cel.stdlib.STDLIB_FUNCTIONS)
#: CEL's own functions (core and stdlib), without any application's helpers.
CEL_FUNCTIONS = _CORE_FUNCTIONS | _STDLIB_FUNCTIONS | frozenset({"has"})

_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # operators (`_&&_`, `@in`, `!_`) are not
# Fallback only (when celast cannot read an expression the library compiled):
# comprehension macros bind a name that the library lists among the variables.
_MACRO_BINDING = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
# How the library reports an exception raised by a Python function (an application's helper).
_FUNCTION_ERROR = re.compile(r"^Function '\w+' error: Python function call failed: \w+: ", re.DOTALL)
_PARSE_ERROR = re.compile(r"ERROR: <input>:(\d+):(\d+): (?:Syntax error: )?(.*)")


def compile_checked(source: str, variables: Sequence[str], functions: Iterable[str]) -> cel.Program:
    """Compile with the library, then refuse names it would only reject at run time."""
    try:
        program = cel.compile(source)
    except ValueError as exc:
        raise ExpressionError(_syntax_message(str(exc))) from exc
    refs = program.references()
    unknown = unknown_variables(source, variables)
    if unknown is None:  # celast could not read it: the library's list of names
        bound = set(_MACRO_BINDING.findall(source))
        unknown = sorted(
            name
            for name in refs["variables"]
            if name not in variables and name not in bound and name not in TYPE_NAMES and name not in NAMESPACES
        )
    if unknown:
        raise ExpressionError(
            f"unknown CEL variable{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(known: {', '.join(variables)})"
        )
    known_functions = frozenset(functions)
    bad_functions = sorted(f for f in refs["functions"] if _IDENT.match(f) and f not in known_functions)
    if bad_functions:
        raise ExpressionError(f"unknown CEL function{'s' if len(bad_functions) > 1 else ''} {', '.join(bad_functions)}")
    return program


def unknown_variables(source: str, known: Iterable[str]) -> list[str] | None:
    """Names read that are neither ``known`` nor bound by a comprehension in scope; ``None``
    when :mod:`.celast` cannot read the expression."""
    try:
        root = celast.parse(source)
    except celast.CelSyntaxError:
        return None
    names = frozenset(known)
    found = {
        node.name
        for node, parent, scope in celast.scoped_walk(root)
        if isinstance(node, Ident)
        and node.name not in names
        and node.name not in scope
        and node.name not in TYPE_NAMES
        and not celast.is_namespace(node, parent, NAMESPACES)
    }
    return sorted(found)


def _syntax_message(text: str) -> str:
    # The library's text repeats the whole source and draws a caret under it; the file
    # position already points at the expression, so keep the first error's position
    # within the expression and its cause.
    found = _PARSE_ERROR.search(text)
    if not found:
        return f"CEL syntax error: {text.splitlines()[0] if text else 'unknown'}"
    line, col, cause = found.groups()
    return f"CEL syntax error: {line}:{col}: {cause.strip()}"


def line_col(source: str, offset: int) -> str:
    """``line:column`` (1-based) of a character offset in an expression."""
    line = source.count("\n", 0, offset) + 1
    column = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return f"{line}:{column}"


def runtime_message(exc: BaseException) -> str:
    """A one-line cause for a CEL evaluation failure."""
    if isinstance(exc, KeyError):
        # The library raises a bare KeyError('field') for a missing map key.
        return f"no such key: {exc.args[0] if exc.args else '?'}"
    text = str(exc).strip() or type(exc).__name__
    text = _FUNCTION_ERROR.sub("", text)
    # Some messages carry a paragraph of advice after the first sentence.
    return text.split(". ", 1)[0].rstrip(".")


def new_context(variables: dict[str, object]) -> cel.Context:
    """An evaluation context with ``variables`` and cel.stdlib's functions.

    cel.stdlib's functions are opt-in in the library; without them common string helpers
    (lowerAscii, split, join) are "undefined" at run time.
    """
    context = cel.Context(dict(variables))
    cel.stdlib.add_stdlib_to_context(context)
    return context
