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
from dataclasses import dataclass, fields
from typing import Any, Literal

from .ruleset import CompiledAction, CompiledRule
from .schema import AlertSpec, EmitSpec, RouteSpec, TagSpec

ROUTE_DECIDED = "com.listenpost.route.decided"
ALERT_RAISED = "com.listenpost.alert.raised"
TAG_ADDED = "com.listenpost.tag.added"
RULE_SHADOW_MATCHED = "com.listenpost.rule.shadowmatched"
RULE_FAILED = "com.listenpost.rule.failed"
DEFAULT_PREFIX = "listenpost"
#: Where `emit` may publish (below the prefix) unless settings say otherwise:
#: inside what the LISTENPOST_OUT stream stores.
DEFAULT_EMIT_SUBJECTS: tuple[str, ...] = ("rules.emit.>",)

DecisionKind = Literal["route", "alert", "tag", "emit", "shadow", "error"]
ACTION_DECISIONS = ("route", "alert", "tag", "emit")

_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$")


@dataclass(frozen=True, slots=True)
class Decision:
    """One output event to publish (a plain dataclass: built for every match, on the hot path)."""

    id: str
    kind: DecisionKind
    type: str  # CloudEvent type
    subject: str  # NATS subject
    rule_id: str
    ruleset_version: str
    data: dict[str, Any]
    fingerprint: str | None = None  # alerts only: same rule + labels -> same alert
    action_index: int | None = None  # which action of the rule (alerts: its hygiene settings)

    def model_dump(self, *, exclude_none: bool = False) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in out.items() if v is not None} if exclude_none else out


def check_prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"subject prefix {prefix!r} is not dot-separated NATS tokens")
    return prefix


