"""Rule files as YAML with positions: parse once, keep the node tree.

Validation happens on plain Python data (pydantic's strict mode wants real
``dict``/``str``/``float``, not ruamel's subclasses), while the ruamel node
tree is kept beside it so any error's location path (``rules[0].when``) can be
turned back into the line and column an operator sees in their editor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from .errors import Position, RuleFileError

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

    def error(self, loc: Loc, message: str, *, key: bool = False) -> RuleFileError:
        pos = self.position(loc, key=key)
        where = format_loc(loc)
        return RuleFileError(self.path, pos.line, pos.column, f"{where}: {message}" if where else message)


def _container_position(node: Any) -> Position:
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return Position(1, 1)
    return Position(lc.line + 1, lc.col + 1)


def parse_yaml(path: Path, text: str) -> YamlDocument:
    """Parse one rule file; raise :class:`RuleFileError` at the syntax error's position."""
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
        raise RuleFileError(path, line, col, message) from exc
    except Exception as exc:  # ruamel raises plain ValueError etc. for e.g. `!!int x`
        raise RuleFileError(path, 1, 1, f"invalid YAML: {exc}") from exc
    return YamlDocument(path=path, text=text, data=to_plain(root), root=root)


def to_plain(node: Any) -> Any:
    """ruamel's round-trip types -> builtin types (same values, no formatting baggage)."""
    if isinstance(node, dict):
        return {to_plain(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, int):
        # ScalarBoolean subclasses int; anchored booleans come back as it.
        return bool(node) if type(node).__name__ == "ScalarBoolean" else int(node)
    if isinstance(node, float):
        return float(node)
    return node  # None, timestamps, tagged scalars: left for the schema to reject
