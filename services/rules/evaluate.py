"""Evaluate a rule set against one event: a pure function, no I/O.

Semantics (Alertmanager-style routing tree flattened to a list):
rules run in priority order; the first ``enforce`` match stops evaluation
unless it says ``continue: true``; ``shadow`` matches are recorded and never
stop anything; ``disabled`` rules are skipped. A failing rule is recorded as
an error and evaluation goes on: an evaluation error is never a silent false.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .decisions import DEFAULT_PREFIX, Decision, DecisionBuilder, check_prefix
from .expr import new_context, runtime_message
from .ruleset import CompiledRule, RuleSet

# Attributes that are the event's payload, not its metadata: exposed as `data`.
_PAYLOAD_ATTRIBUTES = ("data", "data_base64")


class RuleMatch(BaseModel):
    model_config = ConfigDict(frozen=True)

    rule_id: str
    mode: Literal["enforce", "shadow"]


class RuleError(BaseModel):
    """A rule that could not be evaluated for this event (a record, not an exception)."""

    model_config = ConfigDict(frozen=True)

    rule_id: str
    message: str


class Evaluation(BaseModel):
    model_config = ConfigDict(frozen=True)

    ruleset_version: str
    #: Every output event, in evaluation order: actions of enforce matches,
    #: shadow-match notices and rule-failure notices.
    decisions: list[Decision]
    matches: list[RuleMatch]
    errors: list[RuleError]

    @property
    def actions(self) -> list[Decision]:
        """Only the effects (route, alert, tag), without shadow and error notices."""
        return [d for d in self.decisions if d.kind in ("route", "alert", "tag")]


def rule_variables(event_attributes: Mapping[str, Any], data: Any) -> dict[str, Any]:
    """The names a rule's ``when`` and templates see."""
    payload = data if isinstance(data, Mapping) else {}

    def mapping(name: str) -> Any:
        value = payload.get(name)
        return value if value is not None else {}

    caption = payload.get("caption")
    return {
        "event": {k: v for k, v in event_attributes.items() if k not in _PAYLOAD_ATTRIBUTES},
        "data": data if data is not None else {},
        "facets": mapping("facets"),
        "acoustics": mapping("acoustics"),
        "context": mapping("context"),
        "caption": caption if caption is not None else "",
    }


def applies(rule: CompiledRule, event_type: str, source: str) -> bool:
    match = rule.spec.match
    return any(fnmatchcase(event_type, p) for p in match.types) and any(fnmatchcase(source, p) for p in match.sources)


def evaluate(
    ruleset: RuleSet, event_attributes: Mapping[str, Any], data: Any, *, prefix: str = DEFAULT_PREFIX
) -> Evaluation:
    """Run every applicable rule of ``ruleset`` on one event (attributes incl. extensions, and data)."""
    check_prefix(prefix)
    variables = rule_variables(event_attributes, data)
    builder = DecisionBuilder(ruleset.version, event_attributes, variables, prefix)
    event_type = str(event_attributes.get("type", ""))
    source = str(event_attributes.get("source", ""))
    decisions: list[Decision] = []
    matches: list[RuleMatch] = []
    errors: list[RuleError] = []

    def fail(rule: CompiledRule, message: str) -> None:
        errors.append(RuleError(rule_id=rule.id, message=message))
        decisions.append(builder.error(rule, message))

    try:
        context = new_context(variables)
        context_error = None
    except Exception as exc:  # noqa: BLE001 -- a value CEL cannot represent: every rule fails, visibly
        context, context_error = None, f"event cannot be given to CEL: {runtime_message(exc)}"

    for rule in ruleset.rules:
        if rule.mode == "disabled" or not applies(rule, event_type, source):
            continue
        if context is None:
            fail(rule, context_error or "no CEL context")
            continue
        try:
            result = rule.program.execute(context)
        except Exception as exc:  # noqa: BLE001 -- the library raises KeyError, TypeError, RuntimeError...: all are rule errors
            fail(rule, runtime_message(exc))
            continue
        if not isinstance(result, bool):
            fail(rule, f"when returned {type(result).__name__} {_short(result)}, not a bool")
            continue
        if not result:
            continue
        if rule.mode == "shadow":
            matches.append(RuleMatch(rule_id=rule.id, mode="shadow"))
            decisions.append(builder.shadow(rule))
            continue
        matches.append(RuleMatch(rule_id=rule.id, mode="enforce"))
        decisions.extend(builder.action(rule, action) for action in rule.actions)
        if not rule.spec.continue_:
            break
    return Evaluation(ruleset_version=ruleset.version, decisions=decisions, matches=matches, errors=errors)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
