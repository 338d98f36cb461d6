"""CEL conditions and ``{{ path }}`` templates: compile-time checks and runtime helpers.

Both read the same variables, so both are checked against the same names at
load time: a typo (``acoustic.silence_ratio``) must fail the load, not turn
into an evaluation error on every event in production.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cel
import cel.stdlib

#: Names a rule's ``when`` and templates may use.
VARIABLES: tuple[str, ...] = ("event", "data", "facets", "acoustics", "context", "caption")

# Program.variables() reports more than our variables: CEL type names used as
# values (`type(x) == string`) and the namespaces of cel.stdlib's dotted
# functions (`math.greatest` shows up as variable `math`).
_TYPE_NAMES = frozenset({"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"})
_NAMESPACES = frozenset(name.split(".")[0] for name in cel.stdlib.STDLIB_FUNCTIONS if "." in name)
# Functions the Rust core implements. The library resolves functions only at
# run time ("Undefined variable or function"), so without this list a typo in
# a function name would be a runtime error on every event.
_NATIVE_FUNCTIONS = frozenset(
    {
        "size", "contains", "startsWith", "endsWith", "matches",
        "string", "bytes", "double", "int", "uint", "dyn", "type", "timestamp", "duration",
        "getFullYear", "getMonth", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear",
        "getHours", "getMinutes", "getSeconds", "getMilliseconds",
    }
)  # fmt: skip
_STDLIB_FUNCTIONS = frozenset(name.split(".")[-1] for name in cel.stdlib.STDLIB_FUNCTIONS)
_KNOWN_FUNCTIONS = _NATIVE_FUNCTIONS | _STDLIB_FUNCTIONS
_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # operators (`_&&_`, `@in`, `!_`) are not
# Comprehension macros bind a name (`e` in `x.exists(e, ...)`) that variables()
# also lists; the library exposes no AST, so the bound names are read from the source.
_MACRO_BINDING = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
_PARSE_ERROR = re.compile(r"ERROR: <input>:(\d+):(\d+): (?:Syntax error: )?(.*)")


class ExpressionError(ValueError):
    """A condition or template that cannot be accepted; the message is for the rule author."""


def compile_condition(source: str) -> cel.Program:
    """Compile a ``when`` expression and check every name it uses."""
    try:
        program = cel.compile(source)
    except ValueError as exc:
        raise ExpressionError(_syntax_message(str(exc))) from exc
    refs = program.references()
    bound = set(_MACRO_BINDING.findall(source))
    unknown = sorted(
        name
        for name in refs["variables"]
        if name not in VARIABLES and name not in bound and name not in _TYPE_NAMES and name not in _NAMESPACES
    )
    if unknown:
        raise ExpressionError(
            f"unknown CEL variable{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(known: {', '.join(VARIABLES)})"
        )
    bad_functions = sorted(f for f in refs["functions"] if _IDENT.match(f) and f not in _KNOWN_FUNCTIONS)
    if bad_functions:
        raise ExpressionError(f"unknown CEL function{'s' if len(bad_functions) > 1 else ''} {', '.join(bad_functions)}")
    return program


def _syntax_message(text: str) -> str:
    # The library's text repeats the whole source and draws a caret under it;
    # the file position already points at the expression, so keep the first
    # error's position within the expression and its cause.
    found = _PARSE_ERROR.search(text)
    if not found:
        return f"CEL syntax error: {text.splitlines()[0] if text else 'unknown'}"
    line, col, cause = found.groups()
    return f"CEL syntax error: {line}:{col}: {cause.strip()}"


def new_context(variables: Mapping[str, Any]) -> cel.Context:
    """An evaluation context: our variables plus cel.stdlib's extra functions."""
    context = cel.Context(dict(variables))
    # Opt-in in the library; without them common string helpers (lowerAscii,
    # split, join) used on captions are "undefined" at run time.
    cel.stdlib.add_stdlib_to_context(context)
    return context


def runtime_message(exc: BaseException) -> str:
    """A one-line cause for a CEL evaluation failure."""
    if isinstance(exc, KeyError):
        # The library raises a bare KeyError('field') for a missing map key.
        return f"no such key: {exc.args[0] if exc.args else '?'}"
    text = str(exc).strip() or type(exc).__name__
    # Some messages carry a paragraph of advice after the first sentence.
    return text.split(". ", 1)[0].rstrip(".")


# --- templates ---------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$")
NO_VALUE = "<no value>"  # what Go templates (Alertmanager's) print for a missing field


@dataclass(frozen=True)
class Template:
    """A string with ``{{ path.to.field }}`` placeholders; substitution only, no logic."""

    source: str
    paths: tuple[tuple[str, ...], ...]

    @classmethod
    def parse(cls, source: str) -> Template:
        paths: list[tuple[str, ...]] = []
        for found in _PLACEHOLDER.finditer(source):
            inner = found.group(1).strip()
            if not _PATH.match(inner):
                raise ExpressionError(
                    f"template placeholder {found.group(0)!r} is not a field path like {{{{ context.callid }}}}"
                )
            path = tuple(inner.split("."))
            if path[0] not in VARIABLES:
                raise ExpressionError(
                    f"unknown template variable {path[0]!r} in {found.group(0)!r} (known: {', '.join(VARIABLES)})"
                )
            paths.append(path)
        rest = _PLACEHOLDER.sub("", source)
        if "{{" in rest or "}}" in rest:
            raise ExpressionError("unbalanced '{{' or '}}' in template")
        return cls(source=source, paths=tuple(paths))

    def render(self, variables: Mapping[str, Any]) -> str:
        if not self.paths:
            return self.source
        return _PLACEHOLDER.sub(lambda m: _format(_lookup(variables, m.group(1).strip().split("."))), self.source)


def _lookup(variables: Mapping[str, Any], path: list[str]) -> Any:
    value: Any = variables
    for part in path:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return NO_VALUE
    return value


def _format(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)  # true/false/null, as in the YAML and CEL the author wrote
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)
