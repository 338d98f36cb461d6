"""CEL conditions and ``{{ path }}`` templates: compile-time checks and runtime helpers.

Both read the same variables, so both are checked against the same names and
fields at load time: a typo (``acoustic.silence_ratio``,
``acoustics.silence_ration``) must fail the load, not turn into an evaluation
error on every event in production.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cel

from services.dsl.cel_checks import CEL_FUNCTIONS, compile_checked, line_col
from services.dsl.errors import ExpressionError
from services.rules import fields
from services.rules.analysis import Analysis, analyse
from services.rules.fields import ListOf, MapOf, Open, Record, Scalar, Shape
from services.rules.helpers import HELPERS

#: Names a rule's ``when`` may use.
VARIABLES: tuple[str, ...] = tuple(fields.VARIABLES)
#: Names templates may use: the condition's, plus the evidence (``match``) and ``rule``.
TEMPLATE_VARIABLES: tuple[str, ...] = tuple(fields.TEMPLATE_VARIABLES)
#: Functions a condition may call: CEL's own and the rule helpers.
KNOWN_FUNCTIONS = CEL_FUNCTIONS | frozenset(HELPERS)


@dataclass(frozen=True)
class Condition:
    """A compiled ``when``: the library's program and what the loader learned about it."""

    program: cel.Program
    analysis: Analysis

    @property
    def source(self) -> str:
        return self.analysis.source

    def execute(self, context: cel.Context) -> Any:
        return self.program.execute(context)


def compile_condition(source: str) -> Condition:
    """Compile a ``when`` expression and check every name, field and function it uses."""
    program = compile_checked(source, VARIABLES, KNOWN_FUNCTIONS)
    analysis, findings = analyse(source)
    if findings:
        raise ExpressionError("; ".join(f"{line_col(source, f.offset)}: {f.message}" for f in findings[:3]))
    return Condition(program=program, analysis=analysis)


# --- templates ---------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$")
NO_VALUE = "<no value>"  # what Go templates (Alertmanager's) print for a missing field


def check_path(path: Sequence[str], known: Mapping[str, Shape]) -> str | None:
    """Why a template path cannot exist, or None."""
    shape: Shape = known[path[0]]
    where = path[0]
    for part in path[1:]:
        if isinstance(shape, Open):
            return None
        if isinstance(shape, MapOf):
            shape = shape.value
        elif isinstance(shape, ListOf):
            if not part.isdigit():
                return f"{where} is a list: use an index, like {where}.0.{part}"
            shape = shape.item
        elif isinstance(shape, Record):
            if part in shape.fields:
                shape = shape.fields[part]
            elif shape.extension is not None and shape.extension.match(part):
                return None
            else:
                close = difflib.get_close_matches(part, list(shape.fields), n=1)
                hint = f", did you mean {close[0]!r}?" if close else f" (known: {', '.join(shape.fields)})"
                return f"unknown field {part!r} of {where}{hint}"
        elif isinstance(shape, Scalar):
            return f"{where} is a {shape.kind}: it has no field {part!r}"
        where = f"{where}.{part}"
    return None


@dataclass(frozen=True)
class Template:
    """A string with ``{{ path.to.field }}`` placeholders; substitution only, no logic."""

    source: str
    paths: tuple[tuple[str, ...], ...]

    @classmethod
    def parse(cls, source: str, known: Mapping[str, Shape] = fields.TEMPLATE_VARIABLES) -> Template:
        paths: list[tuple[str, ...]] = []
        for found in _PLACEHOLDER.finditer(source):
            inner = found.group(1).strip()
            if not _PATH.match(inner):
                raise ExpressionError(
                    f"template placeholder {found.group(0)!r} is not a field path like {{{{ context.callid }}}}"
                )
            path = tuple(inner.split("."))
            if path[0] not in known:
                raise ExpressionError(
                    f"unknown template variable {path[0]!r} in {found.group(0)!r} (known: {', '.join(known)})"
                )
            problem = check_path(path, known)
            if problem:
                raise ExpressionError(f"{problem} in {found.group(0)!r}")
            paths.append(path)
        rest = _PLACEHOLDER.sub("", source)
        if "{{" in rest or "}}" in rest:
            raise ExpressionError("unbalanced '{{' or '}}' in template")
        return cls(source=source, paths=tuple(paths))

    @functools.cached_property
    def _compiled(self) -> tuple[str, tuple[tuple[_Getter, str], ...]]:
        """(leading literal, (placeholder's getter, literal after it)...): built once, at first render.

        Split from ``source`` (not ``paths``), as the renderer always did.
        """
        pieces = _PLACEHOLDER.split(self.source)
        slots = tuple((_getter(pieces[i].strip().split(".")), pieces[i + 1]) for i in range(1, len(pieces), 2))
        return pieces[0], slots

    @functools.cached_property
    def lone_getter(self) -> _Getter | None:
        """For a template that is one placeholder and nothing else ("{{ match.start }}"): its getter."""
        if len(self.paths) == 1 and _PLACEHOLDER.fullmatch(self.source.strip()):
            return _getter(self.paths[0])
        return None

    def __getstate__(self) -> dict[str, Any]:
        # The fields only: the cached getters are closures (not picklable), rebuilt at first render.
        return {"source": self.source, "paths": self.paths}

    def render(self, variables: Mapping[str, Any]) -> str:
        return self.render_over(_NO_OVERLAY, variables)

    def render_over(self, overlay: Mapping[str, Any], variables: Mapping[str, Any]) -> str:
        """render({**variables, **overlay}), without building the merged mapping per render.

        Decisions render several templates against the event's variables plus the
        rule's ``match`` and ``rule``: copying the variables for each one cost more
        than the rendering.
        """
        if not self.paths:
            return self.source
        out, slots = self._compiled
        for get, literal in slots:
            value = get(overlay, variables)
            # Concatenation, not a list and join: templates have one to three placeholders.
            out = out + (value if value.__class__ is str else _format(value)) + literal
        return out


