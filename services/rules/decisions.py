"""Decisions: the output CloudEvents (type, subject, data, deterministic id) of a rule match.

Ids are derived from (rule, ruleset version, input event source and id,
action slot), never random: when JetStream redelivers the input, the engine
republishes the same ids and the stream's ``Nats-Msg-Id`` dedup drops them,
so redelivery never duplicates an alert or a route.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .ruleset import CompiledAction, CompiledRule
from .schema import AlertSpec, RouteSpec, TagSpec

ROUTE_DECIDED = "com.listenpost.route.decided"
ALERT_RAISED = "com.listenpost.alert.raised"
TAG_ADDED = "com.listenpost.tag.added"
RULE_SHADOW_MATCHED = "com.listenpost.rule.shadowmatched"
RULE_FAILED = "com.listenpost.rule.failed"
DEFAULT_PREFIX = "listenpost"

DecisionKind = Literal["route", "alert", "tag", "shadow", "error"]

_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$")


class Decision(BaseModel):
    """One output event to publish."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: DecisionKind
    type: str  # CloudEvent type
    subject: str  # NATS subject
    rule_id: str
    ruleset_version: str
    data: dict[str, Any]
    fingerprint: str | None = None  # alerts only: same rule + labels -> same alert


def check_prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"subject prefix {prefix!r} is not dot-separated NATS tokens")
    return prefix


def decision_id(rule_id: str, version: str, source: str, event_id: str, slot: int | str) -> str:
    # JSON, not string concatenation: ("a-b", "c") and ("a", "b-c") must not collide.
    key = json.dumps([rule_id, version, source, event_id, slot], separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()


def fingerprint(rule_id: str, labels: Mapping[str, str]) -> str:
    key = json.dumps([rule_id, sorted(labels.items())], separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()


class DecisionBuilder:
    """Builds the decisions of one evaluation (one input event, one rule set)."""

    def __init__(self, version: str, event: Mapping[str, Any], variables: Mapping[str, Any], prefix: str) -> None:
        self.version = version
        self.variables = variables
        self.prefix = prefix
        self.source = str(event.get("source", ""))
        self.event_id = str(event.get("id", ""))
        self.source_event = {"id": self.event_id, "source": self.source, "type": str(event.get("type", ""))}
        context = variables.get("context")
        callid = context.get("callid") if isinstance(context, Mapping) else None
        # The CloudEvents extension `callid` carries it for events without data.context.
        self.callid = callid if callid is not None else event.get("callid")

    def action(self, rule: CompiledRule, action: CompiledAction) -> Decision:
        params = self.render(rule, action)
        spec = action.spec.spec
        if isinstance(spec, RouteSpec):
            return self._decision(rule, action.index, "route", ROUTE_DECIDED, f"routes.{spec.queue}", params)
        if isinstance(spec, AlertSpec):
            return self._decision(
                rule, action.index, "alert", ALERT_RAISED, f"alerts.{spec.severity}", params,
                alert_fingerprint=params["fingerprint"],
            )  # fmt: skip
        assert isinstance(spec, TagSpec)
        return self._decision(rule, action.index, "tag", TAG_ADDED, "tags", params)

    def shadow(self, rule: CompiledRule) -> Decision:
        # What the rule would have done: lets it prove itself before it acts.
        would = [{"kind": a.kind, **self.render(rule, a)} for a in rule.actions]
        return self._decision(rule, "shadow", "shadow", RULE_SHADOW_MATCHED, "rules.shadow", {"actions": would})

    def error(self, rule: CompiledRule, message: str) -> Decision:
        return self._decision(
            rule, "error", "error", RULE_FAILED, "rules.errors", {"mode": rule.mode, "error": message}
        )

    def render(self, rule: CompiledRule, action: CompiledAction) -> dict[str, Any]:
        """The action's parameters with templates filled in."""
        spec = action.spec.spec
        if isinstance(spec, RouteSpec):
            return {"queue": spec.queue}
        if isinstance(spec, AlertSpec):
            assert action.summary is not None
            labels = {name: template.render(self.variables) for name, template in action.labels}
            return {
                "severity": spec.severity,
                "summary": action.summary.render(self.variables),
                "labels": labels,
                "fingerprint": fingerprint(rule.id, labels),
            }
        return {"tags": list(spec.tags)}

    def _decision(
        self,
        rule: CompiledRule,
        slot: int | str,
        kind: DecisionKind,
        event_type: str,
        subject: str,
        params: dict[str, Any],
        alert_fingerprint: str | None = None,
    ) -> Decision:
        data: dict[str, Any] = {
            "source_event": dict(self.source_event),
            "rule_id": rule.id,
            "description": rule.spec.description,
            "ruleset_version": self.version,
            **params,
        }
        if self.callid is not None:
            data["callid"] = self.callid
        return Decision(
            id=decision_id(rule.id, self.version, self.source, self.event_id, slot),
            kind=kind,
            type=event_type,
            subject=f"{self.prefix}.{subject}",
            rule_id=rule.id,
            ruleset_version=self.version,
            data=data,
            fingerprint=alert_fingerprint,
        )