def subject_allowed(subject: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """NATS wildcard matching of a literal subject against ``*``/``>`` patterns."""
    tokens = subject.split(".")
    for pattern in patterns:
        parts = pattern.split(".")
        for i, part in enumerate(parts):
            if part == ">":
                if len(tokens) > i:
                    return True
                break
            if i >= len(tokens) or (part != "*" and part != tokens[i]):
                break
        else:
            if len(parts) == len(tokens):
                return True
    return False


def decision_id(rule_id: str, version: str, source: str, event_id: str, slot: int | str) -> str:
    # Length-prefixed parts, not plain concatenation: ("a-b", "c") and ("a", "b-c") must not collide.
    key = "".join(f"{len(part)}:{part};" for part in (rule_id, version, source, event_id, str(slot)))
    return hashlib.sha256(key.encode()).hexdigest()


def _part(value: str) -> str:
    return f"{len(value)}:{value};"


#: sha256 states after the constant leading parts, per (rule id, version) and per rule id
#: (fingerprints): copied per decision instead of hashing the whole key again.
_ID_PREFIXES: dict[tuple[str, str], Any] = {}
_FINGERPRINT_PREFIXES: dict[str, Any] = {}
_CACHE_LIMIT = 65_536


def _id_state(rule_id: str, version: str) -> Any:
    state = _ID_PREFIXES.get((rule_id, version))
    if state is None:
        if len(_ID_PREFIXES) > _CACHE_LIMIT:
            _ID_PREFIXES.clear()
        state = _ID_PREFIXES[(rule_id, version)] = hashlib.sha256((_part(rule_id) + _part(version)).encode())
    return state


def fingerprint(rule_id: str, labels: Mapping[str, str]) -> str:
    # == sha256(json.dumps([rule_id, sorted(labels.items())], separators=(",", ":"))), with the
    # leading '["<rule id>",' hashed once per rule.
    state = _FINGERPRINT_PREFIXES.get(rule_id)
    if state is None:
        if len(_FINGERPRINT_PREFIXES) > _CACHE_LIMIT:
            _FINGERPRINT_PREFIXES.clear()
        state = _FINGERPRINT_PREFIXES[rule_id] = hashlib.sha256(("[" + json.dumps(rule_id) + ",").encode())
    state = state.copy()
    state.update((json.dumps(sorted(labels.items()), separators=(",", ":")) + "]").encode())
    return state.hexdigest()


class DecisionBuilder:
    """Builds the decisions of one evaluation (one input event, one rule set)."""

    def __init__(self, version: str, event: Mapping[str, Any], variables: Mapping[str, Any], prefix: str) -> None:
        self.version = version
        self.variables = variables
        self.prefix = prefix
        self.source = str(event.get("source", ""))
        self.event_id = str(event.get("id", ""))
        self.source_event = {"id": self.event_id, "source": self.source, "type": str(event.get("type", ""))}
        self._event_part = _part(self.source) + _part(self.event_id)
        context = variables.get("context")
        callid = context.get("callid") if isinstance(context, Mapping) else None
        # The CloudEvents extension `callid` carries it for events without data.context.
        self.callid = callid if callid is not None else event.get("callid")

    def decision_id(self, rule: CompiledRule, slot: int | str) -> str:
        """decision_id(rule.id, version, source, event id, slot), from the rule's cached prefix state."""
        state = _id_state(rule.id, self.version).copy()
        state.update((self._event_part + _part(str(slot))).encode())
        return state.hexdigest()

    def action(self, rule: CompiledRule, action: CompiledAction, evidence: Mapping[str, Any] | None = None) -> Decision:
        params = self.render(rule, action, evidence)
        spec = action.inner
        if isinstance(spec, RouteSpec):
            return self._decision(rule, action, "route", ROUTE_DECIDED, f"routes.{spec.queue}", params, evidence)
        if isinstance(spec, AlertSpec):
            return self._decision(
                rule, action, "alert", ALERT_RAISED, f"alerts.{spec.severity}", params, evidence,
                alert_fingerprint=params["fingerprint"],
            )  # fmt: skip
        if isinstance(spec, EmitSpec):
            # The author's data, as written: the consumer of an emitted type owns its schema.
            return Decision(
                id=self.decision_id(rule, action.index),
                kind="emit",
                type=spec.type,
                subject=f"{self.prefix}.{spec.subject}",
                rule_id=rule.id,
                ruleset_version=self.version,
                data=params["data"],
                action_index=action.index,
            )
        assert isinstance(spec, TagSpec)
        return self._decision(rule, action, "tag", TAG_ADDED, "tags", params, evidence)

    def shadow(self, rule: CompiledRule, evidence: Mapping[str, Any] | None = None) -> Decision:
        # What the rule would have done: lets it prove itself before it acts.
        would = [{"kind": a.kind, **self.render(rule, a, evidence)} for a in rule.actions]
        return self._decision(rule, "shadow", "shadow", RULE_SHADOW_MATCHED, "rules.shadow", {"actions": would}, evidence)

    def error(self, rule: CompiledRule, message: str) -> Decision:
        return self._decision(
            rule, "error", "error", RULE_FAILED, "rules.errors", {"mode": rule.mode, "error": message}, None
        )

    def template_variables(self, rule: CompiledRule, evidence: Mapping[str, Any] | None) -> dict[str, Any]:
        return {
            **self.variables,
            "match": dict(evidence or {}),
            "rule": rule.template_view,
        }

    def render(
        self, rule: CompiledRule, action: CompiledAction, evidence: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The action's parameters with templates filled in."""
        spec = action.inner
        if isinstance(spec, RouteSpec):
            return {"queue": spec.queue}
        if isinstance(spec, TagSpec):
            return {"tags": list(spec.tags)}
        variables = self.template_variables(rule, evidence)
        if isinstance(spec, EmitSpec):
            assert action.data is not None
            return {"type": spec.type, "subject": f"{self.prefix}.{spec.subject}", "data": action.data.render(variables)}
        assert isinstance(spec, AlertSpec) and action.summary is not None
        labels = {name: template.render(variables) for name, template in action.labels}
        out: dict[str, Any] = {
            "severity": spec.severity,
            "summary": action.summary.render(variables),
            "labels": labels,
            "fingerprint": fingerprint(rule.id, labels),
        }
        if action.description is not None:
            out["description"] = action.description.render(variables)
        return out

    def _decision(
        self,
        rule: CompiledRule,
        action: CompiledAction | str,
        kind: DecisionKind,
        event_type: str,
        subject: str,
        params: dict[str, Any],
        evidence: Mapping[str, Any] | None,
        alert_fingerprint: str | None = None,
    ) -> Decision:
        slot = action.index if isinstance(action, CompiledAction) else action
        data: dict[str, Any] = {
            "source_event": dict(self.source_event),
            "rule_id": rule.id,
            "description": rule.spec.description,
            "owner": rule.owner,
            "ruleset_version": self.version,
            **params,
        }
        if self.callid is not None:
            data["callid"] = self.callid
        if evidence:
            data["evidence"] = dict(evidence)
        return Decision(
            id=self.decision_id(rule, slot),
            kind=kind,
            type=event_type,
            subject=f"{self.prefix}.{subject}",
            rule_id=rule.id,
            ruleset_version=self.version,
            data=data,
            fingerprint=alert_fingerprint,
            action_index=slot if isinstance(slot, int) else None,
        )