#: (overlay, variables) -> the value at a placeholder's path in {**variables, **overlay}.
_Getter = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]
#: A path as (key, list index or None) steps.
_Steps = tuple[tuple[str, int | None], ...]
_ABSENT: Any = object()  # not in a mapping (a field may hold None, or even NO_VALUE)
_NO_OVERLAY: Mapping[str, Any] = {}


def _steps(path: Sequence[str]) -> _Steps:
    # Parts are names or [0-9]+ (see _PATH): the list index is worked out once, here.
    return tuple((part, int(part) if part.isdigit() else None) for part in path)


def _getter(path: Sequence[str]) -> _Getter:
    """The value at ``path`` (NO_VALUE where a part is missing): the overlay's, else the variables'."""
    root, steps = path[0], _steps(path)
    rest = steps[1:]
    if len(rest) == 1:
        # "{{ context.callid }}", the usual shape: plain dicts read here, without _walk()'s loop.
        key = rest[0][0]

        def get_field(overlay: Mapping[str, Any], variables: Mapping[str, Any]) -> Any:
            # `in` and [], not .get(): a method call costs twice as much, per placeholder.
            if root in overlay:
                value = overlay[root]
            elif variables.__class__ is not dict:
                return _walk(variables, steps)
            elif root in variables:
                value = variables[root]
            else:
                return NO_VALUE
            if value.__class__ is dict:
                return value[key] if key in value else NO_VALUE
            return _walk(value, rest)

        return get_field

    def get(overlay: Mapping[str, Any], variables: Mapping[str, Any]) -> Any:
        value = overlay.get(root, _ABSENT)
        return _walk(variables, steps) if value is _ABSENT else _walk(value, rest)

    return get


def _walk(value: Any, steps: _Steps) -> Any:
    """The value at ``steps`` below ``value``, NO_VALUE where a step is missing."""
    for key, index in steps:
        if value.__class__ is dict:  # nearly always: skips the slower Mapping ABC check
            value = value.get(key, _ABSENT)
            if value is _ABSENT:
                return NO_VALUE
        elif isinstance(value, Mapping):
            if key not in value:
                return NO_VALUE
            value = value[key]
        elif index is not None and isinstance(value, list) and index < len(value):
            value = value[index]
        else:
            return NO_VALUE
    return value


def _format(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)  # true/false/null, as in the YAML and CEL the author wrote
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class DataTemplate:
    """A JSON value whose strings are templates (``emit``'s data)."""

    value: Any

    @classmethod
    def parse(cls, value: Any) -> DataTemplate:
        return cls(_parse_data(value))

    def render(self, variables: Mapping[str, Any]) -> Any:
        return _render_data(self.value, _NO_OVERLAY, variables)

    def render_over(self, overlay: Mapping[str, Any], variables: Mapping[str, Any]) -> Any:
        """render({**variables, **overlay}), like Template.render_over."""
        return _render_data(self.value, overlay, variables)


def _parse_data(value: Any) -> Any:
    if isinstance(value, str):
        return Template.parse(value)
    if isinstance(value, dict):
        return {k: _parse_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_parse_data(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    raise ExpressionError(f"emit data holds a {type(value).__name__}; only JSON values are allowed")


def _render_data(value: Any, overlay: Mapping[str, Any], variables: Mapping[str, Any]) -> Any:
    if isinstance(value, Template):
        get = value.lone_getter
        if get is not None:
            # A lone placeholder keeps its JSON type: "{{ match.start }}" -> 12.5, not "12.5".
            raw = get(overlay, variables)
            return None if raw is NO_VALUE else copy.deepcopy(raw)
        return value.render_over(overlay, variables)
    if isinstance(value, dict):
        return {k: _render_data(v, overlay, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_data(v, overlay, variables) for v in value]
    return value
