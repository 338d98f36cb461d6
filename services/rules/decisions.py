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
from json.encoder import encode_basestring_ascii
from typing import Any, Literal

from services.events.models import ALERT_RAISED, ROUTE_DECIDED, RULE_FAILED, RULE_SHADOW_MATCHED, TAG_ADDED
from services.rules.expr import Template
from services.rules.ruleset import CompiledAction, CompiledRule
from services.rules.schema import ActionKind, AlertSpec, EmitSpec, RouteSpec, TagSpec

DEFAULT_PREFIX = "listenpost"
#: Where `emit` may publish (below the prefix) unless settings say otherwise:
#: inside what the LISTENPOST_OUT stream stores.
DEFAULT_EMIT_SUBJECTS: tuple[str, ...] = ("rules.emit.>",)

DecisionKind = Literal["route", "alert", "tag", "emit", "shadow", "error"]
ACTION_DECISIONS = ("route", "alert", "tag", "emit")

_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$")


@dataclass(slots=True)
class Decision:
    """One output event to publish (a plain dataclass: built for every match, on the hot path;
    not frozen, since a frozen one's __init__ costs twice as much. Treat it as read-only.)"""

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
    """64 hex digits: half of sha256 over the event (rule set version, source, id), half over
    the action (rule id, slot). Each half is hashed once, per event and per action, not per
    decision; ids still differ whenever one of the five parts does."""
    return event_digest(version, source, event_id) + action_digest(rule_id, slot)


def event_digest(version: str, source: str, event_id: str) -> str:
    # (_part() of each, in one f-string: once per event, on the hot path)
    return _half(f"{len(version)}:{version};{len(source)}:{source};{len(event_id)}:{event_id};")


def action_digest(rule_id: str, slot: int | str) -> str:
    return _half(_part(rule_id) + _part(str(slot)))


