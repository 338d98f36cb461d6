"""Alertmanager's label matchers: ``name=value``, ``name!=value``, ``name=~regex``, ``name!~regex``.

Used by the rules' silences and by the notification file (routes, inhibition rules). A
regular expression is anchored, as in Alertmanager: ``rule=~"qa-.*"`` matches the whole value.
A label an alert lacks reads as the empty string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

_MATCHER = re.compile(r"^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


class Matcher(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    op: Literal["=", "!=", "=~", "!~"]
    value: str

    @field_validator("value")
    @classmethod
    def _regex(cls, v: str, info: Any) -> str:
        if info.data.get("op") in ("=~", "!~"):
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"bad regular expression {v!r}: {exc}") from exc
        return v

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """``severity=critical``, ``queue!=test``, ``rule=~"angry-.*"`` (Alertmanager's syntax)."""
        found = _MATCHER.match(text)
        if not found:
            raise ValueError(f"matcher {text!r} is not NAME=VALUE, NAME!=VALUE, NAME=~REGEX or NAME!~REGEX")
        name, op, value = found.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        return cls.model_validate({"name": name, "op": op, "value": value})

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.name, "")
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = re.fullmatch(self.value, value) is not None  # anchored, as in Alertmanager
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{json.dumps(self.value) if self.op in ('=~', '!~') else self.value}"


def matches_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """Every matcher matches (true for no matchers)."""
    return all(m.matches(labels) for m in matchers)
