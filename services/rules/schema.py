"""The rule file format (``apiVersion: listenpost/v1, kind: RuleSet``) as pydantic models.

Strict on purpose, like Alertmanager's config: unknown fields are errors (a
typo such as ``contine: true`` must not silently mean "stop"), and no type
coercion (``priority: "10"`` is a mistake worth reporting). Checks that need
more than one field or file (CEL, templates, duplicate ids, owners, allowed
subjects) live in :mod:`services.rules.loader`.

``listenpost rules schema`` exports these models as a JSON Schema for editors
(``router_rules/rules.schema.json``).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from services.dsl.durations import Duration, parse_duration

API_VERSION = "listenpost/v1"
KIND = "RuleSet"

Mode = Literal["enforce", "shadow", "disabled"]
Severity = Literal["info", "warning", "critical"]
ActionKind = Literal["route", "alert", "tag", "emit"]
ACTION_KINDS: tuple[ActionKind, ...] = ("route", "alert", "tag", "emit")

#: Longest `when`: a guardrail (the library has no cost limits), and a rule
#: longer than this wants splitting anyway.
MAX_EXPRESSION_CHARS = 2000
MAX_TEMPLATE_CHARS = 4000

_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
# One NATS subject token, kept to a portable alphabet: '.', '*', '>' and
# whitespace would change the subject's meaning, and other punctuation trips
# up consumers' filter subjects and stream names.
_NATS_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_SUBJECT = re.compile(r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$")
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9]$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")  # Prometheus's label names
_TAG = re.compile(r"^[a-z0-9][a-z0-9._:-]*$")
#: Labels every alert has; rule authors may not redefine them.
BUILTIN_LABELS = ("rule", "severity")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid {what}")
    return value


class Metadata(_Strict):
    name: str
    owner: str | None = Field(default=None, min_length=1, description="Default owner of the file's rules.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check(_ID, v, "name (lower-case letters, digits and '-')")


class MatchSpec(_Strict):
    # types is required: the engine also consumes its own outputs (alerts,
    # routes), so a rule that matched every type could trigger itself forever.
    types: list[str] = Field(min_length=1, description="CloudEvent type globs (fnmatch: *, ?, [...]).")
    sources: list[str] = Field(default_factory=lambda: ["*"], min_length=1, description="CloudEvent source globs.")


class ForSpec(_Strict):
    """Debounce: the condition must hold this long, over consecutive windows of one call."""

    windows: int | None = Field(default=None, ge=1, description="Consecutive windows the condition must hold in.")
    duration: Duration | None = Field(default=None, description="Call time the condition must hold for.")

    @model_validator(mode="after")
    def _one(self) -> ForSpec:
        if (self.windows is None) == (self.duration is None):
            raise ValueError("`for` takes exactly one of windows, duration")
        return self

    @property
    def seconds(self) -> float | None:
        return parse_duration(self.duration) if self.duration is not None else None


class RouteSpec(_Strict):
    queue: str

    @field_validator("queue")
    @classmethod
    def _queue(cls, v: str) -> str:
        return _check(_NATS_TOKEN, v, "queue name (a NATS subject token: letters, digits, '-' and '_')")


class RateLimitSpec(_Strict):
    max: int = Field(ge=1, description="At most this many alerts of the rule...")
    per: Duration = Field(description="...within this sliding window.")


class AlertSpec(_Strict):
    severity: Severity
    summary: str = Field(min_length=1, max_length=MAX_TEMPLATE_CHARS, description="Template: {{ context.callid }}.")
    description: str | None = Field(
        default=None, min_length=1, max_length=MAX_TEMPLATE_CHARS,
        description="Template; may quote the evidence: {{ match.span }} at {{ match.at }}.",
    )  # fmt: skip
    labels: dict[str, str] = Field(default_factory=dict, description="Label templates; they make the fingerprint.")
    rate_limit: RateLimitSpec | None = None
    # Read only to be refused with where they went (MOVED_TO_ROUTES); not in the JSON Schema.
    group_by: SkipJsonSchema[Any] = Field(default=None, exclude=True)
    group_wait: SkipJsonSchema[Any] = Field(default=None, exclude=True)
    group_interval: SkipJsonSchema[Any] = Field(default=None, exclude=True)
    repeat_interval: SkipJsonSchema[Any] = Field(default=None, exclude=True)

    @field_validator("group_by", "group_wait", "group_interval", "repeat_interval", mode="before")
    @classmethod
    def _moved_to_routes(cls, value: Any, info: ValidationInfo) -> Any:
        raise ValueError(
            f"{info.field_name} moved to the notification routes: rules say what happened, the notification file "
            f"says who hears about it and how often. Delete it here and set {info.field_name} on the route that takes "
            "this rule's alerts in router_rules/notifications.yaml (docs/notifications.md#grouping)"
        )

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            _check(_LABEL_NAME, name, "label name ([a-zA-Z_][a-zA-Z0-9_]*)")
            if name in BUILTIN_LABELS:
                raise ValueError(f"label {name!r} is set by the engine (built-in labels: {', '.join(BUILTIN_LABELS)})")
        return v

#: Alert settings that live on notification routes since the notifier owns grouping and repeats.
MOVED_TO_ROUTES = ("group_by", "group_wait", "group_interval", "repeat_interval")


class TagSpec(_Strict):
    tags: list[str] = Field(min_length=1)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        for tag in v:
            _check(_TAG, tag, "tag (lower-case letters, digits and '.', ':', '-', '_')")
        return v


class EmitSpec(_Strict):
    """Any CloudEvent, to a subject the settings allow (``LISTENPOST_RULES__EMIT_SUBJECTS``)."""

    type: str = Field(description="CloudEvent type, e.g. com.acme.callback.requested.")
    subject: str = Field(description="NATS subject below the prefix, e.g. rules.emit.callbacks.")
    data: dict[str, Any] = Field(default_factory=dict, description="Event data; strings are templates.")

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        return _check(_EVENT_TYPE, v, "CloudEvent type (letters, digits, '.', '-', '_')")

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        return _check(_SUBJECT, v, "subject (dot-separated tokens of letters, digits, '-', '_'; no wildcards)")


class ActionSpec(_Strict):
    """One action: a mapping with exactly one key naming its kind."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    route: RouteSpec | None = None
    alert: AlertSpec | None = None
    tag: TagSpec | None = None
    emit: EmitSpec | None = None

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
                    "unknown action (expected one of: route, alert, tag, emit)",
                    {"field": name},
                )
        if len(value) != 1:
            given = ", ".join(value) if value else "none"
            raise PydanticCustomError(
                "action_kind_count", f"an action has exactly one of route, alert, tag, emit (got {given})"
            )
        return value

    @property
    def kind(self) -> ActionKind:
        for name in ACTION_KINDS:
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated ActionSpec without a kind")

    @property
    def spec(self) -> RouteSpec | AlertSpec | TagSpec | EmitSpec:
        spec = self.route or self.alert or self.tag or self.emit
        assert spec is not None, "validated ActionSpec without a kind"
        return spec


class RuleSpec(_Strict):
    id: str = Field(description="Unique across all files: names decisions, metrics and silences.")
    description: str = Field(min_length=1)
    owner: str | None = Field(default=None, min_length=1, description="Who answers for this rule (default: metadata.owner).")
    priority: int = Field(default=100, description="Lower runs first.")
    mode: Mode = Field(default="enforce", description="shadow: report a match, act on nothing.")
    match: MatchSpec
    when: str = Field(min_length=1, max_length=MAX_EXPRESSION_CHARS, description="A CEL condition.")
    for_: ForSpec | None = Field(default=None, alias="for")
    continue_: bool = Field(default=False, alias="continue", description="Keep evaluating lower-priority rules.")
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


class _RuleFileDocument(_Strict):
    """The same envelope with typed rules: what the exported JSON Schema describes."""

    model_config = ConfigDict(title="listenpost RuleSet")

    api_version: Literal["listenpost/v1"] = Field(alias="apiVersion")
    kind: Literal["RuleSet"]
    metadata: Metadata
    rules: list[RuleSpec]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a rule file, for editors (yaml-language-server, VS Code, IntelliJ)."""
    schema = _RuleFileDocument.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://listenpost.dev/schemas/rules/v1.json"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