def _half(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _part(value: str) -> str:
    # Length-prefixed parts, not plain concatenation: ("a-b", "c") and ("a", "b-c") must not collide.
    return f"{len(value)}:{value};"


#: sha256 states after '["<rule id>",', per rule id: copied per alert instead of hashing the
#: whole key again (see fingerprint()).
_FINGERPRINT_PREFIXES: dict[str, Any] = {}
#: action_digest() of (rule id, "shadow"/"error"), the slots of notices (actions have plans).
_NOTICE_DIGESTS: dict[tuple[str, str], str] = {}
_CACHE_LIMIT = 65_536


#: json.dumps(..., separators=(",", ":")) builds an encoder per call; this one is shared.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def _fingerprint_state(rule_id: str) -> Any:
    state = _FINGERPRINT_PREFIXES.get(rule_id)
    if state is None:
        if len(_FINGERPRINT_PREFIXES) > _CACHE_LIMIT:
            _FINGERPRINT_PREFIXES.clear()
        state = _FINGERPRINT_PREFIXES[rule_id] = hashlib.sha256(("[" + json.dumps(rule_id) + ",").encode())
    return state


def fingerprint(rule_id: str, labels: Mapping[str, str]) -> str:
    # == sha256(json.dumps([rule_id, sorted(labels.items())], separators=(",", ":"))), with the
    # leading '["<rule id>",' hashed once per rule.
    state = _fingerprint_state(rule_id).copy()
    state.update((_COMPACT_JSON.encode(sorted(labels.items())) + "]").encode())
    return state.hexdigest()


class _Plan:
    """What every decision of one (rule, action) shares, worked out at its first decision.

    Only the event's parts (ids, template values, evidence) are left for each
    decision: the spec's fields, the subject, the hash states of the id and the
    fingerprint are read or built once.
    """

    __slots__ = (
        "action", "rule", "version", "prefix",  # what the plan was built for (the cache check)
        "kind", "type", "subject", "slot", "action_digest",
        "rule_id", "description", "owner", "value",
        "summary", "alert_description", "labels", "fingerprint_state", "label_keys",
    )  # fmt: skip

    def __init__(self, rule: CompiledRule, action: CompiledAction, version: str, prefix: str) -> None:
        self.action, self.rule, self.version, self.prefix = action, rule, version, prefix
        self.kind: ActionKind
        spec = action.inner
        self.slot = action.index
        self.action_digest = action_digest(rule.id, action.index)
        self.rule_id, self.description, self.owner = rule.id, rule.spec.description, rule.owner
        #: The kind's own parameter: the queue, the tags, the severity, the emit data template.
        self.value: Any = None
        self.summary: Template | None = None
        self.alert_description: Template | None = None
        self.labels: tuple[tuple[str, Template], ...] = ()
        #: For label sets whose fingerprint can be hashed piecewise (see _alert_fingerprint).
        self.fingerprint_state: Any = None
        self.label_keys: tuple[str, ...] = ()
        if isinstance(spec, RouteSpec):
            self.kind, self.type, self.value = "route", ROUTE_DECIDED, spec.queue
            self.subject = f"routes.{spec.queue}"
        elif isinstance(spec, AlertSpec):
            self.kind, self.type, self.value = "alert", ALERT_RAISED, spec.severity
            self.subject = f"alerts.{spec.severity}"
            assert action.summary is not None
            self.summary, self.alert_description, self.labels = action.summary, action.description, action.labels
            names = [name for name, _ in action.labels]
            if all(isinstance(name, str) for name in names) and names == sorted(set(names)):
                # sorted(labels.items()) is then the labels in this order: the JSON between
                # the values is fixed, and so is the hash state up to the first one.
                self.fingerprint_state = hashlib.sha256(("[" + json.dumps(rule.id) + ",[").encode())
                self.label_keys = tuple(
                    ("," if i else "") + "[" + json.dumps(name) + "," for i, name in enumerate(names)
                )
        elif isinstance(spec, EmitSpec):
            assert action.data is not None
            self.kind, self.type, self.subject, self.value = "emit", spec.type, spec.subject, action.data
        else:
            assert isinstance(spec, TagSpec)
            self.kind, self.type, self.subject, self.value = "tag", TAG_ADDED, "tags", tuple(spec.tags)
        self.subject = f"{prefix}.{self.subject}"


#: Plans by id(action); each holds its action and rule, so an id is not reused while cached.
_PLANS: dict[int, _Plan] = {}


class DecisionBuilder:
    """Builds the decisions of one evaluation (one input event, one rule set)."""

    def __init__(self, version: str, event: Mapping[str, Any], variables: Mapping[str, Any], prefix: str) -> None:
        self.version = version
        self.variables = variables
        self.prefix = prefix
        self.source = str(event.get("source", ""))
        self.event_id = str(event.get("id", ""))
        #: Shared by the decisions of this event (read-only, like the decisions themselves).
        self.source_event = {"id": self.event_id, "source": self.source, "type": str(event.get("type", ""))}
        self.event_digest = event_digest(version, self.source, self.event_id)
        context = variables.get("context")
        callid = context.get("callid") if type(context) is dict or isinstance(context, Mapping) else None
        # The CloudEvents extension `callid` carries it for events without data.context.
        self.callid = callid if callid is not None else event.get("callid")

    def decision_id(self, rule: CompiledRule, slot: int | str) -> str:
        """decision_id(rule.id, version, source, event id, slot), from this event's digest."""
        if isinstance(slot, str):
            digest = _NOTICE_DIGESTS.get((rule.id, slot))
            if digest is None:
                if len(_NOTICE_DIGESTS) > _CACHE_LIMIT:
                    _NOTICE_DIGESTS.clear()
                digest = _NOTICE_DIGESTS[(rule.id, slot)] = action_digest(rule.id, slot)
            return self.event_digest + digest
        return self.event_digest + action_digest(rule.id, slot)

    def _plan(self, rule: CompiledRule, action: CompiledAction) -> _Plan:
        plan = _PLANS.get(id(action))
        if (
            plan is None
            or plan.action is not action
            or plan.rule is not rule
            or plan.version != self.version
            or plan.prefix != self.prefix
        ):
            if len(_PLANS) > _CACHE_LIMIT:
                _PLANS.clear()
            plan = _PLANS[id(action)] = _Plan(rule, action, self.version, self.prefix)
        return plan

    def _overlay(self, rule: CompiledRule, evidence: Mapping[str, Any] | None) -> dict[str, Any]:
        """What templates see on top of the variables (template_variables(), without the copy)."""
        # A dict is read, not kept: the copy template_variables() makes only matters for others.
        match = evidence if evidence.__class__ is dict else dict(evidence or {})
        return {"match": match, "rule": rule.template_view}

    def action(self, rule: CompiledRule, action: CompiledAction, evidence: Mapping[str, Any] | None = None) -> Decision:
        plan = self._plan(rule, action)
        new_id = self.event_digest + plan.action_digest
        kind = plan.kind
        if kind == "emit":
            # The author's data, as written: the consumer of an emitted type owns its schema.
            data = plan.value.render_over(self._overlay(rule, evidence), self.variables)
            return Decision(
                new_id, "emit", plan.type, plan.subject, plan.rule_id, self.version, data, None, plan.slot
            )
        alert_fingerprint = None
        # One literal per kind, in the order _decision() gives: its keys, then the parameters.
        if kind == "route":
            data = {
                "source_event": self.source_event, "rule_id": plan.rule_id, "description": plan.description,
                "owner": plan.owner, "ruleset_version": self.version, "queue": plan.value,
            }  # fmt: skip
        elif kind == "tag":
            data = {
                "source_event": self.source_event, "rule_id": plan.rule_id, "description": plan.description,
                "owner": plan.owner, "ruleset_version": self.version, "tags": list(plan.value),
            }  # fmt: skip
        else:
            summary, labels, alert_fingerprint, alert_description = self._alert(plan, self._overlay(rule, evidence))
            # The alert's description takes the rule's key (and its place), as **params did.
            description = plan.description if alert_description is None else alert_description
            data = {
                "source_event": self.source_event, "rule_id": plan.rule_id, "description": description,
                "owner": plan.owner, "ruleset_version": self.version, "severity": plan.value, "summary": summary,
                "labels": labels, "fingerprint": alert_fingerprint,
            }  # fmt: skip
        if self.callid is not None:
            data["callid"] = self.callid
        if evidence:
            # Shared by the decisions of one match (read-only, like the decisions themselves).
            data["evidence"] = evidence if type(evidence) is dict else dict(evidence)
        return Decision(
            new_id, kind, plan.type, plan.subject, plan.rule_id, self.version, data, alert_fingerprint,
            plan.slot,
        )  # fmt: skip

    @staticmethod
    def _alert_fingerprint(plan: _Plan, labels: dict[str, str]) -> str:
        """fingerprint(rule id, labels), with the JSON around the label values precomputed."""
        if plan.fingerprint_state is None:
            return fingerprint(plan.rule_id, labels)
        # The values are rendered strings: json.dumps writes each as encode_basestring_ascii does.
        body = ""
        for key, value in zip(plan.label_keys, labels.values(), strict=True):  # a loop: one or two labels, usually
            body += key + encode_basestring_ascii(value) + "]"
        state = plan.fingerprint_state.copy()
        state.update((body + "]]").encode())
        return state.hexdigest()

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
        plan = self._plan(rule, action)
        kind = plan.kind
        if kind == "route":
            return {"queue": plan.value}
        if kind == "tag":
            return {"tags": list(plan.value)}
        overlay = self._overlay(rule, evidence)
        if kind == "emit":
            return {"type": plan.type, "subject": plan.subject, "data": plan.value.render_over(overlay, self.variables)}
        summary, labels, alert_fingerprint, description = self._alert(plan, overlay)
        out: dict[str, Any] = {"severity": plan.value, "summary": summary, "labels": labels, "fingerprint": alert_fingerprint}
        if description is not None:
            out["description"] = description
        return out

    def _alert(self, plan: _Plan, overlay: dict[str, Any]) -> tuple[str, dict[str, str], str, str | None]:
        """An alert's rendered summary, labels, fingerprint and description (None: it has none)."""
        variables = self.variables
        assert plan.summary is not None, "an alert always has a summary"
        summary = plan.summary.render_over(overlay, variables)
        labels = {}
        for name, template in plan.labels:  # a loop, not a comprehension: cheaper for one or two
            labels[name] = template.render_over(overlay, variables)
        description = None
        if plan.alert_description is not None:
            description = plan.alert_description.render_over(overlay, self.variables)
        return summary, labels, self._alert_fingerprint(plan, labels), description

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
            "source_event": self.source_event,
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
            self.decision_id(rule, slot), kind, event_type, f"{self.prefix}.{subject}", rule.id, self.version, data,
            alert_fingerprint, slot if isinstance(slot, int) else None,
        )  # fmt: skip
