"""Files as YAML with positions: parse once, keep the node tree.

Validation happens on plain Python data (pydantic's strict mode wants real
``dict``/``str``/``float``, not ruamel's subclasses), while the ruamel node
tree is kept beside it so any error's location path (``rules[0].when``) can be
turned back into the line and column an operator sees in their editor.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from services.dsl.errors import DslError, FileError, Position

Loc = Sequence[str | int]


def format_loc(loc: Loc) -> str:
    """``("rules", 0, "when")`` -> ``rules[0].when``, the spelling used in messages."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True)
class YamlDocument:
    path: Path
    text: str
    data: Any  # plain Python: dict, list, str, int, float, bool, None
    root: Any  # ruamel node tree, for positions only

    def position(self, loc: Loc, *, key: bool = False) -> Position:
        """Where ``loc`` is in the file; the nearest existing ancestor when it is missing.

        ``key=True`` points at the mapping key rather than its value (for "unknown
        field" errors the key is the culprit).
        """
        node = self.root
        pos = _container_position(node)
        for i, part in enumerate(loc):
            last = i == len(loc) - 1
            if isinstance(node, CommentedMap) and part in node:
                key_line, key_col, value_line, value_col = node.lc.data[part]
                if last and key:
                    pos = Position(key_line + 1, key_col + 1)
                else:
                    pos = Position(value_line + 1, value_col + 1)
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                line, col = node.lc.data[part]
                pos = Position(line + 1, col + 1)
                node = node[part]
            else:
                break
        return pos

    def error(self, loc: Loc, message: str, *, key: bool = False) -> FileError:
        pos = self.position(loc, key=key)
        where = format_loc(loc)
        return FileError(self.path, pos.line, pos.column, f"{where}: {message}" if where else message)


def _container_position(node: Any) -> Position:
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return Position(1, 1)
    return Position(lc.line + 1, lc.col + 1)


def parse_yaml(path: Path, text: str) -> YamlDocument:
    """Parse one file; raise :class:`FileError` at the syntax error's position."""
    # Round-trip mode: the only ruamel mode that records line/column on nodes.
    # YAML 1.2 (ruamel's default) also spares us YAML 1.1's `no: false` surprises.
    yaml = YAML(typ="rt")
    try:
        root = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = f"invalid YAML: {exc.problem or exc.context}"
        if exc.problem and exc.context:
            message += f" ({exc.context}"
            if exc.context_mark is not None:
                message += f" at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
            message += ")"
        raise FileError(path, line, col, message) from exc
    except RecursionError as exc:
        raise FileError(path, 1, 1, f"invalid YAML: lists and maps nested more than {MAX_DEPTH} deep") from exc
    except Exception as exc:  # ruamel raises plain ValueError etc. for e.g. `!!int x`
        raise FileError(path, 1, 1, f"invalid YAML: {exc}") from exc
    try:
        data = to_plain(root)
    except _TooLarge as exc:
        raise FileError(path, 1, 1, f"too large: {exc}") from exc
    return YamlDocument(path=path, text=text, data=data, root=root)


#: Values (scalars, lists, maps) a file may hold once its aliases are expanded: a rule set of
#: hundreds of rules holds thousands, while aliases of aliases let a few hundred bytes hold
#: millions ("billion laughs").
MAX_VALUES = 100_000
#: Lists and maps nested in one another, at most.
MAX_DEPTH = 64


class _TooLarge(DslError):
    pass


def to_plain(node: Any) -> Any:
    """ruamel's round-trip types -> builtin types (same values, no formatting baggage), with
    aliases expanded, at most :data:`MAX_VALUES` values nested :data:`MAX_DEPTH` deep."""
    count = 0

    def plain(value: Any, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            raise _TooLarge(f"more than {MAX_VALUES:,} values once aliases are expanded")
        if isinstance(value, dict | list) and depth >= MAX_DEPTH:
            raise _TooLarge(f"lists and maps nested more than {MAX_DEPTH} deep")
        if isinstance(value, dict):
            return {plain(k, depth + 1): plain(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v, depth + 1) for v in value]
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, str):
            return str(value)
        if isinstance(value, int):
            # ScalarBoolean subclasses int; anchored booleans come back as it.
            return bool(value) if type(value).__name__ == "ScalarBoolean" else int(value)
        if isinstance(value, float):
            return float(value)
        return value  # None, timestamps, tagged scalars: left for the schema to reject

    return plain(node, 0)


# --- pydantic errors -> positions -------------------------------------------------------


def schema_errors(doc: YamlDocument, exc: ValidationError, prefix: Loc, model: type[BaseModel]) -> list[FileError]:
    errors = []
    for err in exc.errors(include_url=False):
        inner: tuple[str | int, ...] = tuple(err["loc"])
        kind = err["type"]
        ctx = err.get("ctx") or {}
        key = False
        if kind == "extra_forbidden":
            key = True
            message = _unknown_field(model, inner)
        elif kind == "missing":
            message = "missing required field"
        elif "field" in ctx:  # our custom errors that blame a key (see schema.ActionSpec)
            inner = (*inner, ctx["field"])
            key = True
            message = err["msg"]
        elif kind == "value_error":
            message = str(ctx.get("error", err["msg"]))
        elif kind == "literal_error":
            message = f"{err['msg']} (got {err['input']!r})"
        elif kind in ("model_type", "model_attributes_type", "dict_type") and not inner:
            message = f"expected a mapping with {', '.join(_field_names(model))}"
        else:
            message = err["msg"]
        errors.append(doc.error((*prefix, *inner), message, key=key))
    return errors


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _unknown_field(model: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    owner = _model_at(model, loc[:-1])
    if owner is None:
        return "unknown field"
    known = _field_names(owner)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if close:
        return f"unknown field, did you mean {close[0]!r}?"
    return f"unknown field (known: {', '.join(known)})"


def _model_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model that validates the value at ``loc`` (for the list of its fields)."""
    annotation: Any = model
    for part in loc:
        annotation = _unwrap_model(annotation) if isinstance(part, str) else annotation
        if isinstance(part, str):
            if annotation is None:
                return None
            fields = {f.alias or name: f for name, f in annotation.model_fields.items()}
            if part not in fields:
                return None
            annotation = fields[part].annotation
        else:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if typing.get_origin(annotation) is not list or not args:
                return None
            annotation = args[0]
    return _unwrap_model(annotation)


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):  # `X | None`
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None
