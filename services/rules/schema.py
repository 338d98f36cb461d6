"""The rule file format (``apiVersion: listenpost/v1, kind: RuleSet``) as pydantic models.

Strict on purpose, like Alertmanager's config: unknown fields are errors (a
typo such as ``contine: true`` must not silently mean "stop"), and no type
coercion (``priority: "10"`` is a mistake worth reporting). Checks that need
more than one field or file (CEL, templates, duplicate ids) live in
:mod:`services.rules.loader`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

API_VERSION = "listenpost/v1"
KIND = "RuleSet"

Mode = Literal["enforce", "shadow", "disabled"]
Severity = Literal["info", "warning", "critical"]
ActionKind = Literal["route", "alert", "tag"]
ACTION_KINDS: tuple[ActionKind, ...] = ("route", "alert", "tag")

_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
# One NATS subject token, kept to a portable alphabet: '.', '*', '>' and
# whitespace would change the subject's meaning, and other punctuation trips
# up consumers' filter subjects and stream names.
_NATS_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")  # Prometheus's label names
_TAG = re.compile(r"^[a-z0-9][a-z0-9._:-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid {what}")
    return value


class Metadata(_Strict):
    name: str
    owner: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check(_ID, v, "name (lower-case letters, digits and '-')")


class MatchSpec(_Strict):
    # types is required: the engine also consumes its own outputs (alerts,
    # routes), so a rule that matched every type could trigger itself forever.
    types: list[str] = Field(min_length=1)
    sources: list[str] = Field(default_factory=lambda: ["*"], min_length=1)


class RouteSpec(_Strict):
    queue: str

    @field_validator("queue")
    @classmethod
    def _queue(cls, v: str) -> str:
        return _check(_NATS_TOKEN, v, "queue name (a NATS subject token: letters, digits, '-' and '_')")


class AlertSpec(_Strict):
    severity: Severity
    summary: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            _check(_LABEL_NAME, name, "label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        return v


class TagSpec(_Strict):
    tags: list[str] = Field(min_length=1)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        for tag in v:
            _check(_TAG, tag, "tag (lower-case letters, digits and '.', ':', '-', '_')")
        return v


class ActionSpec(_Strict):
    """One action: a mapping with exactly one key naming its kind."""

    route: RouteSpec | None = None
    alert: AlertSpec | None = None
    tag: TagSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # let the normal "valid dictionary" error speak
        for name in value:
            if name not in ACTION_KINDS:
                # ctx["field"] tells the loader to point at this key, not the mapping.
                raise PydanticCustomError(
                    "unknown_action",
                    "unknown action (expected one of: route, alert, tag)",
                    {"field": name},
                )
        if len(value) != 1:
            given = ", ".join(value) if value else "none"
            raise PydanticCustomError(
                "action_kind_count", f"an action has exactly one of route, alert, tag (got {given})"
            )
        return value

    @property
    def kind(self) -> ActionKind:
        for name in ACTION_KINDS:
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated ActionSpec without a kind")

    @property
    def spec(self) -> RouteSpec | AlertSpec | TagSpec:
        spec = self.route or self.alert or self.tag
        assert spec is not None, "validated ActionSpec without a kind"
        return spec


class RuleSpec(_Strict):
    id: str
    description: str = Field(min_length=1)
    priority: int = 100
    mode: Mode = "enforce"
    match: MatchSpec
    when: str = Field(min_length=1)
    continue_: bool = Field(default=False, alias="continue")
    actions: list[ActionSpec] = Field(min_length=1)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _check(_ID, v, "rule id (lower-case letters, digits and '-')")


class RuleFileSpec(_Strict):
    """The file envelope. Rules are validated one by one (see the loader) so one
    broken rule does not hide the errors of the others."""

    api_version: Literal["listenpost/v1"] = Field(alias="apiVersion")
    kind: Literal["RuleSet"]
    metadata: Metadata
    rules: list[Any]
